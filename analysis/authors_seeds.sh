#!/usr/bin/env bash
# The mIoU gap to the authors' pipeline, by seed, on one held-back dataset at the paper's shape (bench/paper_shape.py:
# 256x256 ADM at num_channels 64, random weights, blocks {5,6,7,8,12} x steps {50,150,250}, D = 2112, 10 train /
# 20 test images, data seed 3): the authors' train_interpreter.py at seeds 0, 1, 2; `probe segment` (batched, the
# default) at seeds 0, 1, 2; and seed 0 with `--precision float32` and with `--sequential` (each member its own
# shuffles, torch's own modules, float32). Only mIoU is compared, so the runs may share the machine (1 thread each);
# the authors' side holds about 11 GB, so run one of theirs at a time. (Of the committed results, the seed-0 runs of
# the authors and of the default ran at 2 threads alone, from bench/bench_authors.py without --threads.)
#   bash analysis/authors_seeds.sh ../ddpm-segmentation ../guided-diffusion
set -euo pipefail
authors=$1 guided=$2
results=analysis/results/authors_seeds
work=${WORK:-/tmp/authors_seeds}  # the runs' data, checkpoints, caches and outputs (GBs): kept out of the repository
bench=(python bench/bench_authors.py --ddpm-segmentation "$authors" --guided-diffusion "$guided" --data-seed 3
       --threads 1)
mkdir -p "$results"
for seed in 0 1 2; do
  "${bench[@]}" --only authors --seed "$seed" --keep "$work/authors_$seed" | tail -1 > "$results/authors_$seed.json"
  "${bench[@]}" --only probe --seed "$seed" --keep "$work/probe_$seed" | tail -1 > "$results/probe_$seed.json"
done
"${bench[@]}" --only probe --probe-args="--precision float32" --keep "$work/probe_float32_0" | tail -1 \
  > "$results/probe_float32_0.json"
"${bench[@]}" --only probe --probe-args=--sequential --keep "$work/probe_sequential_0" | tail -1 \
  > "$results/probe_sequential_0.json"
python - <<'PY'
import json
from pathlib import Path

for path in sorted(Path("analysis/results/authors_seeds").glob("*.json")):
    result = json.loads(path.read_text())["results"][0]
    print(f"{path.stem:20s} {result['miou']:6.2f}  {result['run']}")
PY
