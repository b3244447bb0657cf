#!/usr/bin/env bash
# The mIoU gap to the authors' released pipeline, paired by data seed and seed, at the paper's shape
# (bench/paper_shape.py: 256x256 ADM at num_channels 64, random weights, blocks {5,6,7,8,12} x steps {50,150,250},
# D = 2112, 10 train / 20 test images, 10 members): the authors' train_interpreter.py and `probe segment` (the
# default) on each (DATA_SEEDS x SEEDS) pair, on data seeds held back from development. Each run's JSON line goes to
# analysis/results/authors_seeds/{authors,probe}_d<D>s<S>.json (side_by_side_d<D>s<S>.json holds both sides of one
# bench/bench_authors.py run without --only); a side whose file exists is not run again. Only mIoU is compared, so the
# runs may share the machine (1 thread each); the authors' side holds about 11 GB, so run one of theirs at a time.
# Then the table (table.md, pairs.csv) and figures/authors_paired.png, over every pair with both sides.
#   bash analysis/authors_paired.sh ../ddpm-segmentation ../guided-diffusion
#   DATA_SEEDS="1 2 3" SEEDS="0 1" bash analysis/authors_paired.sh ../ddpm-segmentation ../guided-diffusion
# The files in shared_order/ are the same comparison before each member had its own order (2026-12-02).
set -euo pipefail
authors=$1 guided=$2
results=analysis/results/authors_seeds
work=${WORK:-/tmp/authors_paired}  # the runs' data, checkpoints, caches and outputs (GBs): kept out of the repository
mkdir -p "$results"
for data_seed in ${DATA_SEEDS:-1 2 3}; do
  for seed in ${SEEDS:-0 1}; do
    pair=d${data_seed}s${seed}
    for side in authors probe; do
      if [[ -e "$results/${side}_$pair.json" || -e "$results/side_by_side_$pair.json" ]]; then continue; fi
      python bench/bench_authors.py --ddpm-segmentation "$authors" --guided-diffusion "$guided" --threads 1 \
        --data-seed "$data_seed" --seed "$seed" --only "$side" --keep "$work/${side}_$pair" | tail -1 \
        > "$results/${side}_$pair.json.part"
      mv "$results/${side}_$pair.json.part" "$results/${side}_$pair.json"
    done
  done
done
python - <<'PY'
import json
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
from matplotlib import pyplot as plt

results = Path("analysis/results/authors_seeds")
mious = {}
for path in results.glob("*_d*s*.json"):
    data_seed, seed = map(int, re.search(r"_d(\d+)s(\d+)\.json$", path.name).groups())
    for run in json.loads(path.read_text())["results"]:
        side = "authors" if run["run"].startswith("authors'") else "probe"
        mious[data_seed, seed, side] = run["miou"]
pairs = sorted({(d, s) for d, s, _ in mious if (d, s, "authors") in mious and (d, s, "probe") in mious})
table = pd.DataFrame([{"data_seed": d, "seed": s, "authors": mious[d, s, "authors"], "probe": mious[d, s, "probe"]}
                      for d, s in pairs])
table["gap"] = table.probe - table.authors
table.to_csv(results / "pairs.csv", index=False)
gap, spread = table.gap.mean(), table.gap.std(ddof=1)
error = spread / np.sqrt(len(table))
lines = ["| data seed | seed | authors | `probe segment` | ours − theirs |", "|---|---|---|---|---|"]
lines += [f"| {r.data_seed} | {r.seed} | {r.authors:.2f} | {r.probe:.2f} | {r.gap:+.2f} |" for r in table.itertuples()]
lines.append(f"| mean of {len(table)} pairs ({table.data_seed.nunique()} data seeds) | | {table.authors.mean():.2f} | "
             f"{table.probe.mean():.2f} | **{gap:+.2f}** ± {spread:.2f} (s.e. {error:.2f}) |")
(results / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

figure, axes = plt.subplots(figsize=(4.6, 4.6))
low = table[["authors", "probe"]].min().min() - 0.8
high = table[["authors", "probe"]].max().max() + 0.8
axes.plot([low, high], [low, high], color="0.6", linewidth=1, zorder=1, label="equal mIoU")
for data_seed, group in table.groupby("data_seed"):
    axes.scatter(group.authors, group.probe, s=36, label=f"data seed {data_seed}", zorder=2)
axes.set(xlim=(low, high), ylim=(low, high), aspect="equal", xlabel="authors' train_interpreter.py, mIoU %",
         ylabel="probe segment, mIoU %")
axes.set_title(f"Paired by seed, paper's shape, {len(table)} pairs:\nours − theirs {gap:+.2f} ± {error:.2f} (s.e.)",
               fontsize=10)
axes.legend(frameon=False, fontsize=8)
figure.tight_layout()
figure.savefig("figures/authors_paired.png", dpi=150)
PY
