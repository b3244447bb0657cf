"""Run the authors' released train_interpreter.py on a CPU, without editing their files.

    python bench/authors_cpu.py --ddpm-segmentation DIR --guided-diffusion DIR --timings OUT.json -- <their args>

DIR are the user's own snapshots of yandex-research/ddpm-segmentation and openai/guided-diffusion (nothing of
theirs lives in this repository). Before their script is imported, this runner replaces only what a CPU-only
machine lacks:
- `mpi4py` (one process: rank 0, broadcast returns its argument) and `blobfile` (local files);
- torchvision's transforms (Compose, Resize, ToTensor, Normalize) and `cv2.resize` by PIL/numpy equivalents
  (torchvision's wheel does not import beside this torch);
- `.cuda()` on tensors and modules returns them where they are, and their `load_ensemble(device='cuda')` loads
  onto the CPU;
- their `guided_diffusion` git submodule is pointed at the guided-diffusion snapshot.
Everything else (feature extraction, the dense feature tensor, the DataLoader, the ten members trained one after
another, prediction, mIoU) is their code as released. `--timings` receives the wall-clock seconds of their three
stages: prepare (extraction of the train set into the dense tensor), fit (the members), evaluation.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import runpy
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def fake_module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


class OneProcessComm:
    """mpi4py's COMM_WORLD for a single process."""

    rank, size = 0, 1

    def Get_rank(self) -> int:  # noqa: N802 (mpi4py's name)
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def bcast(self, value, root: int = 0):
        return value


def install_mpi_and_blobfile() -> None:
    fake_module("mpi4py", MPI=types.SimpleNamespace(COMM_WORLD=OneProcessComm()))
    sys.modules["mpi4py.MPI"] = sys.modules["mpi4py"].MPI
    fake_module("blobfile", BlobFile=open, listdir=os.listdir, join=os.path.join, isdir=os.path.isdir,
                exists=os.path.exists, basename=os.path.basename, dirname=os.path.dirname)


class Compose:
    def __init__(self, steps):
        self.steps = steps

    def __call__(self, value):
        for step in self.steps:
            value = step(value)
        return value


class Resize:
    """torchvision's Resize(int) on a PIL image: the shorter side to `size`, bilinear with antialias (PIL's)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if min(width, height) == self.size:
            return image
        scale = self.size / min(width, height)
        return image.resize((round(width * scale), round(height * scale)), Image.BILINEAR)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision's ToTensor for an 8-bit RGB PIL image: (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)


class Normalize:
    def __init__(self, mean, std):
        self.mean = torch.tensor(mean)[:, None, None]
        self.std = torch.tensor(std)[:, None, None]

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std


def cv2_resize(array: np.ndarray, size: tuple[int, int], interpolation: int = 0) -> np.ndarray:
    """cv2.resize with INTER_NEAREST (the only mode their dataset uses) through PIL."""
    if interpolation != 0:
        raise NotImplementedError("only cv2.INTER_NEAREST is shimmed")
    if array.shape[1::-1] == tuple(size):
        return array
    return np.asarray(Image.fromarray(array).resize(tuple(size), Image.NEAREST))


def install_image_libraries() -> None:
    transforms = fake_module("torchvision.transforms", Compose=Compose, Resize=Resize, ToTensor=lambda: to_tensor,
                             Normalize=Normalize)
    fake_module("torchvision", transforms=transforms)
    fake_module("cv2", resize=cv2_resize, INTER_NEAREST=0)


def install_cpu_device() -> None:
    """`.cuda()` leaves tensors and modules on the CPU."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self


def point_submodule(guided_diffusion: Path) -> None:
    """`guided_diffusion.guided_diffusion.*` (their submodule path) resolves to the guided-diffusion snapshot."""
    fake_module("guided_diffusion", __path__=[str(guided_diffusion)])


def record_stages(timings: Path) -> None:
    """Timestamps of their stage boundaries, from calls their script makes: FeatureDataset is built right after
    the train set is prepared, load_ensemble right after the members are trained."""
    import src.datasets
    import src.pixel_classifier

    marks = {"start": time.perf_counter()}
    feature_dataset_init = src.datasets.FeatureDataset.__init__
    load_ensemble = src.pixel_classifier.load_ensemble

    def feature_dataset(self, *args, **kwargs):
        marks.setdefault("prepared", time.perf_counter())
        feature_dataset_init(self, *args, **kwargs)

    def load_on_cpu(args, device="cpu"):
        marks.setdefault("fitted", time.perf_counter())
        return load_ensemble(args, device="cpu")

    src.datasets.FeatureDataset.__init__ = feature_dataset
    src.pixel_classifier.load_ensemble = load_on_cpu

    def write() -> None:
        end = time.perf_counter()
        prepared, fitted = marks.get("prepared"), marks.get("fitted")
        seconds = {"prepare": prepared and prepared - marks["start"], "fit": fitted and prepared and fitted - prepared,
                   "evaluation": fitted and end - fitted, "total": end - marks["start"]}
        timings.write_text(json.dumps(seconds))

    atexit.register(write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddpm-segmentation", type=Path, required=True)
    parser.add_argument("--guided-diffusion", type=Path, required=True)
    parser.add_argument("--timings", type=Path, required=True)
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    script = args.ddpm_segmentation.resolve() / "train_interpreter.py"
    package = args.guided_diffusion.resolve() / "guided_diffusion"
    if not script.is_file() or not (package / "script_util.py").is_file():
        sys.exit(f"need {script} and {package}/script_util.py: pass the two snapshots' folders")
    install_mpi_and_blobfile()
    install_image_libraries()
    install_cpu_device()
    point_submodule(package.parent)
    sys.path.insert(0, str(script.parent))
    record_stages(args.timings)
    sys.argv = [str(script), *[a for a in args.script_args if a != "--"]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
