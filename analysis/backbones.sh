#!/usr/bin/env bash
# Few-shot segmentation on the default with every shipped backbone (the paper's Table 2 form: DDPM beside MAE, and
# the two controls), 3 seeds each (mean ± std, as the paper): one sweep of `probe segment` fits on all 20 labelled
# training images. Then the trained DDPM twice more: with the first layer's products in float32 (the default, auto,
# takes bfloat16 on CPUs that multiply it natively) and with the members trained one by one (--sequential).
# Sweep folders resume: delete analysis/results/backbones to start over. THREADS sets torch threads (default 2).
set -euo pipefail
results=analysis/results/backbones
threads=${THREADS:-2}
probe efficiency --backbones ddpm,mae,random,pixels --train-numbers 20 --seeds 0,1,2 --early-batch-size 64 --out "$results/sweep" --threads "$threads" --quiet
probe segment --precision float32 --seeds 0,1,2 --early-batch-size 64 --out "$results/ddpm_float32" --threads "$threads" --quiet
probe segment --sequential --seeds 0,1,2 --early-batch-size 64 --out "$results/ddpm_sequential" --threads "$threads" --quiet
python - <<'PY'
import pandas as pd
from probe import plots
results = "analysis/results/backbones"
table = pd.concat([pd.read_csv(f"{results}/sweep/efficiency.csv")[["backbone", "seed", "miou"]],
                   *(pd.read_csv(f"{results}/{run}/seeds.csv")[["seed", "miou"]].assign(backbone=label)
                     for run, label in {"ddpm_float32": "ddpm, float32 products",
                                        "ddpm_sequential": "ddpm, members one by one"}.items())])
table.to_csv(f"{results}/seeds.csv", index=False)
summary = table.groupby("backbone", sort=False)["miou"].agg(mean="mean", std=lambda m: m.std(ddof=0))  # population std
lines = ["| backbone | mIoU, % (mean ± std, 3 seeds) | seeds 0, 1, 2 |", "|---|---|---|"]
for name, row in summary.iterrows():
    seeds = ", ".join(f"{v:.1f}" for v in table[table.backbone == name]["miou"])
    lines.append(f"| {name} | {row['mean']:.1f} ± {row['std']:.1f} | {seeds} |")
open(f"{results}/table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
plots.seed_bars(table[table.backbone.isin(["ddpm", "mae", "random", "pixels"])], "figures/backbones.png",
                title="Few-shot segmentation on the default domain (3 seeds)")
PY
