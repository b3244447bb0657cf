#!/usr/bin/env bash
# Training on synthetic data (the paper's Table 3 and its DatasetDDPM row) on the default domain, 3 seeds:
#   real:         the DDPM method (probe segment) on the 20 real labelled images;
#   on_synthetic: the same method on 20 images the default DDPM drew and the seed-0 ensemble labelled;
#   deeplab:      DatasetDDPM, a DeepLabV3-ResNet50 trained on all kept synthesized images (1,000 drawn, the 10 %
#                 most uncertain left out), its epoch picked on the real training images.
# Every step resumes (sweep folders, deeplab's --resume): rerun after a kill. THREADS sets torch threads (default 2).
set -euo pipefail
results=analysis/results/synthetic
threads=${THREADS:-2}
probe segment --seeds 0,1,2 --early-batch-size 64 --threads "$threads" --out "$results/real" --quiet
probe synthesize --ensemble "$results/real/seed_0/ensemble" --n 1000 --sampler ddim:50 --threads "$threads" \
  --out "$results/synth" --quiet
probe segment --train-data "$results/synth" --seeds 0,1,2 --early-batch-size 64 --threads "$threads" --out "$results/on_synthetic" --quiet
for seed in 0 1 2; do
  run="$results/deeplab/seed_$seed"
  resume=$([ -f "$run/checkpoint.pt" ] && echo --resume || true)
  [ -f "$run/metrics.json" ] || probe deeplab --train-data "$results/synth" --arch resnet50 --seed "$seed" \
    --threads "$threads" --out "$run" $resume --quiet
done
python - <<'PY'
import json
import shutil
from pathlib import Path

import pandas as pd

from probe import plots

results = Path("analysis/results/synthetic")
rows = [{"method": "DDPM method, 20 real images", "seed": s, "miou": m}
        for s, m in zip(*(json.loads((results / "real/metrics.json").read_text())[k] for k in ("seeds", "miou_per_seed")))]
rows += [{"method": "DDPM method, 20 synthesized images", "seed": s, "miou": m}
         for s, m in zip(*(json.loads((results / "on_synthetic/metrics.json").read_text())[k]
                           for k in ("seeds", "miou_per_seed")))]
synth = json.loads((results / "synth/synthesize.json").read_text())
rows += [{"method": f"DatasetDDPM, DeepLabV3-R50 on {synth['kept']} synthesized images", "seed": s,
          "miou": json.loads((results / f"deeplab/seed_{s}/metrics.json").read_text())["miou"]} for s in (0, 1, 2)]
table = pd.DataFrame(rows)
table.to_csv(results / "table3.csv", index=False)
summary = table.groupby("method", sort=False)["miou"].agg(mean="mean", std=lambda m: m.std(ddof=0))
lines = ["| method | mIoU, % (mean ± std, 3 seeds) | seeds 0, 1, 2 |", "|---|---|---|"]
for name, row in summary.iterrows():
    seeds = ", ".join(f"{v:.1f}" for v in table[table.method == name]["miou"])
    lines.append(f"| {name} | {row['mean']:.1f} ± {row['std']:.1f} | {seeds} |")
(results / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
plots.seed_bars(table, "figures/synthetic.png", title="Real vs synthesized training data (default domain, 3 seeds)",
                group="method")
shutil.copy(results / "synth/preview.png", "figures/synthetic_preview.png")
PY
