#!/usr/bin/env bash
# Few-shot segmentation on the default with three feature backbones, 3 seeds each (mean ± std, as the paper),
# and the trained DDPM once more with the ensemble's members trained one by one (--sequential) instead of batched.
set -euo pipefail
results=analysis/results/backbones
for backbone in ddpm random pixels; do
  probe segment --backbone "$backbone" --seeds 0,1,2 --out "$results/$backbone" --quiet
done
probe segment --sequential --seeds 0,1,2 --out "$results/ddpm_sequential" --quiet
python - <<'PY'
import pandas as pd
from probe import plots
runs = {"ddpm": "ddpm", "random": "random", "pixels": "pixels", "ddpm_sequential": "ddpm, members one by one"}
table = pd.concat(pd.read_csv(f"analysis/results/backbones/{run}/seeds.csv").assign(backbone=label)
                  for run, label in runs.items())
table.to_csv("analysis/results/backbones/seeds.csv", index=False)
print(table.groupby("backbone", sort=False)["miou"].agg(mean="mean", std=lambda m: m.std(ddof=0)).round(2))  # population std
plots.seed_bars(table, "figures/backbones.png", title="Few-shot segmentation on the default domain (3 seeds)")
PY
