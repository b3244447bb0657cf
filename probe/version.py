"""The version of probe, recorded in every run marker and printed by `probe --version`."""

__version__ = "0.1.0"
