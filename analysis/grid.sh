#!/usr/bin/env bash
# mIoU of a probe per (decoder block, step) on the default, trained DDPM and random-weights control.
set -euo pipefail
results=analysis/results/grid
probe grid --out "$results/ddpm" --quiet
probe grid --backbone random --out "$results/random" --quiet
for name in grid_all grid_small grid_large grid_lines; do cp "$results/ddpm/$name.png" "figures/$name.png"; done
cp "$results/random/grid_all.png" figures/grid_all_random.png
