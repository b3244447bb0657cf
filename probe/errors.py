"""The one error type users can cause; the CLI prints it as one line and exits 2."""


class ProbeError(Exception):
    """Bad input: a path, a value or a flag. The message names it and says how to fix it."""


class DryRun(Exception):
    """Raised once a --dry-run printed its plan (probe.plan): nothing computed, nothing written; the CLI exits 0."""
