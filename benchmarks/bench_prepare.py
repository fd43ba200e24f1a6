"""Records/s of `synthgen prepare ptbxl` on the whole PTB-XL subset (1,987 records), Ray included.

    .venv/bin/python benchmarks/bench_prepare.py [--src /work/shared/data/ptbxl] [--workers 2]

Reports wall time with and without Ray start-up and the load average (the machine is shared, so the
wall figure depends on it), plus the CPU time of the per-record function on a sample, in one process,
which does not: ``cpu_ms_per_record`` → about ``1000 * cores / cpu_ms`` records/s on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from synthgen.data.prepare import prepare
from synthgen.data.record import process
from synthgen.data.sources import ptbxl

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "ptbxl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(DEFAULT_SRC))
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--cpu-sample", type=int, default=200, help="records timed in-process (every k-th)")
    args = parser.parse_args()

    tasks = ptbxl.tasks(args.src)
    sample = tasks[:: max(1, len(tasks) // args.cpu_sample)][: args.cpu_sample]
    process(sample[0])  # warm imports
    c0 = time.process_time()
    for task in sample:
        process(task)
    cpu_ms = 1000 * (time.process_time() - c0) / len(sample)

    import ray

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        summary = prepare("ptbxl", args.src, out, workers=args.workers)
    t2 = time.perf_counter()
    ray.shutdown()
    n = summary["records_seen"]
    print(json.dumps({
        "records": n, "rows": summary["rows"], "rejected": summary["rejected"], "workers": args.workers,
        "ray_init_s": round(t1 - t0, 1), "prepare_s": round(t2 - t1, 1),
        "records_per_s": round(n / (t2 - t1), 1), "records_per_s_incl_ray_init": round(n / (t2 - t0), 1),
        "cpu_ms_per_record": round(cpu_ms, 1), "cpu_sample": len(sample),
        "load_avg_1min_before": round(load_before, 1), "load_avg_1min_after": round(os.getloadavg()[0], 1),
    }))


if __name__ == "__main__":
    main()
