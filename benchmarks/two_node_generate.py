"""Two-node proof of `ray job submit … jobs/generate.py` writing to S3, with and without losing a node.

On one machine: a SeaweedFS S3 endpoint on loopback (with credentials), a Ray head (dashboard :8266) and a
second Ray node, each with its own temp dir, ports, CPUs and memory. Then:

1. submit a generate job writing to s3://…/run1 and check the output: every (spec_id, sample_index)
   exactly once, and sampler actors on both nodes;
2. submit a second job (run2), kill the second node (its process group) once it holds an actor and some
   shards are committed, and wait for the job to end; if it failed, submit the same command again and
   check that it wrote only the missing shards (the committed ones untouched); then the exactly-once check.

Uses the shipped model if there is one, else a tiny random bundle saved to S3. Nothing here touches any
other Ray on the machine (no `ray stop`). Run: `.venv/bin/python benchmarks/two_node_generate.py` — not under
`nice`: on a loaded host a niced raylet misses Ray's fixed 30 s registration deadline; the work itself (every
Ray worker process) runs at nice 19 through RAY_worker_niceness.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KEY, SECRET, BUCKET = "two-node", "two-node-secret", "twonode"
S3_PORTS = {"master": 39333, "volume": 39340, "filer": 38888, "s3": 38333}  # gRPC on each + 10000
ENDPOINT = f"http://127.0.0.1:{S3_PORTS['s3']}"
# 8265–8315 are taken by any `ray.init()` on the machine (its dashboard retries 50 ports up from 8265)
GCS_PORT, DASHBOARD_PORT = 6390, 8466
DASHBOARD = f"http://127.0.0.1:{DASHBOARD_PORT}"
N, SHARD_SIZE, STEPS = 240, 10, 20

# the nodes' environment = "the standard places" on a real cluster (instance role / node secrets);
# RAY_worker_niceness: every Ray worker (the sampler actors, Ray Data tasks) at nice 19
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "19", "AWS_ACCESS_KEY_ID": KEY,
       "AWS_SECRET_ACCESS_KEY": SECRET,
       "PATH": f"{BIN}:{os.environ['PATH']}"}
ENV.pop("RAY_ADDRESS", None)
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def s3():
    import s3fs

    return s3fs.S3FileSystem(key=KEY, secret=SECRET, endpoint_url=ENDPOINT, skip_instance_cache=True)


def start_s3(data_dir: Path) -> subprocess.Popen:
    p = S3_PORTS
    proc = subprocess.Popen(
        [str(BIN / "weed"), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
         f"-s3.port={p['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
         "-master.telemetry=false", f"-bucket={BUCKET}"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(120):  # the bucket appears 1–3 s after the port opens
        try:
            s3().ls(BUCKET)
            return proc
        except Exception:
            time.sleep(0.5)
    raise RuntimeError("SeaweedFS did not serve its bucket")


def start_node(tmp: Path, name: str, args: list[str], nodes_after: int, attempts: int = 4) -> subprocess.Popen:
    """`ray start --block` in its own session, until `nodes_after` nodes are alive; returns the process, whose
    group holds all the node's processes (killing it is how a node is lost; `ray stop` would end every Ray
    on the machine). Retried: on a loaded host a raylet can miss Ray's fixed 30 s registration deadline."""
    for attempt in range(1, attempts + 1):
        proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", *args, f"--temp-dir={tmp / name}",
                                 "--node-ip-address=127.0.0.1"], env=ENV, stdout=open(tmp / f"{name}.log", "a"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if alive_nodes() == nodes_after:
                    return proc
                time.sleep(1)
        except BaseException:  # interrupted: leave nothing running
            stop_group(proc.pid)
            raise
        stop_group(proc.pid)
        log(f"{name}: ray start failed (attempt {attempt}, exit {proc.returncode}); see {tmp / name}.log")
    raise RuntimeError(f"{name}: could not start a Ray node")


def stop_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(3)


def ray_list(kind: str, *args: str) -> list[dict]:
    """`ray list KIND` from the state API of this cluster; [] while it does not answer."""
    out = subprocess.run([str(BIN / "ray"), "list", kind, "--address", DASHBOARD, "--format", "json", *args],
                         env=ENV, capture_output=True, text=True, timeout=60)
    try:
        return json.loads(out.stdout) if out.returncode == 0 else []
    except json.JSONDecodeError:
        return []


def alive_nodes() -> int:
    return len(ray_list("nodes", "--filter", "state=ALIVE"))


def sampler_nodes() -> set[str]:
    """Node ids of the live sampler actors (Ray Data's MapWorker wrapping ShardSampler)."""
    actors = ray_list("actors", "--filter", "state=ALIVE", "--detail", "--limit", "1000")
    return {a["node_id"] for a in actors if "ShardSampler" in a.get("class_name", "")}


def second_node_id() -> str:
    return next(n["node_id"] for n in ray_list("nodes", "--filter", "state=ALIVE", "--detail")
                if not n["is_head_node"])


def generate_cmd(out: str, model: str | None) -> list[str]:
    runtime_env = json.dumps({"env_vars": {"AWS_ENDPOINT_URL": ENDPOINT}})  # endpoint only; no secrets
    return [str(BIN / "ray"), "job", "submit", "--address", DASHBOARD, "--runtime-env-json", runtime_env,
            "--working-dir", str(REPO),
            "--", "python", "jobs/generate.py", "--manifest", f"s3://{BUCKET}/manifest.csv", "--out", out,
            "--n", str(N), "--shard-size", str(SHARD_SIZE), "--steps", str(STEPS), "--batch-size", "10",
            "--actors", "2", "--cpu", "--no-progress", *(["--model", model] if model else [])]


def committed(out: str) -> dict[str, str]:
    """Committed Parquet shards → their ETag (a rewrite changes it)."""
    fs = s3()
    path = out.removeprefix("s3://") + "/shards"
    return {Path(f["name"]).name: f.get("ETag", "") for f in fs.ls(path, detail=True)
            if f["name"].endswith(".parquet")} if fs.exists(path) else {}


def check_exactly_once(out: str, total: int) -> None:
    import pandas as pd

    df = pd.read_parquet(f"{out}/shards", columns=["spec_id", "sample_index"],
                         storage_options={"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": ENDPOINT}})
    summary = json.loads(s3().cat(f"{out.removeprefix('s3://')}/_SUCCESS.json"))
    log(f"{out}/_SUCCESS.json: {summary['total_samples']} samples in {summary['n_shards']} shards; this run wrote "
        f"{summary['shards_written']} shard(s) in {summary['wall_s']} s ({summary['ecg_per_s']} ECG/s), "
        f"{summary['shards_already_done']} were already done")
    dupes = int(df.duplicated().sum())
    ok = len(df) == total and dupes == 0
    log(f"check {out}: {len(df)} rows, {df.drop_duplicates().shape[0]} distinct (spec_id, sample_index), "
        f"{dupes} duplicates, expected {total} → {'PASS' if ok else 'FAIL'}")
    if not ok:
        raise SystemExit(1)


