"""Where synthgen's Ray work runs: the Ray already running, the cluster in RAY_ADDRESS, or a local one — and
whether it runs on GPUs.

`ray start` users and `ray job submit` set RAY_ADDRESS; everyone else gets a local Ray started for them.
A local Ray gets more logical CPUs than cores, so an actor pool plus Ray Data's own tasks cannot deadlock
on a small machine (stack notes: 2 actors × 1 CPU + a repartition hang forever on 2 CPUs).

GPUs, one rule for `train`, `generate` and `augment-eval` (docs/scale-out.md): ``gpu=None`` (no flag) uses
GPUs when the cluster has some now or its autoscaler can add some (``SYNTHGEN_MAX_GPUS``, set by the files in
infra/); each trainer worker, sampler actor or trial then asks Ray for one GPU, and the autoscaler starts
GPU nodes for the requests that wait. Nothing requires a GPU to be alive when the job starts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType

from synthgen.errors import InputError

MAX_GPUS_ENV = "SYNTHGEN_MAX_GPUS"      # GPUs the cluster's autoscaler can add (infra/ sets it on the head)
TORCH_DEVICE_ENV = "SYNTHGEN_TORCH_DEVICE"  # force the torch device of sampler actors and trials (e.g. cpu)


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[ModuleType]:
    """Yield the `ray` module, connected; shut Ray down afterwards only if this call started it."""
    import ray

    started = not ray.is_initialized()
    if started:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"])
        else:
            ray.init(num_cpus=num_cpus or max(4, 2 * (os.cpu_count() or 1)))
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def max_gpus_setting() -> int:
    """``SYNTHGEN_MAX_GPUS`` as a count (0 when unset); a value that is not a count is an InputError."""
    value = os.environ.get(MAX_GPUS_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise InputError(f"{MAX_GPUS_ENV}={value!r}: expected the number of GPUs the cluster can scale to")
    return int(value)


def gpu_budget(ray: ModuleType, gpu: bool | None) -> int:
    """How many GPUs the job plans with; 0 = run on CPUs.

    The larger of the GPUs in the Ray cluster now and ``SYNTHGEN_MAX_GPUS`` (what its autoscaler can add).
    gpu=None uses GPUs iff that is positive; gpu=False never; gpu=True requires it to be positive, else
    InputError (no GPU now and none configured to come: the job would wait forever).
    """
    if gpu is False:
        return 0
    budget = max(int(ray.cluster_resources().get("GPU", 0)), max_gpus_setting())
    if gpu and budget == 0:
        raise InputError(f"--gpu: the Ray cluster has no GPUs and {MAX_GPUS_ENV} is not set; start GPU nodes, "
                         f"or set {MAX_GPUS_ENV} to the number of GPUs its autoscaler can add")
    return budget


def torch_device(use_gpu: bool) -> str:
    """The torch device for work that Ray gave a GPU (``cuda``) or not (``cpu``); ``SYNTHGEN_TORCH_DEVICE``
    overrides both (e.g. ``cpu`` to test GPU scheduling with logical GPUs on a machine without one)."""
    return os.environ.get(TORCH_DEVICE_ENV) or ("cuda" if use_gpu else "cpu")


def device_label(device: str) -> str:
    """Where a Ray task or actor computes: its torch device, plus the GPU ids Ray assigned it, if any
    (e.g. ``cuda (Ray GPU 0)``); reported per shard and per trial so a run shows what ran where."""
    import ray

    ids = ray.get_gpu_ids() if ray.is_initialized() else []
    return f"{device} (Ray GPU {','.join(str(i) for i in ids)})" if ids else device
