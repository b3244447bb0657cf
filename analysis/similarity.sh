#!/usr/bin/env bash
# Representation similarity on the embedded default: the shipped DDPM (18 blocks x 9 steps) against the shipped MAE
# (12 blocks) by CKA and mutual k-NN on 2,048 sampled test pixels; the docs' figures. The sweep folder resumes:
# delete it to start over. THREADS sets torch threads (default 2).
set -euo pipefail
results=analysis/results/similarity
probe similarity --out "$results" --threads "${THREADS:-2}" --quiet
cp "$results/steps_ddpm_cka.png" figures/similarity_steps.png
cp "$results/across_ddpm_mae_cka.png" figures/similarity_across.png
cp "$results/alignment_cka.png" figures/similarity_alignment.png
