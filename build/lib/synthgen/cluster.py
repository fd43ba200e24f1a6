"""Where synthgen's Ray work runs: the Ray already running, the cluster in RAY_ADDRESS, or a local one.

`ray start` users and `ray job submit` set RAY_ADDRESS; everyone else gets a local Ray started for them.
A local Ray gets more logical CPUs than cores, so an actor pool plus Ray Data's own tasks cannot deadlock
on a small machine (stack notes: 2 actors × 1 CPU + a repartition hang forever on 2 CPUs).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType


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
