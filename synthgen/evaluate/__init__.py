"""Outputs → figures: the Net1D encoder, metrics against references, the report and ECG printouts."""
