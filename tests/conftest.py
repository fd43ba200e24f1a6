"""Shared fixtures: the real PTB-XL subset, and one local Ray cluster per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PTBXL = Path(os.environ.get("SYNTHGEN_PTBXL", REPO.parent / "shared" / "data" / "ptbxl"))


@pytest.fixture(scope="session")
def ptbxl_dir() -> Path:
    if not (PTBXL / "ptbxl_database.csv").exists():
        pytest.fail(f"PTB-XL subset not found at {PTBXL} (set SYNTHGEN_PTBXL)")
    return PTBXL


@pytest.fixture(scope="session")
def ray_local():
    """One Ray cluster for the whole session (two clusters on one host confuse Ray Train's cleanup).

    Four logical CPUs on two cores avoid the actor-pool deadlock noted in the stack notes.
    """
    import ray

    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=600 * 1024**2,
             ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()
