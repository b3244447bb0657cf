#!/usr/bin/env bash
# k-means (k = 5) of pixel features per block and step on two default test images (the paper's Fig. 4 layout).
set -euo pipefail
probe kmeans --blocks 6,8,10,12 --steps 50,200,400,600,800 --k 5 --n-images 2 --out analysis/results/kmeans --overwrite --quiet
cp analysis/results/kmeans/kmeans.png figures/kmeans.png