def run_job(out: str, model: str | None, log_file: Path, on_running=None) -> int:
    """Submit and wait; `on_running()` is polled while the job runs. Returns the submit exit code."""
    t = time.monotonic()
    with open(log_file, "w") as f:
        proc = subprocess.Popen(generate_cmd(out, model), cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if on_running:
                on_running()
            time.sleep(1)
    log(f"job → {out}: exit {proc.returncode} in {time.monotonic() - t:.1f} s (log: {log_file})")
    shown = [line for line in log_file.read_text().splitlines()
             if "generated" in line or "Job '" in line or "rror" in line]
    for line in shown[-6:]:
        print("    " + line[:300], flush=True)
    return proc.returncode


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sg2n-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    weed, groups = None, []
    try:
        weed = start_s3(tmp / "s3")
        fs = s3()
        fs.put(str(REPO / "synthgen/assets/examples/minority_af.csv"), f"{BUCKET}/manifest.csv")
        model = None
        if not (REPO / "synthgen/assets/model/config.json").exists():
            sys.path.insert(0, str(REPO / "tests"))
            from test_bundle import save_tiny_bundle

            model = f"s3://{BUCKET}/model"
            os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_ENDPOINT_URL=ENDPOINT)
            save_tiny_bundle(model, embedder_name="local", dim=384)
        log(f"S3 up at {ENDPOINT}; model: {model or 'shipped'}")

        mem = ["--memory", str(2 * 1024**3), "--object-store-memory", str(400 * 1024**2)]
        groups.append(start_node(tmp, "head", [
            "--head", f"--port={GCS_PORT}", "--dashboard-host=127.0.0.1", f"--dashboard-port={DASHBOARD_PORT}",
            "--dashboard-agent-listen-port=52465", "--ray-client-server-port=20401", "--num-cpus=2", *mem],
                      nodes_after=1))
        groups.append(start_node(tmp, "node2", [
            f"--address=127.0.0.1:{GCS_PORT}", "--dashboard-agent-listen-port=52466", "--num-cpus=2", *mem],
                      nodes_after=2))
        node2 = second_node_id()
        log(f"Ray: 2 nodes alive (head + node2 {node2[:8]}), 2 CPUs each")

        # run 1: plain two-node run
        seen: set[str] = set()
        if run_job(f"s3://{BUCKET}/run1", model, tmp / "run1.log", lambda: seen.update(sampler_nodes())):
            raise SystemExit("run1 failed")
        log(f"run1 sampler actors ran on {len(seen)} node(s); on node2: {node2 in seen}")
        check_exactly_once(f"s3://{BUCKET}/run1", N)

        # run 2: lose node2 mid-run
        out2 = f"s3://{BUCKET}/run2"
        killed: list[float] = []

        def kill_node2_when_busy() -> None:
            if not killed and node2 in sampler_nodes() and len(committed(out2)) >= 3:
                stop_group(groups[1].pid)
                killed.append(time.monotonic() - T0)
                log(f"killed node2 (process group {groups[1].pid}) with {len(committed(out2))}/{N // SHARD_SIZE} "
                    "shards committed")

        rc = run_job(out2, model, tmp / "run2.log", kill_node2_when_busy)
        if not killed:
            raise SystemExit("node2 was never killed (the run ended first)")
        before = committed(out2)
        log(f"after the kill: job exit {rc}, {len(before)}/{N // SHARD_SIZE} shards committed")
        if rc or len(before) < N // SHARD_SIZE:
            if run_job(out2, model, tmp / "run2-rerun.log"):
                raise SystemExit("rerun failed")
            after = committed(out2)
            rewritten = [k for k, etag in before.items() if after.get(k) != etag]
            summary = json.loads(s3().cat(f"{BUCKET}/run2/_SUCCESS.json"))
            ok = not rewritten and summary["shards_written"] == N // SHARD_SIZE - len(before)
            log(f"rerun wrote {summary['shards_written']} shard(s), {summary['shards_already_done']} already done; "
                f"committed shards rewritten: {len(rewritten)} → {'PASS' if ok else 'FAIL'}")
        check_exactly_once(out2, N)
        log("all checks passed")
    finally:
        for node in reversed(groups):
            stop_group(node.pid)
        if weed:
            os.killpg(weed.pid, signal.SIGTERM)
            weed.wait(timeout=30)
        shutil.rmtree(tmp / "s3", ignore_errors=True)
        log(f"Ray and job logs kept in {tmp}")


if __name__ == "__main__":
    main()
