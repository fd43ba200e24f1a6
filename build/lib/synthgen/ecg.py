"""The one ECG layout every stage agrees on: 12 leads in canonical order, 10 s at 1024 samples, in mV."""

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
N_LEADS = len(LEADS)
N_SAMPLES = 1024
DURATION_S = 10.0
FS = N_SAMPLES / DURATION_S  # 102.4 Hz
