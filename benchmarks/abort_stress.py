"""Run a finished `synthgen generate` again N times under CPU load and count the exit codes (issue 12: a
process that had done its work sometimes died with SIGABRT, exit 134, "terminate called without an active
exception").

The rerun of a finished run is a whole `synthgen` process without Ray: it reads the Parquet manifest (through
synthgen.io.paths.read_parquet, where the abort came from: an Arrow I/O thread releasing a Python-owned
buffer during interpreter exit), hashes the model, reads `_plan.json` and `_SUCCESS.json`, and exits. The load
is `--load` busy-looping processes (default: two per core), so exits race Arrow's threads as on a busy CI host.

    python benchmarks/abort_stress.py --runs 200            # prints a JSON line: {"exit_codes": {"0": 200}, …}
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "synthgen" / "assets" / "examples" / "minority_af.csv"


def _spin() -> None:
    while True:
        pass


def _synthgen(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "synthgen", *args], capture_output=True, text=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--load", type=int, default=2 * (os.cpu_count() or 1), help="busy-looping processes")
    ap.add_argument("--keep", help="folder to keep the finished run in (default: a temporary one)")
    args = ap.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="abort_stress_"))
    work.mkdir(parents=True, exist_ok=True)
    manifest, out = work / "manifest.parquet", work / "out"
    import pandas as pd

    pd.read_csv(MANIFEST, dtype=str).head(2).to_parquet(manifest)  # Parquet: the reader the abort came from
    cmd = ["generate", "--manifest", str(manifest), "--n", "2", "--sampler", "ddim", "--steps", "2",
           "--no-progress", "--out", str(out)]
    if not (out / "_SUCCESS.json").exists():
        first = _synthgen(*cmd)  # the one run that does the work (Ray); every later run finds it done
        if first.returncode != 0:
            sys.exit(f"the first run failed (exit {first.returncode}):\n{first.stderr[-3000:]}")

    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for p in spinners:
        p.start()
    codes: Counter[int] = Counter()
    failures = []
    t0 = time.perf_counter()
    try:
        for i in range(args.runs):
            proc = _synthgen(*cmd)
            codes[proc.returncode] += 1
            if proc.returncode != 0:
                failures.append({"run": i, "exit": proc.returncode, "stderr_tail": proc.stderr[-300:]})
    finally:
        for p in spinners:
            p.terminate()
    print(json.dumps({"runs": args.runs, "load_processes": args.load, "cores": os.cpu_count(),
                      "exit_codes": {str(k): v for k, v in sorted(codes.items())},
                      "wall_s": round(time.perf_counter() - t0, 1), "failures": failures[:10]}))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if set(codes) == {0} else 1)


if __name__ == "__main__":
    main()
