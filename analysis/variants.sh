#!/usr/bin/env bash
# The extraction variants (the paper's Table 5, extended with DDIM inversion) on the default, 3 seeds, on a local Ray
# cluster with one thread per cell. A rerun resumes; the figure goes to figures/.
set -euo pipefail
probe variants --early-batch-size 64 --seeds 0,1,2 --draws 4 --inversion-steps 25 --ray local --threads 1 --out analysis/results/variants --quiet
cp analysis/results/variants/variants.png figures/variants.png
