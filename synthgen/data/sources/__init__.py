"""One reader per dataset layout (PTB-XL, MIMIC-IV-ECG, any WFDB folder), each yielding record tasks."""
