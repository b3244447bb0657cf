"""What a user says about a backbone (`BackboneSpec`, a --backbones list), which kinds take which options and the
syntax of --blocks / --steps. No torch here: the command checks its options with these before it loads anything."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from probe.errors import ProbeError
from probe.utils.extras import require

BACKBONE_KINDS = ("ddpm", "random", "pixels", "mae", "swav", "swav_w2", "diffusers", "sd", "transformers", "dit", "pixart",
                  "sd3", "flux")  # the registry's names (probe.backbones.BACKBONES), checked before anything loads
DTYPE_BACKBONES = ("transformers", "sd", "dit", "pixart", "sd3", "flux")  # take --model-dtype
OFFLOAD_BACKBONES = ("sd", "dit", "pixart", "sd3", "flux")  # take --offload
OFFLOAD_MODES = ("model", "sequential")  # accelerate's cpu_offload_with_hook per network / cpu_offload per layer
TEXT_BACKBONES = ("sd", "pixart", "sd3", "flux")  # take --prompt
CLASS_BACKBONES = ("dit",)  # take --class-label
TOKEN_BACKBONES = ("dit", "pixart", "sd3", "flux")  # take --tokens
TOKENS = ("output", "modulated")  # --tokens: the block's output residual stream, or its AdaLN-modulated tokens
STEP_BACKBONES = ("ddpm", "random", "diffusers", "sd", "dit", "pixart", "sd3", "flux")  # cells at a step t
HUB_BACKBONES = ("diffusers", "sd", "transformers", "dit", "pixart", "sd3", "flux")  # --checkpoint may be a hub name
UNET_BACKBONES = ("ddpm", "random")  # guided-diffusion UNets: take its model flags; probe synthesize samples from them
SIZED_BACKBONES = ("transformers", "dit", "pixart", "sd3", "flux")  # a --backbones list's --image-size goes to these
# the optional libraries (probe.utils.extras) each kind imports; a hub name adds huggingface_hub, --offload accelerate
EXTRA_LIBRARIES = {**dict.fromkeys(("diffusers", "sd", "dit", "pixart", "sd3", "flux"), ("diffusers", "transformers")),
                   "transformers": ("transformers",)}
# the options of a --backbones list (backbone_entries) and the kinds each goes to
LIST_OPTIONS = {"model_flags": UNET_BACKBONES, "steps": STEP_BACKBONES, "model_dtype": DTYPE_BACKBONES,
                "image_size": SIZED_BACKBONES, "offload": OFFLOAD_BACKBONES}

# Default cells when --blocks / --steps are not given; the backbones compute theirs from these.
PAPER_BLOCKS = (5, 6, 7, 8, 12)  # of the 18 decoder blocks of the paper's 256x256 models
PAPER_STEPS = (50, 150, 250)  # of T = 1000
GRID_STEPS = (0, 50, 100, 200, 300, 400, 600, 800, 999)
KMEANS_BLOCKS = (6, 8, 10, 12)
KMEANS_STEPS = (50, 200, 400, 600, 800)
FEATURE_STEPS = (50, 150, 250)
LAST_LAYERS = 12  # mae, transformers: the paper's last 12 blocks of ViT-L (12 x 1024 = 12288 features per pixel)
MIDDLE_STEP = 250  # dit, pixart, sd3: the middle third of the blocks at this step (of T = 1000)
DITF_BLOCK, DITF_DEPTH, DITF_STEP = 28, 57, 260  # flux: DiTF's block 28 of 19 + 38 at t = 260
DIFT_UP_BLOCK, DIFT_STEP = 1, 261  # SDXL: DIFT (Tang et al., NeurIPS 2023), SD's up_blocks[1] output at t = 261


def _numbers(values: tuple[int, ...]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


@dataclass(frozen=True)
class BackboneFamily:
    """What the docs' backbones table says of a --backbone kind (rendered by docs/hooks.py)."""

    network: str
    checkpoint: str
    cells: str
    segment_cells: str  # the default cells of `probe segment`
    input: str


