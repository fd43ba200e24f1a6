"""One reader per dataset layout (PTB-XL, MIMIC-IV-ECG, any WFDB folder, the PhysioNet/CinC Challenge), each
yielding record tasks."""
