"""The GPU check (issue 26): every piece of probe that has a CUDA path, run on the CPU and, when torch sees a CUDA
GPU, on it, the CUDA results checked against the CPU's, with a table of per-piece times and peak GPU memory.

Pieces (all on seeded generated data and random weights; nothing is downloaded):

  ADM extraction   the paper's 256x256 ADM layout (channel_mult 1,1,2,2,4,4, attention at 32,16,8, use_fp16) at a
                   small width, random weights; blocks {5,6,7,8,12} at t = 50: CUDA computes in float16 (guided-
                   diffusion's convert_to_fp16), the CPU in float32. Check: each map's relative L2 error
                   (||cuda - cpu|| / ||cpu||) within --fp16-tolerance.
  ensemble fit     the DatasetGAN ensemble (PixelEnsemble, the authors' rule, precision auto) trained on --pixels
                   labelled pixels of the CPU's features; the step is compiled where the fit is long enough (as in
                   probe segment). Check: the test mIoU on each device within --miou-tolerance points (other
                   arithmetic, so other numbers: the check is "within noise", not equality).
  ensemble predict each device's ensemble predicting the test image(s) band by band (probe.tasks.segment.predict_image).
  k-means          faiss k-means (k = 5) of one image's block-12 features; on the GPU only with GPU faiss
                   (pip install -e ".[gpu]"). Check: >= 90 % of pixels in the same cluster after matching the ids.
  diffusers UNet   a diffusers UNet2DModel of a small random config (64x64, 4 up blocks) as --backbone diffusers.
                   Check: each map's relative L2 error within 1e-3 (float32 on both devices).

    python bench/gpu_check.py                                   # GPU box: a few minutes on one GPU
    python bench/gpu_check.py --num-channels 32 --pixels 2048   # the CPU-only size CI runs (tests/test_gpu_check.py)

Peak GPU memory is torch's allocator's (torch.cuda.max_memory_allocated; faiss's own GPU memory is not in it).
Without CUDA every CUDA row is skipped with one line naming it, and the CPU rows still run, so CI keeps the script
working. Prints the table on stdout; exit code 1 when a check that ran failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_shape import model_flags, write_data  # noqa: E402

BLOCKS, STEP = "5,6,7,8,12", 50


class Table:
    """The rows printed at the end: piece, device, seconds, peak GPU memory, check."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.skipped: list[str] = []
        self.failed = False

    def add(self, piece: str, device: str, seconds: float, peak: int | None, check: str = "", ok: bool = True):
        self.rows.append((piece, device, f"{seconds:.2f}", "-" if peak is None else f"{peak / 2**20:.0f}",
                          check + ("" if ok else "  FAILED")))
        self.failed = self.failed or not ok

    def skip(self, piece: str, reason: str):
        self.skipped.append(f"skipped: {piece} on cuda: {reason}")
        self.rows.append((piece, "cuda", "-", "-", "skipped"))

    def print(self):
        header = ("piece", "device", "seconds", "peak GPU MB", "check")
        widths = [max(len(row[i]) for row in [header, *self.rows]) for i in range(5)]
        for row in [header, tuple("-" * w for w in widths), *self.rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        for line in self.skipped:
            print(line)


def timed(device: str, work):
    """(result, seconds, peak GPU bytes or None) of `work()` on `device`."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = work()
    if cuda:
        torch.cuda.synchronize()
    return result, time.perf_counter() - started, torch.cuda.max_memory_allocated() if cuda else None


def relative_error(cpu: torch.Tensor, other: torch.Tensor) -> float:
    cpu, other = cpu.double(), other.double()
    return float((other - cpu).norm() / cpu.norm().clamp_min(1e-30))


def extract(spec, images, device: str) -> dict[str, torch.Tensor]:
    from dataclasses import replace

    from probe.backbones import build_backbone

    backbone = build_backbone(replace(spec, device=device), "segment", images[0].image.shape[-1])
    batch = torch.from_numpy(np.stack([im.image for im in images]))
    return backbone(batch, [im.stem for im in images], backbone.steps[0])


def adm_rows(table: Table, args, images, cuda: bool, reason: str) -> dict[str, torch.Tensor]:
    from probe.backbones import BackboneSpec

    spec = BackboneSpec(kind="random", model_flags=model_flags(256, args.num_channels), layers=BLOCKS,
                        steps=str(STEP), seed=0)
    piece = f"ADM extraction (256x256, use_fp16, num_channels {args.num_channels}, {len(images)} images)"
    cpu, seconds, _ = timed("cpu", lambda: extract(spec, images, "cpu"))
    table.add(piece, "cpu", seconds, None, f"{len(cpu)} maps, D = {sum(a.shape[1] for a in cpu.values())}")
    if not cuda:
        table.skip(piece, reason)
        return cpu
    gpu, seconds, peak = timed("cuda", lambda: extract(spec, images, "cuda"))
    worst = max(relative_error(cpu[name], gpu[name].float()) for name in cpu)
    table.add(piece, "cuda", seconds, peak, f"max relative L2 error {worst:.1e} (float16 against float32; "
              f"<= {args.fp16_tolerance:g})", worst <= args.fp16_tolerance)
    return cpu


def ensemble_rows(table: Table, args, maps, train, test, num_classes: int, ignore: int, cuda: bool, reason: str):
    from probe.ensemble import ArrayPixels, PixelEnsemble
    from probe.features.sampler import PixelSampler
    from probe.metrics import SegmentationScore
    from probe.tasks.segment import predict_image

    names = sorted(maps)
    count = len(train)
    sampler = PixelSampler([maps[n][:count] for n in names], [im.grid for im in train])
    rng = np.random.default_rng(0)
    image_index, ys, xs, labels = [], [], [], []
    for i, image in enumerate(train):
        y, x = np.nonzero(image.labels != ignore)
        image_index.append(np.full(len(y), i))
        ys.append(y)
        xs.append(x)
        labels.append(image.labels[y, x])
    image_index, ys, xs, labels = (np.concatenate(a) for a in (image_index, ys, xs, labels))
    chosen = np.sort(rng.choice(len(labels), size=min(args.pixels, len(labels)), replace=False))
    pixels = ArrayPixels(sampler.gather(image_index[chosen], ys[chosen], xs[chosen]), labels[chosen])
    fit_piece = f"ensemble training ({args.members} members, {len(chosen)} pixels, D = {pixels.dim})"
    predict_piece = f"ensemble prediction ({len(test)} image(s) at {test[0].size[0]}x{test[0].size[1]})"

    def run(device: str):
        ensemble, fit_seconds, fit_peak = timed(device, lambda: PixelEnsemble(
            num_classes, members=args.members, seed=0, device=device, progress=False, precision="auto").fit(pixels))

        def predict():
            score = SegmentationScore(num_classes, ignore)
            for i, image in enumerate(test):
                test_sampler = PixelSampler([maps[n][count + i:count + i + 1] for n in names], [image.grid])
                score.update(predict_image(ensemble, test_sampler, size=image.size)[0], image.labels)
            return 100 * score.miou

        miou, predict_seconds, predict_peak = timed(device, predict)
        return ensemble, miou, (fit_seconds, fit_peak), (predict_seconds, predict_peak)

    ensemble, cpu_miou, fit, predict = run("cpu")
    table.add(fit_piece, "cpu", *fit, f"{ensemble.precision}, {int(ensemble.iterations_.max())} steps"
              f"{', compiled' if ensemble.compiled_ else ''}")
    table.add(predict_piece, "cpu", *predict, f"mIoU {cpu_miou:.2f}")
    if not cuda:
        table.skip(fit_piece, reason)
        table.skip(predict_piece, reason)
        return
    ensemble, gpu_miou, fit, predict = run("cuda")
    table.add(fit_piece, "cuda", *fit, f"{ensemble.precision}, {int(ensemble.iterations_.max())} steps"
              f"{', compiled' if ensemble.compiled_ else ''}")
    close = abs(gpu_miou - cpu_miou) <= args.miou_tolerance
    table.add(predict_piece, "cuda", *predict, f"mIoU {gpu_miou:.2f} vs {cpu_miou:.2f} on the CPU "
              f"(<= {args.miou_tolerance:g} points apart)", close)


def kmeans_rows(table: Table, maps, test, cuda: bool, reason: str):
    import faiss

    from probe.features.sampler import PixelSampler
    from probe.tasks.kmeans import kmeans_labels, match_labels

    name = next(n for n in sorted(maps) if n.endswith("block12"))
    image = test[0]
    features = PixelSampler([maps[name][-1:]], [image.grid]).image_features(0, slice(None)).numpy()
    piece = f"k-means (faiss, k = 5, {len(features)} pixels x {features.shape[1]})"
    cpu, seconds, _ = timed("cpu", lambda: kmeans_labels(features, 5, 0, use_gpu=False))
    table.add(piece, "cpu", seconds, None, f"cluster sizes {sorted(np.bincount(cpu, minlength=5).tolist())}")
    if not cuda:
        table.skip(piece, reason)
        return
    if faiss.get_num_gpus() == 0:
        table.skip(piece, "faiss sees no GPU (faiss-cpu installed): pip install -e '.[gpu]' for GPU faiss")
        return
    gpu, seconds, peak = timed("cuda", lambda: kmeans_labels(features, 5, 0, use_gpu=True))
    agree = float((match_labels(cpu, gpu, 5) == cpu).mean())
    table.add(piece, "cuda", seconds, peak, f"{100 * agree:.1f} % of pixels in the same cluster (>= 90 %)",
              agree >= 0.9)


def diffusers_rows(table: Table, source, folder: Path, cuda: bool, reason: str):
    from probe.backbones import BackboneSpec

    try:
        import diffusers
    except ImportError:
        table.skip("diffusers UNet2DModel", "diffusers is not installed (pip install -e '.[diffusers]')")
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(
            sample_size=64, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(32, 64, 64, 128),
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8,
            attention_head_dim=8)
    unet.save_pretrained(folder)
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)
    images = source.split("test", 64, 1)
    spec = BackboneSpec(kind="diffusers", checkpoint=folder, steps=str(STEP), seed=0)
    piece = "diffusers UNet2DModel (64x64, 4 up blocks, random)"
    cpu, seconds, _ = timed("cpu", lambda: extract(spec, images, "cpu"))
    table.add(piece, "cpu", seconds, None, f"{len(cpu)} maps")
    if not cuda:
        table.skip(piece, reason)
        return
    gpu, seconds, peak = timed("cuda", lambda: extract(spec, images, "cuda"))
    worst = max(relative_error(cpu[name], gpu[name].float()) for name in cpu)
    table.add(piece, "cuda", seconds, peak, f"max relative L2 error {worst:.1e} (float32; <= 1e-3)", worst <= 1e-3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-channels", type=int, default=64, help="the ADM's width (the released models': 256)")
    parser.add_argument("--images", type=int, default=2, help="labelled 256x256 training images (one more tests)")
    parser.add_argument("--pixels", type=int, default=65536, help="labelled pixels the ensemble trains on")
    parser.add_argument("--members", type=int, default=10, help="MLPs in the ensemble")
    parser.add_argument("--fp16-tolerance", type=float, default=2e-2, help="ADM maps' relative L2 error allowed")
    parser.add_argument("--miou-tolerance", type=float, default=3.0, help="mIoU points allowed between devices")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU side")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from probe.data.sources import open_source
    from probe.utils.runtime import flush_subnormals

    flush_subnormals()
    cuda = torch.cuda.is_available()
    reason = "torch sees no CUDA GPU (torch.cuda.is_available() is False)"
    print(f"torch {torch.__version__}, {'CUDA ' + torch.cuda.get_device_name(0) if cuda else 'no CUDA'}, "
          f"{torch.get_num_threads()} CPU threads")
    table = Table()
    with tempfile.TemporaryDirectory(prefix="probe-gpu-check-") as scratch:
        os.environ.setdefault("PROBE_CACHE", str(Path(scratch) / "cache"))
        data = Path(scratch) / "data"
        num_classes = write_data(data, 256, args.images, 1, seed=0)
        source = open_source(data=data)
        train = source.split("train", 256, args.images)
        test = source.split("test", 256, 1)
        maps = adm_rows(table, args, train + test, cuda, reason)
        ensemble_rows(table, args, maps, train, test, num_classes, source.ignore_label, cuda, reason)
        kmeans_rows(table, maps, test, cuda, reason)
        diffusers_rows(table, source, Path(scratch) / "diffusers", cuda, reason)
    table.print()
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