_LATENT = "`x/255*2-1`, then the VAE (latents)"
_MIDDLE = f"the middle third of the blocks at t = {MIDDLE_STEP}"
BACKBONE_FAMILIES = {
    "ddpm": BackboneFamily(
        "guided-diffusion ADM UNet", "a `.pt` state dict (default: the shipped DDPM)",
        "`t{t}_block{b}`: decoder blocks (`output_blocks`) × steps",
        f"blocks {_numbers(PAPER_BLOCKS)} of 18 at t {_numbers(PAPER_STEPS)} (scaled to other depths and T)",
        "`x/255*2-1` at the model's `image_size`"),
    "random": BackboneFamily(
        "the same UNet, weights drawn from a generator seeded by `--seed`",
        "none (flags from `--model-flags`, the dataset or the default)", "as `ddpm`", "as `ddpm`", "as `ddpm`"),
    "pixels": BackboneFamily("each pixel's 3×3 RGB neighbourhood (27 features)", "none", "`rgb3x3`", "`rgb3x3`",
                             "the data's size, or `--image-size`"),
    "mae": BackboneFamily(
        "MAE ViT encoder (facebookresearch/mae)",
        '`{"model": MaskedAutoencoderViT state dict}` (default: the shipped MAE)',
        "`block{b}`: encoder block outputs, cls token dropped, patch tokens on the patch grid",
        f"the last {LAST_LAYERS} blocks ({LAST_LAYERS} × 1024 = {LAST_LAYERS * 1024:,} features for ViT-L/8)",
        "ImageNet mean/std of `x/255`, at the checkpoint's image size"),
    "swav": BackboneFamily(
        "SwAV ResNet-50 (facebookresearch/swav)", '`{"state_dict": {"module.<key>": tensor}}`',
        "`layer{L}.{j}`: ResNet sublayers", "every other sublayer of layer1..layer4 (the authors' nine)",
        "ImageNet mean/std of `x/255`, at `--image-size` (default 256 on the paper's datasets, else the data's size)"),
    "swav_w2": BackboneFamily("SwAV ResNet-50w2 (facebookresearch/swav)", "as `swav`", "as `swav`", "as `swav`",
                              "as `swav`"),
    "diffusers": BackboneFamily(
        "a diffusers `UNet2DModel` (google/ddpm-ema-*)", "a model or pipeline folder, or a hub name",
        "`t{t}_block{b}`: the layers of the UNet's `up_blocks` (`up{i}.{j}`) × steps",
        "as `ddpm`, scaled to its depth", "`x/255*2-1` at the config's `sample_size`"),
    "sd": BackboneFamily(
        "Stable Diffusion 1.x/2.x and SDXL (detected) through diffusers", "a pipeline folder or a hub name",
        "`t{t}_block{b}`: the UNet's `up_blocks` layers × steps",
        f"1.x/2.x: as `ddpm`; SDXL: DIFT's `up_blocks[{DIFT_UP_BLOCK}]` at t = {DIFT_STEP}", _LATENT),
    "transformers": BackboneFamily(
        "a vision model of transformers: DINOv2 (also with registers), DINOv3 ViT, CLIP / SigLIP / SigLIP2 vision "
        "towers, ViT-MAE, ViT", "a `save_pretrained` folder or a hub name",
        "`block{b}`: the hidden state after encoder layer b, CLS and register tokens dropped, patch tokens on the "
        "patch grid", f"the last {LAST_LAYERS} layers",
        "the preprocessor's mean/std of `x/255`, at its size (or `--image-size`)"),
    "dit": BackboneFamily("DiT through diffusers", "a pipeline folder or a hub name",
                          "`t{t}_block{b}`: the image tokens block b outputs, on the patch grid", _MIDDLE, _LATENT),
    "pixart": BackboneFamily("PixArt-α/Σ through diffusers", "as `dit`", "as `dit`", _MIDDLE, _LATENT),
    "sd3": BackboneFamily("SD3/3.5 through diffusers", "as `dit`", "as `dit`", _MIDDLE, _LATENT),
    "flux": BackboneFamily("FLUX.1 through diffusers", "as `dit`", "as `dit`",
                           f"DiTF's block {DITF_BLOCK} (of {DITF_DEPTH}) at t = {DITF_STEP}", _LATENT),
}
CELL_PART = re.compile(r"(\d+)(?:-(\d+))?|[a-z]+\d[a-z0-9]*(?:\.\d+)?", re.IGNORECASE)  # 5, 0-17, block5, up1.2, rgb3x3


