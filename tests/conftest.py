"""Shared fixtures: the real PTB-XL subset, one local Ray cluster per test session, a tiny real model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from bundles import TinyBundle

REPO = Path(__file__).resolve().parents[1]
PTBXL = Path(os.environ.get("SYNTHGEN_PTBXL", REPO.parent / "shared" / "data" / "ptbxl"))
CINC = Path(os.environ.get("SYNTHGEN_CINC", REPO.parent / "shared" / "data" / "cinc2021-samples"))


@pytest.fixture(scope="session")
def ptbxl_dir() -> Path:
    if not (PTBXL / "ptbxl_database.csv").exists():
        pytest.fail(f"PTB-XL subset not found at {PTBXL} (set SYNTHGEN_PTBXL)")
    return PTBXL


@pytest.fixture(scope="session")
def cinc_dir() -> Path:
    """The 199 real PhysioNet/CinC Challenge 2021 records (.hea + .mat), read in place."""
    if not (CINC / "RECORDS").exists():
        pytest.fail(f"CinC 2021 samples not found at {CINC} (set SYNTHGEN_CINC)")
    return CINC


@pytest.fixture(scope="session", autouse=True)
def embedding_cache(tmp_path_factory) -> Iterator[Path]:
    """Text embeddings are cached in a per-session folder, never in ~/.cache; shared by every test, so MiniLM
    loads only for prompts not embedded yet. Set before Ray starts: workers inherit the driver's env then."""
    path = tmp_path_factory.mktemp("embeddings")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYNTHGEN_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> TinyBundle:
    """A real bundle (random weights, tiny widths) with the real offline embedder ("local", 384-d): the
    production sampling path in milliseconds per sample."""
    from bundles import TinyBundle, save_tiny_bundle

    url = str(tmp_path_factory.mktemp("tiny_bundle"))
    return TinyBundle(url, save_tiny_bundle(url, embedder_name="local", dim=384))


@pytest.fixture(scope="session")
def ray_local(embedding_cache):
    """One Ray cluster for the whole session (two clusters on one host confuse Ray Train's cleanup).

    Four logical CPUs on two cores avoid the actor-pool deadlock noted in the stack notes.
    """
    import ray

    ray.init(num_cpus=4, object_store_memory=600 * 1024**2,
             ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


class S3Server:
    """A SeaweedFS `weed mini` on loopback with credentials (see stack notes); restartable on the same data."""

    KEY, SECRET, BUCKET = "synthgen-test", "synthgen-test-secret", "synthgen"
    PORTS = {"master": 29333, "volume": 29340, "filer": 28888, "s3": 28333}  # gRPC on each + 10000

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.endpoint = f"http://127.0.0.1:{self.PORTS['s3']}"
        self.storage_options = {"key": self.KEY, "secret": self.SECRET,
                                "client_kwargs": {"endpoint_url": self.endpoint}}
        self.proc = None

    def start(self, timeout_s: float = 60.0) -> None:
        import shutil
        import subprocess
        import sys
        import time

        import s3fs

        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        p = self.PORTS
        cmd = [weed, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
               f"-s3.port={p['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
               "-admin.ui=false", "-master.telemetry=false", f"-bucket={self.BUCKET}"]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # the bucket appears 1–3 s after the port opens
            if self.proc.poll() is not None:
                pytest.fail(f"weed mini exited with {self.proc.returncode}")
            try:
                s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options).ls(self.BUCKET)
                return
            except Exception:  # not up yet: connection refused, NoSuchBucket, …
                time.sleep(0.5)
        self.stop()
        pytest.fail("SeaweedFS did not serve its bucket in time")

    def stop(self) -> None:
        """Stop and wait for the exit (2–4 s), so the ports are free for a restart."""
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server for the whole session: `.endpoint`, `.storage_options`, `.BUCKET`,
    `.stop()`/`.start()` to test a restart mid-run."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ptbxl_shards(tmp_path_factory, ptbxl_dir, ray_local) -> Path:
    """The real PTB-XL subset prepared once per session (train/val/test shards) for downstream tests."""
    from synthgen.data.prepare import prepare

    out = tmp_path_factory.mktemp("ptbxl_shards")
    prepare("ptbxl", str(ptbxl_dir), str(out))
    return out
