#!/usr/bin/env bash
# Issue 33's precision check on the embedded default, seeds 0, 1, 2: the batched ensemble with the default products
# (bfloat16 where the CPU has them) and with --precision float32, against --sequential (the authors' loop with torch's
# own modules, float32): mIoU per seed, the mean gap to the sequential fit, and the share of test pixels whose
# predicted label equals the sequential fit's; and the sequential fit at 1 thread, the same arithmetic summed in another
# order, for the floor that rounding alone sets. Each `--seeds` run is a sweep folder that resumes. THREADS sets torch
# threads (default 2).
set -euo pipefail
results=analysis/results/precision
threads=${THREADS:-2}
probe segment --seeds 0,1,2 --threads "$threads" --out "$results/default" --quiet
probe segment --seeds 0,1,2 --threads "$threads" --precision float32 --out "$results/float32" --quiet
probe segment --seeds 0,1,2 --threads "$threads" --sequential --out "$results/sequential" --quiet
probe segment --seeds 0,1,2 --threads 1 --sequential --out "$results/sequential_threads1" --quiet
python - <<'PY'
import json
from pathlib import Path

import numpy as np
import pandas as pd

results = Path("analysis/results/precision")
runs = {"default": "batched, default products", "float32": "batched, --precision float32",
        "sequential": "--sequential (reference)", "sequential_threads1": "--sequential --threads 1"}
rows = []
for run, name in runs.items():
    for seed in (0, 1, 2):
        folder = results / run / f"seed_{seed}"
        metrics = json.loads((folder / "metrics.json").read_text())
        reference = results / "sequential" / f"seed_{seed}" / "predictions"
        agree = total = 0
        for path in sorted((folder / "predictions").glob("*.npy")):
            ours, theirs = np.load(path), np.load(reference / path.name)
            agree, total = agree + int((ours == theirs).sum()), total + ours.size
        rows.append({"run": name, "precision": metrics["precision"], "seed": seed,
                     "miou": metrics["miou"], "agreement_with_sequential": agree / total})
table = pd.DataFrame(rows)
table.to_csv(results / "seeds.csv", index=False)
sequential = table[table.run == runs["sequential"]].set_index("seed").miou
lines = ["| run | products | mIoU, % (seeds 0, 1, 2) | mean | mean gap to sequential | pixels agreeing with "
         "sequential |", "|---|---|---|---|---|---|"]
for name, group in table.groupby("run", sort=False):
    gap = (group.set_index("seed").miou - sequential).mean()
    lines.append(f"| {name} | {group.precision.iloc[0]} | {', '.join(f'{v:.2f}' for v in group.miou)} | "
                 f"{group.miou.mean():.2f} | {gap:+.2f} | {100 * group.agreement_with_sequential.mean():.1f} % |")
(results / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