@dataclass
class BackboneSpec:
    """Everything a user says about a backbone; `build_backbone` turns it into one. `layers` and `steps` are the
    --blocks / --steps texts (None: the purpose's default); options a family does not take must stay unset."""

    kind: str = "ddpm"
    checkpoint: Path | None = None
    model_flags: str | Path | dict | None = None
    layers: str | None = None
    steps: str | None = None
    noise: str | None = None
    seed: int = 0
    input_activations: bool = False
    image_size: int | None = None
    device: str = "cpu"
    prompt: str | None = None  # sd only: the text the UNet is conditioned on (None: the empty prompt)
    revision: str | None = None  # a hub model's revision (branch, tag or commit), for a hub name as checkpoint
    model_dtype: str | None = None  # transformers, sd, dit, pixart, sd3, flux: the dtype the network computes in
    class_label: int | None = None  # dit only: the class the model is conditioned on (None: the null class)
    offload: str | None = None  # sd, dit, pixart, sd3, flux: weights kept on the CPU (OFFLOAD_MODES); same numbers
    tokens: str = "output"  # dit, pixart, sd3, flux: which tokens of a block (TOKENS)

    def to_dict(self) -> dict:
        """JSON-ready, for manifests (a Path becomes a string). `revision`, `model_dtype`, `class_label` and `offload`
        are left out while unset, so the specs (and sweep cell keys) of the backbones without them stay what they were
        before these options existed; so is `tokens` while it is "output"."""
        data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        for optional in ("revision", "model_dtype", "class_label", "offload"):
            if data[optional] is None:
                del data[optional]
        if data["tokens"] == TOKENS[0]:
            del data["tokens"]
        return data

    @classmethod
    def from_dict(cls, data: dict, **changes) -> BackboneSpec:
        """The spec `to_dict` wrote (a manifest's, a sweep cell's), with `changes` applied."""
        spec = cls(**{**data, **changes})
        if spec.checkpoint is not None:
            spec.checkpoint = Path(spec.checkpoint)
        return spec

    def hub_name(self) -> str | None:
        """The checkpoint as text when it may name a hub model (owner/name): a HUB_BACKBONES kind's checkpoint that is
        no local path; None otherwise."""
        text = str(self.checkpoint) if self.checkpoint is not None else None
        return text if self.kind in HUB_BACKBONES and text and not Path(text).exists() else None

    def require_libraries(self) -> None:
        """Import the optional libraries this backbone needs (its kind's EXTRA_LIBRARIES, huggingface_hub for a hub
        name, accelerate for --offload): a missing one is one ProbeError line naming the pip install, before any
        download or load."""
        modules = [*EXTRA_LIBRARIES.get(self.kind, ()), *(["huggingface_hub"] if self.hub_name() else []),
                   *(["accelerate"] if self.offload else [])]
        if modules:
            require(*modules, purpose=f"--backbone {self.kind}")

    def shipped_default(self) -> bool:
        """Whether this is ddpm without a checkpoint or model flags: the DDPM shipped in the package."""
        return self.kind == "ddpm" and self.checkpoint is None and self.model_flags is None


def takes_base_checkpoint(kind: str) -> bool:
    """Whether a kind named without weights in a list (--backbones) takes the command's --checkpoint: ddpm only."""
    return kind == "ddpm"


