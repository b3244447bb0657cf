#!/usr/bin/env bash
# Zero-shot correspondence on the embedded default: the shipped DDPM's 18 blocks x 9 steps on the 20 face pairs
# (DIFT's protocol, PCK per point and per image); the docs' figures. The sweep folder resumes: delete it to start
# over. THREADS sets torch threads (default 2).
set -euo pipefail
results=analysis/results/correspond
probe correspond --out "$results" --threads "${THREADS:-2}" --quiet
cp "$results/grid.png" figures/correspond_grid.png
cp "$results/matches.png" figures/correspond_matches.png
