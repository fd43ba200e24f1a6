"""synthgen: synthetic 12-lead ECGs from clinical reports and patient info, at batch scale."""

__version__ = "0.1.0"