def backbone_entries(text: str, base: BackboneSpec, steps: str | None = None, model_dtype: str | None = None,
                     image_size: int | None = None, offload: str | None = None) -> list[tuple[str, BackboneSpec]]:
    """`ddpm,mae,transformers=DIR,dit=DIR` (--backbones) as (label, spec) pairs: `base` with each kind and the
    checkpoint after its `=` (a file, a folder or a hub name; ddpm without one takes `base`'s). `base`'s model flags,
    `steps`, `model_dtype`, `image_size` and `offload` go only to the kinds that take them (LIST_OPTIONS). The label
    is the kind, or kind:name of the checkpoint."""
    entries: list[tuple[str, BackboneSpec]] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        kind, _, checkpoint = (side.strip() for side in part.partition("="))
        given = Path(checkpoint) if checkpoint else (base.checkpoint if takes_base_checkpoint(kind) else None)
        label = f"{kind}:{Path(checkpoint).name}" if checkpoint else kind
        if label in dict(entries):
            raise ProbeError(f"--backbones {text!r}: {label} is named twice")
        options = {"model_flags": base.model_flags, "steps": steps, "model_dtype": model_dtype,
                   "image_size": image_size, "offload": offload}
        entries.append((label, replace(base, kind=kind, checkpoint=given, **{
            name: value if kind in LIST_OPTIONS[name] else None for name, value in options.items()})))
    if not entries:
        raise ProbeError(f"--backbones {text!r}: name at least one backbone, e.g. ddpm,mae")
    return entries


def check_cell_syntax(text: str | None, what: str) -> None:
    """Fail on a malformed --blocks / --steps value before anything is loaded (names are checked later)."""
    if not text or text.strip().lower() == "all":
        return
    for part in text.split(","):
        if not CELL_PART.fullmatch(part.strip()):
            raise ProbeError(f"--{what} {text!r}: {part.strip()!r} is not a number, a range or a layer name; "
                             "write e.g. 5,6,7 or 0-17 or all")


def check_offload(kind: str, offload: str | None) -> None:
    """Fail on an --offload value or a backbone that does not take it, before anything loads."""
    if offload is None:
        return
    if offload not in OFFLOAD_MODES:
        raise ProbeError(f"--offload {offload!r}: use model (each network on the device only while it runs) or "
                         "sequential (each layer's weights moved in for its forward: a network larger than the GPU)")
    if kind not in OFFLOAD_BACKBONES:
        raise ProbeError(f"--offload: the {kind} backbone loads whole onto --device (only --backbone "
                         f"{', '.join(OFFLOAD_BACKBONES)} take --offload); drop --offload")


def check_tokens(kind: str, tokens: str) -> None:
    """Fail on a --tokens value or a backbone that does not take it, before anything loads."""
    if tokens not in TOKENS:
        raise ProbeError(f"--tokens {tokens!r}: use output (the block's output) or modulated (the tokens its attention "
                         "reads: norm1's output after the AdaLN shift and scale)")
    if tokens != TOKENS[0] and kind not in TOKEN_BACKBONES:
        raise ProbeError(f"--tokens {tokens}: the {kind} backbone has no AdaLN-modulated tokens (only --backbone "
                         f"{', '.join(TOKEN_BACKBONES)} take --tokens); drop --tokens")


def check_revision(kind: str, revision: str | None) -> None:
    """Fail on --revision for a backbone that reads no hub model."""
    if revision is not None and kind not in HUB_BACKBONES:
        raise ProbeError(f"--revision: only hub models have revisions (--backbone {' or '.join(HUB_BACKBONES)} with "
                         "--checkpoint owner/name); drop --revision")


def is_guided_diffusion(kind: str | None) -> bool:
    """Whether `kind` is a guided-diffusion UNet (UNET_BACKBONES): it takes a paper dataset's model flags, and `probe
    synthesize` can sample images from it."""
    return kind in UNET_BACKBONES


def check_kind(kind: str, option: str = "--backbone") -> None:
    if kind not in BACKBONE_KINDS:
        raise ProbeError(f"{option} {kind!r}: use one of {', '.join(BACKBONE_KINDS)}")
