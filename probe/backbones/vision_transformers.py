"""`--backbone transformers`: vision foundation models through transformers' own classes (DINOv2, DINOv2 with
registers, DINOv3 ViT, CLIP and SigLIP / SigLIP2 vision towers, ViT-MAE, ViT), from a folder as `save_pretrained`
writes it (config.json, safetensors weights, preprocessor_config.json) or a hub name (probe.data.hub).

The class comes from config.json's `model_type` (`architectures` only names it in messages): a ViTMAEForPreTraining or
Dinov2ForImageClassification checkpoint loads its encoder, a full CLIPModel / SiglipModel / Siglip2Model checkpoint
its vision tower (`vision_config` and the `vision_model.*` weights). Weights are read from safetensors only (no
pickled code), by transformers' `from_pretrained`, which builds the network on the meta device and fills it from
the files (no second copy in memory); a weight the network needs and the files lack is an error.

Cells `block{b}`: the hidden state after encoder layer b (b from 0), that is `output_hidden_states[b + 1]` of the
model's own forward (the output of the layer class transformers records as hidden states), patch tokens only (CLS
and register tokens dropped), row-major on the patch grid, as (C, h, w). The forward stops after the deepest chosen
layer. ViT-MAE runs with mask_ratio 0 and noise = arange (argsort keeps the identity order): no patch is dropped or
shuffled.

Input: the toolkit's data loader (probe.data.layout: PIL bilinear resize, then x / 255 * 2 - 1) already gives the
images at `image_size`, the whole image resized, never cropped; this backbone maps them back to [0, 1] and
normalises them with the preprocessor config's image_mean / image_std, as the model's image processor does after
its resize (rescale by 1/255, normalise). Images of another size are refused, not resized here. `image_size`:
`--image-size`, else the preprocessor's crop size (with center crop) or size (`{height, width}`, `shortest_edge`, or
SigLIP2's sqrt(max_num_patches) x patch_size), else config.image_size; a folder without preprocessor_config.json
uses config.image_size and ImageNet's statistics, said once. A size other than the config's needs position
embeddings interpolated: DINOv2 always does, DINOv3 uses RoPE, SigLIP2 resizes its embeddings to the grid, and
CLIP, SigLIP, ViT and ViT-MAE get `interpolate_pos_encoding=True`; the size must be a multiple of the patch size.

`--model-dtype float32|bfloat16|float16` is the dtype the network computes in (default float32); features are
returned in float32 on the CPU. The identity (the activation cache key) holds the class, the digest of every file
read, the image size and the dtype.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from probe.backbones.base import Backbone, Cell, capture, loaded, refuse_options, run_until, select_layers
from probe.backbones.folders import DTYPES, file_stats, files_digest, read_config, weight_files
from probe.backbones.spec import LAST_LAYERS
from probe.errors import ProbeError
from probe.models.vit import IMAGENET_MEAN, IMAGENET_STD
from probe.utils.extras import require

log = logging.getLogger("probe")
_SAID: set[str] = set()  # folders whose missing preprocessor config was already reported in this process

LAYOUT = ("a vision model folder as save_pretrained writes it (config.json, model.safetensors or its sharded index "
          "and shards, preprocessor_config.json) or its hub name (e.g. facebook/dinov2-small)")


@dataclass(frozen=True)
class Family:
    """How probe runs one transformers class: `prefix` tokens (CLS, registers) come before the patch tokens,
    `interpolation` is how another input size is handled ("always": the class interpolates by itself; "flag": it
    takes interpolate_pos_encoding=True; "patches": SigLIP2, whose input is patchified and whose position embeddings
    are resized to the grid)."""

    class_name: str
    interpolation: str
    cls_tokens: int = 1
    registers: bool = False  # config.num_register_tokens more prefix tokens


FAMILIES = {  # model_type -> family; a full CLIP / SigLIP / SigLIP2 checkpoint loads its vision tower
    "dinov2": Family("Dinov2Model", "always"),
    "dinov2_with_registers": Family("Dinov2WithRegistersModel", "always", registers=True),
    "dinov3_vit": Family("DINOv3ViTModel", "always", registers=True),
    "clip_vision_model": Family("CLIPVisionModel", "flag"),
    "clip": Family("CLIPVisionModel", "flag"),
    "siglip_vision_model": Family("SiglipVisionModel", "flag", cls_tokens=0),
    "siglip": Family("SiglipVisionModel", "flag", cls_tokens=0),
    "siglip2_vision_model": Family("Siglip2VisionModel", "patches", cls_tokens=0),
    "siglip2": Family("Siglip2VisionModel", "patches", cls_tokens=0),
    "vit_mae": Family("ViTMAEModel", "flag"),
    "vit": Family("ViTModel", "flag"),
}
SUPPORTED = ", ".join(dict.fromkeys(f.class_name for f in FAMILIES.values())) + \
    " (and the vision tower of CLIPModel, SiglipModel, Siglip2Model)"


def require_transformers():
    """transformers (the optional extra), quiet; one line naming the install otherwise."""
    transformers = require("transformers", purpose="--backbone transformers")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def model_folder(checkpoint: Path | None) -> tuple[Path, dict, Family]:
    """The folder, its config.json and the family its model_type names; an unsupported class is one line."""
    if checkpoint is None:
        raise ProbeError(f"--backbone transformers needs --checkpoint: {LAYOUT}")
    folder = Path(checkpoint)
    if folder.is_file():
        raise ProbeError(f"{folder} is a file: --backbone transformers takes {LAYOUT}")
    config = read_config(folder / "config.json", f"--backbone transformers takes {LAYOUT}")
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type)
    if family is None:
        named = ", ".join(config.get("architectures") or []) or "a model"
        raise ProbeError(f"{folder / 'config.json'} describes {named} (model_type {model_type!r}), which --backbone "
                         f"transformers does not take; supported: {SUPPORTED}")
    return folder, config, family


def read_preprocessor(folder: Path) -> tuple[dict | None, Path | None]:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None, None
    return read_config(path, "write it as the model's image processor saves it, or remove it"), path


def square(value, what: str, path: Path) -> int | None:
    """A square size from a preprocessor entry: an int, {height, width} or {shortest_edge}; None when absent."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            if value["height"] != value["width"]:
                raise ProbeError(f"{path}: {what} {value} is not square; probe takes square images (pass --image-size)")
            return int(value["height"])
    raise ProbeError(f"{path}: {what} {value!r} is not a size probe reads (an int, height/width or shortest_edge); "
                     "pass --image-size")


