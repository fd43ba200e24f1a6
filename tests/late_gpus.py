"""A Ray cluster whose GPU node arrives only after the job asked for GPUs, on a machine without a GPU: do
`generate` and `augment-eval` ask Ray for one GPU per sampler actor / trial, and wait for it, instead of
requiring GPUs alive at start?

Run by tests/test_cluster.py in its own process (its own Ray; the test session's Ray stays as it is). Real
Ray nodes on this host through `ray.cluster_utils.Cluster`: a head with 4 CPUs and no GPU; a second node with
2 *logical* GPUs is added only once the job's GPU requests are pending in the GCS, and
removed after the step. As on the clusters in infra/, ``SYNTHGEN_MAX_GPUS=2`` says how many GPUs can come;
``SYNTHGEN_TORCH_DEVICE=cpu`` keeps torch on the CPU inside the GPU actors and trials. ``RAY_TMPDIR`` is
private, so no other `ray.init()` on this host finds this cluster. Steps, each started with no GPU:

1. `generate` (gpu unset) of 4 ECGs (AF / non-AF conditions), 2 shards: two sampler actors;
2. `augment-eval` (gpu unset) on the AF task, one seed, with that synthetic set: two trials (original,
   weighted; none of the tiny model's ECGs is plausible, so no arm trains on them).

Data: a tiny shard set (8 records; `RECORDS`), so the trials train in seconds.
Prints one JSON line: the GPUs alive when each step started, the GPU requests that were pending before the
GPU node existed, and the device each actor / trial reported.

    python tests/late_gpus.py --model TINY_BUNDLE --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd

MAX_GPUS = 2
HEAD = {"num_cpus": 4, "num_gpus": 0, "include_dashboard": False, "object_store_memory": 200 * 1024**2}
GPU_NODE = {"num_cpus": 4, "num_gpus": MAX_GPUS, "object_store_memory": 150 * 1024**2}
# (patient id, split, AF): train 1 AF + 3 not, val and test 1 + 1
RAY_DID_NOT_START = 75  # exit code: the caller may start the script again
T = TypeVar("T")
RECORDS = [("p1", "train", True), ("p2", "train", False), ("p3", "train", False), ("p4", "train", False),
           ("p5", "val", True), ("p6", "val", False), ("p7", "test", True), ("p8", "test", False)]


def gpus_now(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def pending_gpu_requests(gcs) -> list[dict]:
    """The resource bundles that wait in the GCS for a node with a GPU, one per waiting actor or task."""
    from ray.autoscaler.v2.sdk import get_cluster_resource_state

    state = get_cluster_resource_state(gcs)
    return [dict(r.request.resources_bundle) for r in state.pending_resource_requests
            for _ in range(r.count) if r.request.resources_bundle.get("GPU")]


def start_node(cluster, args: dict):
    """Add a node to ``cluster`` (the first is its head); exit with RAY_DID_NOT_START if it missed Ray's fixed
    30 s registration deadline, as on a loaded host (its processes die with this process)."""
    try:
        return cluster.add_node(**args)
    except Exception as e:
        print(f"a Ray node did not start: {e}", file=sys.stderr, flush=True)
        os._exit(RAY_DID_NOT_START)


def with_late_gpu_node(cluster, expected: int, seen: list[dict], job: Callable[[], T], timeout_s: float = 600) -> T:
    """Run ``job`` in a thread; meanwhile wait until ``expected`` GPU requests are pending (or ``timeout_s``),
    copy them into ``seen`` and add the GPU node (Ray adds nodes only from the main thread). Afterwards the
    node is removed and this waits until the GCS no longer counts its GPUs. Returns what ``job`` returned."""
    import ray
    from ray._raylet import GcsClient

    done: dict = {}

    def target() -> None:
        try:
            done["value"] = job()
        except BaseException as e:  # re-raised below, in the main thread
            done["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    gcs, deadline, pending = GcsClient(address=cluster.address), time.monotonic() + timeout_s, []
    while thread.is_alive() and time.monotonic() < deadline:
        pending = pending_gpu_requests(gcs)
        if len(pending) >= expected:
            break
        time.sleep(0.2)
    seen.extend(pending)
    node = start_node(cluster, GPU_NODE) if thread.is_alive() else None
    thread.join()
    if node is not None:
        cluster.remove_node(node)
        while gpus_now(ray) and time.monotonic() < deadline + timeout_s:
            time.sleep(0.5)
    if "error" in done:
        raise done["error"]
    return done["value"]


def tiny_data(out: Path) -> tuple[str, str]:
    """(shards, manifest): the 8 records as one shard file; 2 AF + 2 non-AF conditions from the training split,
    their prompt embedded here into $SYNTHGEN_CACHE (which the nodes inherit), so no actor loads the text model."""
    from synthgen.conditions.embedders import get_embedder
    from synthgen.conditions.prompts import ordered_prompt
    from synthgen.generate.manifest import class_conditions, read_manifest, write_manifest
    from test_augment_eval import _shards

    shards = _shards(out / "shards", RECORDS)
    rows = pd.concat([class_conditions(shards, "af", negative=neg).head(1) for neg in (False, True)])
    manifest = str(out / "af.csv")
    write_manifest(rows.assign(n=2), manifest)
    get_embedder("local").embed([ordered_prompt(s.condition.reports) for s in read_manifest(manifest)])
    return shards, manifest


def run(model: str, out: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from classifiers.experiment import augment_eval
    from synthgen.generate.run import generate

    out.mkdir(parents=True, exist_ok=True)
    shards, manifest = tiny_data(out)
    cluster = Cluster()
    start_node(cluster, HEAD)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        report: dict = {"generate_requests": [], "trial_requests": []}
        report["gpus_before_generate"] = gpus_now(ray)
        summary = with_late_gpu_node(cluster, 2, report["generate_requests"], lambda: generate(
            manifest, str(out / "generate"), model=model, sampler="ddim", steps=2, shard_size=2, batch_size=2,
            progress=False))
        report["generate_devices"] = summary["devices"]
        report["gpus_before_augment_eval"] = gpus_now(ray)
        # two trials (original and weighted arms): the tiny model's ECGs all fail the plausibility check, so no
        # synthetic or augmented arm has ECGs to train on
        with_late_gpu_node(cluster, 2, report["trial_requests"], lambda: augment_eval(
            shards, str(out / "augment-eval"), tasks=["af"], synthetic=str(out / "generate"), seeds=1, epochs=1,
            batch_size=4, progress=False))
        report["trial_devices"] = pd.read_csv(out / "augment-eval" / "trials.csv")["device"].tolist()
        return report
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--model", required=True)
    args.add_argument("--out", required=True, type=Path)
    opts = args.parse_args()
    # a private Ray temp dir (short: Ray's socket paths are length-limited), set before Ray is imported
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="sgg-", dir="/tmp")
    print(f"Ray logs: {os.environ['RAY_TMPDIR']}", file=sys.stderr, flush=True)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.update(SYNTHGEN_MAX_GPUS=str(MAX_GPUS), SYNTHGEN_TORCH_DEVICE="cpu")
    print(json.dumps(run(opts.model, opts.out)), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
