"""The paper's 256x256 ADM layout with random weights and generated face-parts data, shared by the benchmarks and
analysis/training_rule.sh (`python bench/paper_shape.py DIR` writes them to a folder).

`FLAGS` is guided-diffusion's 256x256 model at a chosen num_channels (64: D = 2112 for blocks {5,6,7,8,12} x steps
{50,150,250}; 256, the released models' width: D = 8448). Data and weights come from seeded generators only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

BLOCKS, STEPS = [5, 6, 7, 8, 12], [50, 150, 250]
FLAGS = ("--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 --image_size {size} "
         "--learn_sigma True --noise_schedule linear --num_channels {channels} --num_head_channels {head_channels} "
         "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True "
         "--channel_mult 1,1,2,2,4,4")  # the 256x256 models' multipliers, also at the smaller sizes of a quick run


def model_flags(size: int = 256, channels: int = 64) -> str:
    return FLAGS.format(size=size, channels=channels, head_channels=min(64, channels))


def write_data(folder: Path, size: int, train: int, test: int, seed: int) -> int:
    """The face-parts generator's images (.png) and label maps (.npy) in train/ and test/ of `folder`, with
    classes.txt; returns the class count."""
    from probe.data.default_domain import CLASSES, image_rng, render

    for split, count in (("train", train), ("test", test)):
        (folder / split).mkdir(parents=True)
        for i in range(count):
            image, labels = render(image_rng(seed, split, i), size)
            Image.fromarray(image).save(folder / split / f"{i:03d}.png")
            np.save(folder / split / f"{i:03d}.npy", labels.astype(np.uint8))
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return len(CLASSES)


def write_checkpoint(path: Path, flags: str, seed: int) -> None:
    """A guided-diffusion state dict of `flags` with random weights drawn from a generator seeded by `seed`."""
    from probe.backbones.adm import random_unet

    state = random_unet(flags, seed, "cpu").unet.state_dict()
    torch.save({key: value.float() for key, value in state.items()}, path)


def feature_dim(flags: str, blocks: list[int], steps: list[int]) -> int:
    """Channels of the chosen decoder blocks' outputs, summed over blocks and steps."""
    from probe.models.flags import ModelFlags, parse_flags

    resolved = ModelFlags(**parse_flags(flags))
    per_block = [int(resolved.num_channels * m) for m in resolved.channel_multipliers[::-1]
                 for _ in range(resolved.num_res_blocks + 1)]
    return len(steps) * sum(per_block[b] for b in blocks)


def prepare(folder: Path, *, size: int = 256, num_channels: int = 64, train: int = 10, test: int = 20,
            data_seed: int = 0, weights_seed: int = 0) -> tuple[str, int]:
    """folder/data (the generated dataset), folder/checkpoint.pt and folder/flags.txt, or those a previous call with
    the same arguments wrote there (recorded in folder/prepared.json); returns (the model flags, the class count)."""
    flags = model_flags(size, num_channels)
    made = {"flags": flags, "train": train, "test": test, "data_seed": data_seed, "weights_seed": weights_seed}
    record = folder / "prepared.json"
    if record.exists():
        kept = json.loads(record.read_text())
        if kept["made"] != made:
            sys.exit(f"{folder} holds data and a checkpoint made with {kept['made']}: use another folder")
        return flags, kept["classes"]
    classes = write_data(folder / "data", size, train, test, data_seed)
    write_checkpoint(folder / "checkpoint.pt", flags, weights_seed)
    (folder / "flags.txt").write_text(flags + "\n")
    record.write_text(json.dumps({"made": made, "classes": classes}))
    return flags, classes


def main() -> None:
    """`python bench/paper_shape.py DIR`: DIR/data (the generated dataset), DIR/checkpoint.pt and DIR/flags.txt."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--num-channels", type=int, default=64)
    parser.add_argument("--train", type=int, default=10)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--weights-seed", type=int, default=0)
    args = parser.parse_args()
    prepare(args.folder, num_channels=args.num_channels, train=args.train, test=args.test, data_seed=args.data_seed,
            weights_seed=args.weights_seed)


if __name__ == "__main__":
    main()
