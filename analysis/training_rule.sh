#!/usr/bin/env bash
# The ensemble's training rule, 3 seeds each: the authors' (batches of 64 throughout, `--early-batch-size 64`)
# against batches of 128, 256 and 512 in the epochs early stopping does not check (`--early-batch-size N`, lr x N / 64), on the
# default domain (20 train / 20 test images) and at the paper's shape (bench/paper_shape.py: 256x256 ADM at
# num_channels 64 with random weights, blocks {5,6,7,8,12} x steps {50,150,250}, D = 2112, 10 train / 20 test
# generated images). Each `--seeds` run is a sweep folder that resumes. THREADS sets torch threads (default 2).
set -euo pipefail
results=analysis/results/training_rule
threads=${THREADS:-2}
python bench/paper_shape.py "$results/paper_inputs"
paper=(--data "$results/paper_inputs/data" --checkpoint "$results/paper_inputs/checkpoint.pt"
       --model-flags "$(cat "$results/paper_inputs/flags.txt")" --blocks 5,6,7,8,12 --steps 50,150,250
       --train-number 10 --test-number 20)
for batch in 64 128 512 256; do
  probe segment --early-batch-size "$batch" --seeds 0,1,2 --threads "$threads" --out "$results/default_$batch" --quiet
  probe segment "${paper[@]}" --early-batch-size "$batch" --seeds 0,1,2 --threads "$threads" \
    --out "$results/paper_$batch" --quiet
done
python - <<'PY'
import json
import os

import pandas as pd

from probe import plots

results = "analysis/results/training_rule"
rules = {64: "authors' rule (64)", 128: "early batches of 128", 256: "early batches of 256",
         512: "early batches of 512"}
rows = []
for domain in ("default", "paper"):
    for batch, rule in rules.items():
        run = f"{results}/{domain}_{batch}"
        if not os.path.exists(f"{run}/seeds.csv"):
            continue
        seconds = [json.load(open(f"{run}/seed_{s}/metrics.json"))["seconds"]["training"] for s in (0, 1, 2)]
        rows += [{"domain": domain, "rule": rule, "seed": int(r.seed), "miou": r.miou, "training_seconds": t}
                 for r, t in zip(pd.read_csv(f"{run}/seeds.csv").itertuples(), seconds)]
table = pd.DataFrame(rows)
table.to_csv(f"{results}/seeds.csv", index=False)
lines = ["| domain | training rule | mIoU, % (mean ± std, 3 seeds) | seeds 0, 1, 2 | training, s (mean) |",
         "|---|---|---|---|---|"]
for (domain, rule), group in table.groupby(["domain", "rule"], sort=False):
    seeds = ", ".join(f"{v:.1f}" for v in group.miou)
    lines.append(f"| {domain} | {rule} | {group.miou.mean():.1f} ± {group.miou.std(ddof=0):.1f} | {seeds} "
                 f"| {group.training_seconds.mean():.0f} |")
open(f"{results}/table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
for domain in ("default", "paper"):
    plots.seed_bars(table[table.domain == domain], f"figures/training_rule_{domain}.png", group="rule",
                    title=f"Training rule, {domain} ({'20' if domain == 'default' else '10'} train images, 3 seeds)")
PY