def preprocessor_size(pre: dict, path: Path) -> int | None:
    """The side of the square the image processor hands the model."""
    if pre.get("max_num_patches") and pre.get("patch_size"):  # SigLIP2: the largest grid within max_num_patches
        return math.isqrt(int(pre["max_num_patches"])) * int(pre["patch_size"])
    if pre.get("do_center_crop") and pre.get("crop_size") is not None:
        return square(pre["crop_size"], "crop_size", path)
    return square(pre.get("size"), "size", path)


def patch_side(patch, folder: Path) -> int:
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise ProbeError(f"{folder}: patch_size {patch} is not square; probe takes square patches")
        patch = patch[0]
    return int(patch)


def input_size(pre: dict | None, pre_path: Path | None, vision, family: Family, patch: int, folder: Path) -> int:
    """The model's own input size: the preprocessor's, else config.image_size (SigLIP2: sqrt(num_patches) x
    patch)."""
    size = preprocessor_size(pre, pre_path) if pre else None
    if size is None:
        size = getattr(vision, "image_size", None)
        if size is None and family.interpolation == "patches":
            size = math.isqrt(vision.num_patches) * patch
    if size is None:
        raise ProbeError(f"{folder}: neither preprocessor_config.json nor config.json gives an image size; pass "
                         "--image-size")
    return int(size)


def statistics(pre: dict | None, path: Path | None, folder: Path) -> tuple[list[float], list[float], str]:
    """(mean, std, a description) of the input normalisation."""
    if pre is None:
        if str(folder) not in _SAID:
            _SAID.add(str(folder))
            log.info(f"{folder} has no preprocessor_config.json: the input is normalised with ImageNet's mean and "
                     "std, at config.image_size unless --image-size")
        return list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet mean/std of x / 255 (no preprocessor_config.json)"
    if pre.get("do_rescale", True) and not math.isclose(pre.get("rescale_factor", 1 / 255), 1 / 255, rel_tol=1e-6):
        raise ProbeError(f"{path}: rescale_factor {pre['rescale_factor']} is not 1/255; probe feeds pixels / 255")
    if not pre.get("do_normalize", True):
        return [0.0] * 3, [1.0] * 3, "x / 255 (the preprocessor does not normalise)"
    mean, std = pre.get("image_mean", IMAGENET_MEAN), pre.get("image_std", IMAGENET_STD)
    mean, std = ([v] * 3 if isinstance(v, (int, float)) else list(v) for v in (mean, std))
    if len(mean) != 3 or len(std) != 3:
        raise ProbeError(f"{path}: image_mean / image_std must have 3 values (RGB), not {mean} / {std}")
    return mean, std, f"(x / 255 - {mean}) / {std}, the preprocessor's"


