"""Time one extraction pass of the paper's 256x256 ADM UNet (num_channels 64 unless --num-channels, random weights,
up to decoder block 12) in torch's default layout (what `load_model` uses, as the authors) and channels-last,
alternated in this process, and how far channels-last moves the output: max |diff| / mean |default|, the measure of
the parity check against the authors' features (tests/conftest.py parity_error, at most 1e-4).

    python bench/bench_unet_layout.py                # 2 threads (all cores), 8 passes each way
    python bench/bench_unet_layout.py --threads 1 --passes 12

Prints one JSON line with the median seconds per pass of each layout; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from paper_shape import model_flags

from probe.backbones.adm import random_unet
from probe.utils.runtime import tune_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-channels", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--passes", type=int, default=8)
    args = parser.parse_args()
    tune_process()
    torch.set_num_threads(args.threads)
    unet = random_unet(model_flags(256, args.num_channels), 0, "cpu").unet
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([50])
    layouts = {"default": torch.contiguous_format, "channels_last": torch.channels_last}
    seconds: dict[str, list[float]] = {name: [] for name in layouts}
    outputs = {}
    with torch.no_grad():
        for _ in range(args.passes + 1):  # the first round warms both up, untimed
            for name, layout in layouts.items():
                unet.to(memory_format=layout)
                started = time.perf_counter()
                outputs[name] = unet(x, t, last_block=12)
                seconds[name].append(time.perf_counter() - started)
    medians = {name: round(statistics.median(values[1:]), 4) for name, values in seconds.items()}
    reference = outputs["default"]
    difference = float((outputs["channels_last"] - reference).abs().max() / reference.abs().mean())
    print(json.dumps({"threads": args.threads, "num_channels": args.num_channels, "seconds_per_pass": medians,
                      "speedup": round(medians["default"] / medians["channels_last"], 3),
                      "max_diff_over_mean_abs": difference}))


if __name__ == "__main__":
    main()
