"""`--backbone diffusers`: a pixel-space UNet2DModel folder (google/ddpm-ema-*) or its hub name; the cells, the noise
and the UNet backbone are diffusers_common.py's, shared with `sd`.
"""

from __future__ import annotations

from pathlib import Path

from probe.backbones.base import loaded
from probe.backbones.diffusers_common import (
    DiffusersBackbone,
    decoder_layers,
    load_scheduler,
    require_diffusers,
    square_size,
)
from probe.backbones.folders import file_stats, files_digest, read_config, weight_files
from probe.errors import ProbeError


def load_pretrained(model_class, folder: Path, device: str):
    """diffusers' / transformers' `from_pretrained` on a local folder (safetensors only, no download), in eval
    mode on `device`; a failure is one line naming the folder."""
    try:
        model = model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except Exception as error:  # noqa: BLE001 - the libraries raise many kinds; the user gets one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ProbeError(f"{folder}: {model_class.__name__} could not load it ({first}); check that the folder is "
                         "complete and matches its config.json") from None
    return model.to(device).eval()


def unet_folder(checkpoint: Path | None) -> tuple[Path, dict, Path]:
    """(the UNet2DModel folder, its config, its scheduler_config.json) from --checkpoint: the unet folder itself
    (config.json beside diffusion_pytorch_model.safetensors, the scheduler config beside it or in ../scheduler/) or
    a pipeline folder holding unet/ and scheduler/."""
    what = "a diffusers UNet2DModel folder (config.json, diffusion_pytorch_model.safetensors, scheduler_config.json)"
    if checkpoint is None:
        raise ProbeError(f"--backbone diffusers needs --checkpoint: a hub name (e.g. google/ddpm-ema-bedroom-256) or "
                         f"{what}")
    folder = Path(checkpoint)
    if folder.is_file():
        raise ProbeError(f"{folder} is a file: --backbone diffusers takes the model's folder, {what}")
    if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"
    config_path = folder / "config.json"
    config = read_config(config_path, f"pass --checkpoint {what}, or a pipeline folder holding unet/")
    kind = config.get("_class_name")
    if kind == "UNet2DConditionModel":
        parent = folder.parent if folder.name == "unet" else folder
        raise ProbeError(f"{config_path} is a UNet2DConditionModel (text-conditioned, latent space): use --backbone "
                         f"sd --checkpoint {parent} (the pipeline folder with unet/, vae/, text_encoder/)")
    if kind != "UNet2DModel":
        raise ProbeError(f"{config_path} describes a {kind or 'model without _class_name'}, not a UNet2DModel: "
                         f"pass --checkpoint {what}")
    for scheduler in (folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"):
        if scheduler.is_file():
            return folder, config, scheduler
    raise ProbeError(f"{folder / 'scheduler_config.json'} not found (nor ../scheduler/scheduler_config.json): put "
                     "the pipeline's scheduler config beside config.json, or pass the pipeline folder")


class DiffusersUNetBackbone(DiffusersBackbone):
    """`--backbone diffusers`: a pixel-space UNet2DModel; x0 is the image in [-1, 1] at the config's sample_size."""

    kind = "diffusers"

    @classmethod
    def build(cls, spec, purpose: str, native_size: int | None) -> DiffusersUNetBackbone:
        noise = cls.check_options(spec)
        folder, config, scheduler_path = unet_folder(spec.checkpoint)
        config_path = folder / "config.json"
        image_size = square_size(config, config_path)
        weights = weight_files(folder, "diffusion_pytorch_model", "put the model's safetensors weights into the "
                               "folder, or pass its hub name as --checkpoint")
        require_diffusers(spec.kind)
        from diffusers import UNet2DModel

        files = [config_path, *weights, scheduler_path]
        unet, scheduler = loaded(weights[0], ["diffusers", file_stats(files), spec.device],
                                 lambda: (load_pretrained(UNet2DModel, folder, spec.device),
                                          load_scheduler(scheduler_path)))
        backbone = cls(kind=spec.kind, unet=unet, scheduler=scheduler, layers=decoder_layers(unet, config_path),
                       image_size=image_size, digest=files_digest(files), noise=noise,
                       input_activations=spec.input_activations, device=spec.device)
        backbone.choose_cells(spec, purpose)
        return backbone
