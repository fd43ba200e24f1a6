"""A quiet console: the real CLI, in its own process with its own local Ray, prints synthgen's lines only.

Ray's lines (the token-auth notice, "Started a local Ray instance", the core worker's ``E … core_worker.cc``
line about constructor arguments, Ray Data's notices, the actors' "Loading weights" bars) belong in the log
file that the summary names, or on the console with ``synthgen --verbose``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Every line synthgen itself prints on a successful `generate` (tqdm redraws its bar after "\r").
OURS = (
    re.compile(r"embedding \d+ unique report prompt\(s\) with .*"),
    re.compile(r"generate: .*"),
    re.compile(r"generated \d+ ECGs in .* → .*"),
    re.compile(r"Ray's log: .*\.log"),
)


def test_generate_prints_only_synthgen_lines_and_ray_logs_to_a_file(tmp_path, tiny_bundle) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("report,age,sex,hr,label,n\natrial fibrillation,70,M,110,af,2\n")
    logs = tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SYNTHGEN_VERBOSE")}
    # an empty embedding cache: the driver loads MiniLM itself, and its loading bar must not reach the console
    env.update(SYNTHGEN_LOG_DIR=str(logs), SYNTHGEN_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "synthgen", "generate", "--manifest", str(manifest),
                           "--model", tiny_bundle.url, "--sampler", "ddim", "--steps", "2", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    lines = [line.strip() for line in re.split(r"[\r\n]", output) if line.strip()]
    foreign = [line for line in lines if not any(p.fullmatch(line) for p in OURS)]
    assert not foreign, "lines not from synthgen:\n" + "\n".join(foreign)
    assert any(line.startswith("generated 2 ECGs") for line in lines)
    # the lines went to the file the summary names, not nowhere
    named = [line.split(": ", 1)[1] for line in lines if line.startswith("Ray's log: ")]
    assert [Path(p).parent for p in named] == [logs]
    text = Path(named[0]).read_text()
    assert "Started a local Ray instance" in text, text[-2000:]


def test_default_log_folder_does_not_shadow_the_package(tmp_path, monkeypatch) -> None:
    """The default log folder lives in the temp dir; named `synthgen`, it would be imported as a namespace
    package by any script or Ray worker with the temp dir on sys.path, in place of an editable install."""
    import tempfile

    from synthgen.cluster import LOG_DIR_ENV, _new_log_path

    monkeypatch.delenv(LOG_DIR_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = Path(_new_log_path())
    assert path.parent.parent == tmp_path and not (tmp_path / "synthgen").exists()
    probe = subprocess.run([sys.executable, "-c", "import synthgen; print(synthgen.__version__)"], cwd=tmp_path,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert probe.returncode == 0, probe.stderr[-2000:]