def load_model(model_class, folder: Path, family: Family, dtype: torch.dtype, device: str):
    """`from_pretrained` (safetensors only, no download, meta-device init) in eval mode on `device`; a weight the
    network needs and the folder lacks, or any failure, is one line naming the folder."""
    kwargs = {"mask_ratio": 0.0} if family.class_name == "ViTMAEModel" else {}
    if family.class_name == "ViTModel":
        kwargs["add_pooling_layer"] = False  # the pooler is not a layer probe reads; its weights may be absent
    try:
        model, info = model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=dtype,
                                                  output_loading_info=True, **kwargs)
    except Exception as error:  # noqa: BLE001 - transformers raises many kinds; the user gets one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ProbeError(f"{folder}: {model_class.__name__} could not load it ({first}); check that the folder is "
                         "complete and matches its config.json") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith("mask_token"))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        keys = missing or mismatched
        raise ProbeError(f"{folder}: the weights lack or mis-shape {len(keys)} tensors {model_class.__name__} needs "
                         f"({', '.join(map(str, keys[:3]))}{', ...' if len(keys) > 3 else ''}); the folder does not "
                         "match its config.json")
    return model.to(device).eval()


def encoder_layers(model) -> list[torch.nn.Module]:
    """The modules whose outputs transformers records as hidden states (its `_can_record_outputs`), in order."""
    recorded = type(model)._can_record_outputs.get("hidden_states")
    if not isinstance(recorded, type):
        raise ProbeError(f"{type(model).__name__}: this transformers version records hidden states as {recorded!r}, "
                         "which probe cannot hook")
    layers = [m for m in model.modules() if isinstance(m, recorded)]
    if len(layers) != model.config.num_hidden_layers:
        raise ProbeError(f"{type(model).__name__}: found {len(layers)} {recorded.__name__} modules for "
                         f"num_hidden_layers {model.config.num_hidden_layers}")
    return layers


