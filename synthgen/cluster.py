"""Where synthgen's Ray work runs: the Ray already running, the cluster in RAY_ADDRESS, or a local one — and
whether it runs on GPUs.

`ray start` users and `ray job submit` set RAY_ADDRESS; everyone else gets a local Ray started for them.
A local Ray gets more logical CPUs than cores, so an actor pool plus Ray Data's own tasks cannot deadlock
on a small machine (stack notes: 2 actors × 1 CPU + a repartition hang forever on 2 CPUs).

GPUs, one rule for `train`, `generate` and `augment-eval` (docs/scale-out.md): ``gpu=None`` (no flag) uses
GPUs when the cluster has some now or its autoscaler can add some (``SYNTHGEN_MAX_GPUS``, set by the files in
infra/); each trainer worker, sampler actor or trial then asks Ray for one GPU, and the autoscaler starts
GPU nodes for the requests that wait. Nothing requires a GPU to be alive when the job starts.

A quiet console: while a session runs, everything Ray writes in this process — its Python log records (the
token-auth notice, "Started a local Ray instance", Ray Data's notices), the native lines of its core worker
(``E … core_worker.cc``), gRPC and abseil — goes to one log file (``ray_log_path``), and the Ray workers'
output stays in Ray's own session logs (``log_to_driver=False``). synthgen's progress bars write to
``console()``, the terminal. ``synthgen --verbose`` (``SYNTHGEN_VERBOSE=1``) leaves everything on the console.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any, TextIO

from synthgen.errors import InputError

MAX_GPUS_ENV = "SYNTHGEN_MAX_GPUS"      # GPUs the cluster's autoscaler can add (infra/ sets it on the head)
TORCH_DEVICE_ENV = "SYNTHGEN_TORCH_DEVICE"  # force the torch device of sampler actors and trials (e.g. cpu)
VERBOSE_ENV = "SYNTHGEN_VERBOSE"      # "1": Ray's own lines on the console too (`synthgen --verbose` sets it)
LOG_DIR_ENV = "SYNTHGEN_LOG_DIR"      # where a quiet session's Ray log file goes (default: <tmp>/synthgen-logs)

# (console stream, Ray log file) of the quiet session running in this context, if any
_QUIET: contextvars.ContextVar[tuple[TextIO, str] | None] = contextvars.ContextVar("synthgen_quiet", default=None)


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None, worker_output: bool = False) -> Iterator[ModuleType]:
    """Yield the `ray` module, connected; shut Ray down afterwards only if this call started it.

    When this call connects Ray and ``SYNTHGEN_VERBOSE`` is not ``1``, Ray's lines go to ``ray_log_path()``
    instead of the console (module docstring). ``worker_output`` still forwards the Ray workers' own output to
    this process (`train` prints its epoch lines from its workers): their stdout reaches the console, their
    stderr the log file.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    verbose = os.environ.get(VERBOSE_ENV, "").strip() == "1"
    with contextlib.ExitStack() as stack:
        if not verbose:
            stack.enter_context(_ray_output_to_file(_new_log_path()))
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=verbose or worker_output)
        else:
            ray.init(num_cpus=num_cpus or max(4, 2 * (os.cpu_count() or 1)), log_to_driver=verbose or worker_output)
        stack.callback(ray.shutdown)
        yield ray


def console() -> TextIO:
    """Where synthgen's own progress goes: the terminal's stderr, also while a quiet Ray session has moved
    this process's stderr to its log file."""
    quiet = _QUIET.get()
    return quiet[0] if quiet else sys.stderr


def ray_log_path() -> str | None:
    """The file that receives Ray's lines during the current quiet session (None outside one, or verbose)."""
    quiet = _QUIET.get()
    return quiet[1] if quiet else None


def _new_log_path() -> str:
    # Not <tmp>/synthgen: a folder named like the package, in a directory on sys.path (a script's, or Ray's
    # workers' cwd), shadows an editable install as a namespace package.
    folder = os.environ.get(LOG_DIR_ENV) or os.path.join(tempfile.gettempdir(), "synthgen-logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"ray-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")


@contextlib.contextmanager
def _ray_output_to_file(path: str) -> Iterator[None]:
    """File descriptor 2 of this process → ``path`` for the block; ``console()`` keeps the terminal.

    At the descriptor, not in Python: Ray's core worker writes its errors to fd 2 from C++, and its Python
    handlers look ``sys.stderr`` up when they emit, so only moving fd 2 catches both. Restored on exit, before
    synthgen prints an error or its summary.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal_fd = os.dup(2)
    terminal = os.fdopen(os.dup(terminal_fd), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None),
                         errors="backslashreplace")
    os.dup2(log_fd, 2)
    os.close(log_fd)
    token = _QUIET.set((terminal, path))
    try:
        yield
    finally:
        _QUIET.reset(token)
        sys.stderr.flush()
        os.dup2(terminal_fd, 2)
        os.close(terminal_fd)
        terminal.close()


@contextlib.contextmanager
def data_context(**settings: Any) -> Iterator[None]:
    """Ray Data's process-wide ``DataContext`` with ``settings`` (attribute → value) for the duration of a block,
    restored afterwards, so one command's settings do not leak into the next one in the same process."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = {name: getattr(ctx, name) for name in settings}
    for name, value in settings.items():
        setattr(ctx, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)


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
