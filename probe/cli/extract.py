"""probe features: export a backbone's feature maps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probe.cli.options import (
    Backbone,
    Blocks,
    Checkpoint,
    ClassLabel,
    Device,
    Images,
    InputActivations,
    ModelDtype,
    ModelFlagsOpt,
    Noise,
    Offload,
    Out,
    Overwrite,
    Prompt,
    Quiet,
    Revision,
    Seed,
    Tokens,
    TorchThreads,
    check_out_folder,
    check_threads,
    console,
    spec_from_options,
    start_work,
    user_errors,
)


@user_errors
def features(
    images: Path = Images,
    backbone: str = Backbone, checkpoint: Optional[Path] = Checkpoint, revision: Optional[str] = Revision,
    model_flags: Optional[str] = ModelFlagsOpt, prompt: Optional[str] = Prompt,
    model_dtype: Optional[str] = ModelDtype, class_label: Optional[int] = ClassLabel,
    offload: Optional[str] = Offload, tokens: str = Tokens,
    blocks: Optional[str] = Blocks,
    steps: Optional[str] = typer.Option(None, "--steps", help="Diffusion steps t (ddpm/random; default 50,150,250)."),
    seed: int = Seed, input_activations: bool = InputActivations, noise: Optional[str] = Noise,
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Input size (default: the images' or the model's)."),
    dtype: str = typer.Option("float32", "--dtype", help="The exported arrays' dtype: float32 or float16."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per forward."),
    pca: bool = typer.Option(False, "--pca", help="Also OUT/pca/<stem>_<cell>.png: top 3 components as RGB."),
    device: str = Device,
    out: Path = Out, overwrite: bool = Overwrite,
    threads: Optional[int] = TorchThreads, quiet: bool = Quiet,
):
    """Export a backbone's feature maps: OUT/<stem>.npz with one (C, h, w) array per cell at native resolution,
    named t{t}_block{b} (ddpm), block{b} (mae) or layer{L}.{j} (swav). At step t the diffusion backbones add
    noise as their scheduler does; sd3 and flux by flow matching, x_t = (1 - s) x0 + s e with s = t / 1000, no shift.
    --pca draws each map's top 3 principal components as RGB beside the image.

    Examples:

    \b
      probe features --checkpoint lsun_horse.pt --images imgs/ --out feats/
      probe features --backbone mae --images imgs/ --blocks 9-11 --out feats/
      probe features --images imgs/ --blocks 6,12 --steps 50 --pca --out feats/
      probe features --backbone diffusers --images imgs/ --out feats/ \\
        --checkpoint google/ddpm-ema-bedroom-256
    """
    from probe.data.layout import native_size
    from probe.data.sources import backbone_spec

    check_out_folder(out, overwrite, images, checkpoint)
    check_threads(threads)
    spec = backbone_spec(None, spec_from_options(backbone, checkpoint, model_flags, blocks, steps, noise, input_activations,
                                     image_size, seed, device, prompt=prompt, revision=revision,
                                     model_dtype=model_dtype, class_label=class_label, offload=offload,
                                     tokens=tokens), progress=not quiet)
    size = native_size(images)
    start_work(threads)
    from probe.backbones import build_backbone
    from probe.data.layout import load_images
    from probe.features.export import export_features

    chosen = build_backbone(spec, "features", size)
    written = export_features(chosen, load_images(images, chosen.image_size), out, dtype, batch_size, not quiet,
                              overwrite=overwrite, inputs=[images, checkpoint], pca=pca)
    pictures = f" and {len(written) * len(chosen.names)} PCA pictures in {out / 'pca'}" if pca else ""
    console.print(f"wrote {len(written)} files with {len(chosen.names)} arrays each to {out}{pictures}")
