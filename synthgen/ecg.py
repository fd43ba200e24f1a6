"""The one ECG layout every stage agrees on: 12 leads in canonical order, 10 s at 1024 samples, in mV, and the
laws that tie its six limb leads together."""

import numpy as np

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
N_LEADS = len(LEADS)
N_SAMPLES = 1024
DURATION_S = 10.0
FS = N_SAMPLES / DURATION_S  # 102.4 Hz

# The limb leads I, II, III, aVR, aVL, aVF as combinations of I and II: Einthoven's law III = II − I and
# Goldberger's augmented leads aVR = −(I + II)/2, aVL = I − II/2, aVF = II − I/2. A recorder measures two of
# them and computes the other four, so real ECGs obey these exactly.
LIMB_FROM_I_II = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0], [-0.5, -0.5], [1.0, -0.5], [-0.5, 1.0]])
_PROJECT_LIMB = LIMB_FROM_I_II @ np.linalg.pinv(LIMB_FROM_I_II)  # (6, 6) orthogonal projection
LIMB_FROM_I_II.flags.writeable = _PROJECT_LIMB.flags.writeable = False


def derive_limb_leads(sig: np.ndarray) -> np.ndarray:
    """Set III, aVR, aVL, aVF of a (12, n) array (canonical order) from its I and II, in place; returns it."""
    sig[:6] = LIMB_FROM_I_II.astype(sig.dtype) @ sig[:2]  # in the signal's precision: exact sums of halves
    return sig


def project_limb_leads(sig: np.ndarray) -> np.ndarray:
    """A copy of (..., 12, n) ECGs whose six limb leads are replaced by the nearest set that obeys Einthoven's
    and Goldberger's laws (least squares over all six, so no one lead's error is passed on, as deriving them
    from I and II alone would). Generated limb leads are six separately decoded traces, ~9 % of whose energy
    no heart could make (docs/model.md); the precordial leads V1–V6 are independent and left as they are."""
    out = np.array(sig, copy=True)
    out[..., :6, :] = np.einsum("ij,...jn->...in", _PROJECT_LIMB, out[..., :6, :]).astype(out.dtype, copy=False)
    return out
