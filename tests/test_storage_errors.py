"""Failures from outside synthgen (storage, network, credentials, permissions) reach the user as ONE line naming
the target and the cause, exit 1, before Ray starts and with nothing written; `synthgen --debug` adds the
traceback. Run through the real CLI (`python -m synthgen`) against a closed port and against SeaweedFS with
wrong credentials — the case in shared/cases/field-inputs/s3-unreachable.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from synthgen.errors import outside_failure, transient

REPO = Path(__file__).resolve().parents[1]
MANIFEST = "report,age,sex,hr,label,n\natrial fibrillation,72,M,110,af,4\nsinus rhythm,64,F,78,,4\n"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthgen(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synthgen", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The run's only output: a single `error: …` line on stderr (no traceback, no Ray start-up lines)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and proc.stdout == "" and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def manifest(tmp_path: Path) -> str:
    path = tmp_path / "manifest.csv"
    path.write_text(MANIFEST)
    return str(path)


def test_unreachable_endpoint_is_one_line_naming_it(manifest: str) -> None:
    port = closed_port()
    opts = json.dumps({"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}, "key": "x", "secret": "y"})
    args = ["generate", "--manifest", manifest, "--n", "2", "--out", "s3://bucket/run1", "--storage-options", opts]
    line = one_error_line(synthgen(*args))
    assert "--out s3://bucket/run1" in line and f"http://127.0.0.1:{port}" in line
    assert f"Connect call failed ('127.0.0.1', {port})" in line and "--debug" in line

    debug = synthgen("--debug", *args)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "EndpointConnectionError" in debug.stderr and debug.stderr.strip().splitlines()[-1].startswith("error: ")


def test_wrong_credentials_on_seaweedfs_fail_before_ray_and_write_nothing(s3_server, manifest: str, cinc_dir: Path,
                                                                          tmp_path: Path) -> None:
    import s3fs

    wrong = json.dumps({**s3_server.storage_options, "secret": "not-the-secret"})
    out = f"s3://{s3_server.BUCKET}/wrong-credentials"
    line = one_error_line(synthgen("generate", "--manifest", manifest, "--n", "2", "--out", out,
                                   "--storage-options", wrong))
    assert f"--out {out} (S3 endpoint {s3_server.endpoint})" in line and "permission denied" in line
    assert "signature" in line.lower(), line  # the server's own reason

    src = tmp_path / "records"  # prepare fails the same way, after reading its input, before Ray
    for name in ("cpsc_2018/A0002.hea", "cpsc_2018/A0002.mat"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).symlink_to(cinc_dir / name)
    line = one_error_line(synthgen("prepare", "physionet-challenge", "--src", str(src), "--out", out,
                                   "--storage-options", wrong))
    assert f"--out {out}" in line and "permission denied" in line
    client = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.storage_options)
    assert not client.exists(f"{s3_server.BUCKET}/wrong-credentials")


def test_local_out_that_cannot_be_a_folder(tmp_path: Path, cinc_dir: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    src = tmp_path / "records"
    src.mkdir()
    for ext in (".hea", ".mat"):
        (src / f"A0002{ext}").symlink_to(cinc_dir / "cpsc_2018" / f"A0002{ext}")
    line = one_error_line(synthgen("prepare", "physionet-challenge", "--src", str(src),
                                   "--out", str(blocker / "shards")))
    assert f"--out {blocker / 'shards'}" in line and "storage error" in line
    assert blocker.read_text() == "not a folder"


def test_job_entry_point_maps_the_same_failures(manifest: str) -> None:
    port = closed_port()
    opts = json.dumps({"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}, "key": "x", "secret": "y"})
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "generate.py"), "--manifest", manifest,
                           "--out", "s3://bucket/job", "--storage-options", opts], capture_output=True, text=True,
                          timeout=300)
    line = one_error_line(proc)
    assert f"http://127.0.0.1:{port}" in line and "s3://bucket/job" in line


def test_failures_inside_ray_tasks_become_one_line(ray_local) -> None:
    """A storage error raised in a Ray task (as in `prepare`) reaches the driver wrapped in a RayTaskError whose
    text is the remote traceback; the one line comes from the error inside."""
    import botocore.exceptions

    @ray_local.remote
    def fails(kind: str) -> None:  # defined here so Ray ships it by value (workers cannot import tests/)
        if kind == "permission":
            raise PermissionError(13, "Permission denied", "/data/out/part-00000.parquet")
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://10.0.0.9:9000/bucket/x")

    for kind, expected in (("permission", "permission denied: Permission denied: /data/out/part-00000.parquet"),
                           ("endpoint", "cannot connect to http://10.0.0.9:9000")):
        with pytest.raises(Exception) as e:
            ray_local.get(fails.remote(kind))
        line = outside_failure(e.value)
        assert line is not None and line.startswith(expected) and "\n" not in line, line


def test_storage_failure_in_a_sampler_actor_mid_run_is_one_line(ray_local, tiny_bundle, tmp_path: Path,
                                                                manifest: str) -> None:
    """`generate`'s output folder turns unwritable after the first shard (its shards/ folder replaced by a file):
    the failure, raised in a Ray Data actor, reaches the driver as one line naming --out and the path."""
    import threading
    import time

    from synthgen.generate.run import generate

    out = tmp_path / "out"
    shards = out / "shards"

    def break_after_first_shard() -> None:
        while not list(shards.glob("part-*.parquet")):
            time.sleep(0.05)
        shards.rename(out / "moved")
        shards.write_text("a file where the shards folder was")

    breaker = threading.Thread(target=break_after_first_shard, daemon=True)
    breaker.start()
    with pytest.raises(Exception) as e:
        generate(manifest, str(out), model=tiny_bundle.url, steps=100, shard_size=1, batch_size=1, actors=1,
                 progress=False)
    breaker.join(timeout=60)
    line = outside_failure(e.value)
    assert line is not None and "\n" not in line, line
    assert line.startswith(f"--out {out}: storage error: ") and str(shards) in line, line


def test_only_transient_failures_are_retried() -> None:
    import botocore.exceptions

    assert transient(botocore.exceptions.EndpointConnectionError(endpoint_url="http://h:1"))
    assert transient(ConnectionRefusedError(111, "Connection refused")) and transient(TimeoutError())
    assert not transient(PermissionError(13, "Access Denied"))
    assert not transient(FileNotFoundError(2, "The specified bucket does not exist"))
    assert not transient(botocore.exceptions.NoCredentialsError())
    assert not transient(ValueError("a bug"))
    assert outside_failure(ValueError("a bug")) is None
    try:  # a bug raised while handling a storage error stays a bug (keeps its traceback)
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError:
            raise KeyError("typo")
    except KeyError as e:
        assert outside_failure(e) is None