class TransformersBackbone(Backbone):
    kind = "transformers"
    layer_title = "encoder layer"
    normalisation = "the preprocessor's mean/std of x / 255"

    def __init__(self, *, model, family: Family, folder: Path, files: list[Path], image_size: int, mean, std,
                 normalisation: str, dtype: str, device: str):
        self.model, self.family, self.folder, self.files = model, family, folder, files
        self.device, self.dtype = torch.device(device), dtype
        config = model.config
        self.patch_size = patch_side(config.patch_size, folder)
        self.native_size = getattr(config, "image_size", None)
        self.image_size = image_size
        self.grid = image_size // self.patch_size
        self.prefix = family.cls_tokens + (getattr(config, "num_register_tokens", 0) if family.registers else 0)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.normalisation = normalisation
        self.layer_modules = encoder_layers(model)
        self.all_layers = [f"block{b}" for b in range(len(self.layer_modules))]
        self.digest = files_digest(files)
        self.blocks: list[int] = []
        self.cells: list[Cell] = []

    @classmethod
    def build(cls, spec, purpose: str, native_size: int | None) -> TransformersBackbone:
        refuse_options(spec, ("--steps", "--noise", "--model-flags", "--input-activations"),
                       "has no diffusion steps and reads its model from config.json")
        dtype = spec.model_dtype or "float32"
        if dtype not in DTYPES:
            raise ProbeError(f"--model-dtype {dtype!r}: use {', '.join(DTYPES)}")
        folder, config, family = model_folder(spec.checkpoint)
        weights = weight_files(folder, "model", "put the model's safetensors weights into the folder (probe loads no "
                               ".bin), or pass its hub name as --checkpoint")
        pre, pre_path = read_preprocessor(folder)
        transformers = require_transformers()
        model_class = getattr(transformers, family.class_name)
        files = [folder / "config.json", *weights, *([pre_path] if pre_path else [])]
        model = loaded(weights[0], ["transformers", family.class_name, file_stats(files), dtype, spec.device],
                       lambda: load_model(model_class, folder, family, DTYPES[dtype], spec.device))
        vision = model.config
        patch = patch_side(vision.patch_size, folder)
        size = spec.image_size or input_size(pre, pre_path, vision, family, patch, folder)
        if size % patch or size < patch:
            what = f"--image-size {size}" if spec.image_size else f"{folder}: the input size {size}"
            raise ProbeError(f"{what} is not a multiple of the patch size {patch}; give e.g. "
                             f"{max(patch, round(size / patch) * patch)}")
        mean, std, normalisation = statistics(pre, pre_path, folder)
        backbone = cls(model=model, family=family, folder=folder, files=files, image_size=size, mean=mean, std=std,
                       normalisation=normalisation, dtype=dtype, device=spec.device)
        depth = len(backbone.all_layers)
        last = backbone.all_layers[max(0, depth - LAST_LAYERS):]
        defaults = {"segment": last, "features": last, "grid": backbone.all_layers,
                    "kmeans": [f"block{b}" for b in sorted({round((depth - 1) * f) for f in (0.25, 0.5, 0.75, 1)})]}
        layers = select_layers(spec.layers, backbone.all_layers, defaults[purpose])
        backbone.blocks = [backbone.all_layers.index(layer) for layer in layers]
        backbone.cells = [Cell(layer) for layer in layers]
        return backbone

    def release(self) -> None:
        self.layer_modules = []
        super().release()

    @property
    def identity(self) -> dict:
        return {"backbone": self.kind, "version": self.version, "class": self.family.class_name,
                "checkpoint": self.digest, "image_size": self.image_size, "dtype": self.dtype}

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images at image_size -> the model's normalised input, in its dtype, on its device."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ProbeError(f"images of {tuple(images.shape[-2:])} given to a transformers backbone of input size "
                             f"{self.image_size}: load them at that size (probe.data.layout does, PIL bilinear)")
        unit = (images.float().cpu() + 1) / 2
        return ((unit - self.mean) / self.std).to(self.device, DTYPES[self.dtype])

    def forward_kwargs(self, pixels: torch.Tensor) -> dict:
        """The model's inputs for normalised pixels (B, 3, S, S)."""
        interpolate = self.native_size is not None and self.image_size != self.native_size
        name = self.family.class_name
        if self.family.interpolation == "patches":  # SigLIP2: (B, h*w, p*p*3) patches, row-major, as its processor
            b, c, p, g = len(pixels), pixels.shape[1], self.patch_size, self.grid
            patches = pixels.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, p * p * c)
            return {"pixel_values": patches,
                    "pixel_attention_mask": torch.ones(b, g * g, dtype=torch.long, device=pixels.device),
                    "spatial_shapes": torch.tensor([[g, g]] * b, dtype=torch.long, device=pixels.device)}
        kwargs = {"pixel_values": pixels}
        if name == "ViTMAEModel":  # mask_ratio 0 and the identity order: argsort(arange) keeps every patch in place
            kwargs["noise"] = torch.arange(self.grid ** 2, dtype=torch.float32, device=pixels.device).expand(
                len(pixels), -1)
        if self.family.interpolation == "flag" and interpolate:
            kwargs["interpolate_pos_encoding"] = True
        return kwargs

    def features(self, images: torch.Tensor, stems: list[str], step: int | None) -> dict[str, torch.Tensor]:
        kwargs = self.forward_kwargs(self.pixel_values(images))
        modules = {b: self.layer_modules[b] for b in self.blocks}
        with capture(modules) as captured:
            run_until(modules[max(self.blocks)], False, lambda: self.model(**kwargs))
        maps = {}
        for b in self.blocks:
            tokens = captured[b]
            if tokens.shape[1] != self.prefix + self.grid ** 2:
                raise ProbeError(f"{self.family.class_name}: layer {b} gave {tokens.shape[1]} tokens, not "
                                 f"{self.prefix} + {self.grid}x{self.grid} patches")
            patches = tokens[:, self.prefix:].float().cpu()
            maps[f"block{b}"] = patches.transpose(1, 2).reshape(len(tokens), -1, self.grid, self.grid).contiguous()
        return maps
