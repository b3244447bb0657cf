#!/usr/bin/env bash
# mIoU against the number of labelled training images (the paper's Table 4) on the default, three backbones, 3 seeds,
# on a local Ray cluster with one thread per cell. A rerun resumes; the figure goes to figures/.
set -euo pipefail
probe efficiency --early-batch-size 64 --train-numbers 1,2,5,10,20 --seeds 0,1,2 --backbones ddpm,mae,pixels --ray local --threads 1 \
  --out analysis/results/efficiency --quiet
cp analysis/results/efficiency/efficiency.png figures/efficiency.png
