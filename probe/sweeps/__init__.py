"""Sweeps: lists of independent cells run in this process or on Ray, resumable (runner), the plan printed
before them (plan) and the data options their cells carry (data). Nothing here knows a task: a task gives
run_sweep its work function and, to be planned, an `extractions(todo) -> list[Extraction]` callable saying what the
cells still to compute extract (plan.Extraction: a backbone, its images, its store folder)."""
