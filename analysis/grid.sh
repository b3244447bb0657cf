#!/usr/bin/env bash
# mIoU of a probe per (decoder block, step) on the default: trained DDPM and random-weights control, with the
# authors' shared noise (all 9 default steps), and with fresh noise per image at the extreme steps 0 and 999.
# Each grid is a sweep folder that resumes (add --ray local to spread its cells): delete it to start over.
# THREADS sets torch threads (default 2).
set -euo pipefail
results=analysis/results/grid
threads=${THREADS:-2}
probe grid --out "$results/ddpm" --threads "$threads" --quiet
probe grid --backbone random --out "$results/random" --threads "$threads" --quiet
probe grid --noise per-image --steps 0,999 --out "$results/ddpm_per_image" --threads "$threads" --quiet
probe grid --backbone random --noise per-image --steps 0,999 --out "$results/random_per_image" --threads "$threads" --quiet
for name in grid_all grid_small grid_large grid_lines; do cp "$results/ddpm/$name.png" "figures/$name.png"; done
cp "$results/random/grid_all.png" figures/grid_all_random.png
