"""The ECG layout's limb-lead laws: real records obey them; generated limb leads are projected onto them."""

from __future__ import annotations

import numpy as np

from synthgen.ecg import LIMB_FROM_I_II, derive_limb_leads, project_limb_leads


def test_real_limb_leads_obey_einthoven_and_goldberger(ptbxl_shards) -> None:
    """PTB-XL's recorder derived four limb leads from two, and preprocessing is linear: projecting removes
    0.5 % of the limb leads' RMS (each lead was stored rounded to 1 µV) — a law of the data, not a filter. The
    shipped model's raw limb leads lose ~9 % (docs/model.md)."""
    from synthgen.io.shards import read_shards, signals

    real = signals(read_shards(str(ptbxl_shards), split="test", columns=["signal"]))
    residual = real[:, :6] - project_limb_leads(real)[:, :6]
    assert np.sqrt(np.mean(residual ** 2)) < 0.01 * np.sqrt(np.mean(real[:, :6] ** 2))


def test_projection_is_the_nearest_set_that_obeys_the_laws() -> None:
    x = np.random.default_rng(0).normal(size=(3, 12, 64)).astype(np.float32)
    y = project_limb_leads(x)
    assert y.shape == x.shape and y.dtype == x.dtype and not np.array_equal(x, y)  # a copy, x untouched
    np.testing.assert_allclose(derive_limb_leads(y[1].copy()), y[1], atol=1e-5)  # III = II − I, aVR, aVL, aVF
    np.testing.assert_array_equal(y[:, 6:], x[:, 6:])  # V1–V6 are independent leads
    # least squares: what was removed is orthogonal to every lawful set of limb leads
    np.testing.assert_allclose(np.einsum("ji,bjn->bin", LIMB_FROM_I_II, x[:, :6] - y[:, :6]), 0, atol=1e-5)
    np.testing.assert_allclose(project_limb_leads(y), y, atol=1e-5)
