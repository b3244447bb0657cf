#!/usr/bin/env bash
# mIoU under the ImageNet-C corruptions (the paper's Fig. 6) on the default: each backbone's ensemble trained on clean
# images, scored on the test images under all 19 corruptions at severities 1-5; 3 seeds on a local Ray cluster with
# one thread per cell. A rerun resumes; the figure goes to figures/.
set -euo pipefail
probe robustness --early-batch-size 64 --backbones ddpm,mae,random,pixels --corruptions all --severities 1,2,3,4,5 --seeds 0,1,2 \
  --ray local --threads 1 --out analysis/results/robustness --quiet
cp analysis/results/robustness/robustness.png figures/robustness.png
