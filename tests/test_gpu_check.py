"""bench/gpu_check.py (issue 26) runs on a CPU-only machine: its CPU rows run and every CUDA row is skipped by name."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
PIECES = ["ADM extraction (256x256, use_fp16", "ensemble training", "ensemble prediction", "k-means (faiss",
          "diffusers UNet2DModel"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the CUDA rows run instead of being skipped")
def test_the_gpu_check_runs_its_cpu_rows_and_names_each_skipped_cuda_row(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--num-channels", "32", "--images", "1", "--pixels", "2048",
                             "--members", "2", "--threads", "1"], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PROBE_CACHE": str(tmp_path / "cache"),
                                               "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"torch {torch.__version__}, no CUDA")
    for piece in PIECES:
        cpu = [line for line in lines if line.startswith(piece) and re.search(r"\s+cpu\s+[0-9.]+\s+-\s+\S", line)]
        assert len(cpu) == 1, (piece, result.stdout)  # ran, timed, with what it found
        skipped = [line for line in lines if line.startswith(f"skipped: {piece}")]
        assert len(skipped) == 1 and "on cuda: torch sees no CUDA GPU" in skipped[0], (piece, result.stdout)
    assert "mIoU" in result.stdout and "D = 352" in result.stdout
