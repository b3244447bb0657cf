"""Diffusion transformers through diffusers' own classes, one `--backbone` per family, each from a pipeline folder
as diffusers saves it (transformer/, vae/, scheduler/, the text encoders and tokenizers; model_index.json) or its
hub name (probe.data.hub):

| kind | class | conditioning | noise |
|---|---|---|---|
| `dit` | DiTTransformer2DModel | `--class-label N` (default: the null class, N = num_embeds_ada_norm) | DDPM add_noise |
| `pixart` | PixArtTransformer2DModel | `--prompt` through T5 (120 tokens, PixArt-Sigma 300; attention mask) | DDPM add_noise |
| `sd3` | SD3Transformer2DModel | `--prompt` through 2 CLIPs (+ T5, 256 tokens) as StableDiffusion3Pipeline | flow |
| `flux` | FluxTransformer2DModel | `--prompt` through CLIP (pooled) + T5 (512 tokens); guidance 3.5 | flow |

The class is read from transformer/config.json's `_class_name`: a folder of another family names the backbone that
reads it, an unsupported class names itself and the supported ones.

x0 = the VAE encoder's mean with the pipeline's shift and scaling (probe.backbones.latent_diffusion.vae_latents),
at the image size transformer sample_size x the VAE's scale factor (FLUX: 128 x 8 = 1024, its pipeline's default);
`--image-size` takes another multiple of (VAE scale x patch). Noise: DDPM-style families x_t = the scheduler's
add_noise(x0, e, t) (DDPMScheduler from the folder's scheduler config: the betas its DDIM / DPM-Solver share); the
flow-matching families x_t = (1 - s) x0 + s e with s = t / T, T = num_train_timesteps (1000), as
FlowMatchEulerDiscreteScheduler.scale_noise with sigma = s, no shift; the transformer gets timestep t (SD3) or
t / 1000 (FLUX), as their pipelines pass sigma x T. e comes from the toolkit's --noise policy (shared seeded noise
by default).

Cells `t{t}_block{b}`: the IMAGE tokens block b outputs (its forward hook; FLUX: the double-stream
transformer_blocks numbered first, then the single_transformer_blocks; SD3 / FLUX text tokens dropped), row-major on
the patch grid (latent side / patch size; FLUX packs 2 x 2 latent patches), as (C, h, w). The forward stops after
the deepest chosen block. Default segment cells: DiT, PixArt, SD3 the middle third of the blocks at t = 250; FLUX
DiTF's block 28 of 57 (Gan et al. 2025, "Unleashing Diffusion Transformers for Visual Correspondence") at t = 260,
both scaled to the model's depth and T.

`--tokens modulated` (the AdaLN modulation DiTF gives its features, Gan et al. 2025): instead of block b's output
residual stream, the AdaLN-modulated tokens it computes first, norm1(x) x (1 + scale) + shift with the block's
conditioning (timestep, class / pooled prompt): the image tokens its attention reads (DiT, PixArt: attn1's input,
PixArt's scale_shift_table applied in the block; SD3, FLUX: attn's hidden_states, the FLUX single-stream blocks'
text tokens dropped). Same cells, same shapes; the identity records `tokens` only for `modulated`, so the default's
cache keys are unchanged.

`--model-dtype float32|bfloat16|float16`: the dtype the transformer and the text encoders compute in (the VAE stays
float32); features reach the toolkit as float32 on the CPU. `--offload model|sequential`: accelerate's CPU offload
(probe.backbones.latent_diffusion.offloaded), for a model larger than the GPU; same numbers, same identity.
Extraction batches images (`batch_size`: about 16k latent positions per forward, as the pixel UNets' 16k pixels),
the prompt / class encoded once and expanded over the batch. The identity holds the class, the digest of every file
read, the image size, the dtype, the noise policy and seed, and the prompt / class label / guidance.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from probe.backbones.base import Backbone, Cell, loaded, refuse_options, run_until, select_layers, select_steps
from probe.backbones.diffusers_common import load_scheduler, require_diffusers
from probe.backbones.folders import DTYPES, file_stats, files_digest, read_config
from probe.backbones.latent_diffusion import (
    LatentCache,
    clip_embeds,
    clip_pooled,
    component,
    denoiser_class,
    latent_batch_size,
    load_component,
    offloaded,
    pipeline_index,
    t5_embeds,
    tokenizer_files,
    vae_latents,
    vae_scale,
)
from probe.backbones.noise import NoisePolicy, forward_noise, scaled_steps
from probe.backbones.spec import DITF_BLOCK, DITF_DEPTH, DITF_STEP, GRID_STEPS, MIDDLE_STEP, TOKENS
from probe.errors import ProbeError

FLUX_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale, given to models with a guidance embedding


def run_until_hooked(modules: dict[int, torch.nn.Module], select, forward, *,
                     inputs: bool = False) -> dict[int, torch.Tensor]:
    """{key: select(module output)} for each module during `forward()`, stopped after the deepest one; with `inputs`,
    {key: select(its positional args, its keyword args)} as it is called, stopped before the deepest one runs."""
    captured: dict[int, torch.Tensor] = {}
    if inputs:
        handles = [module.register_forward_pre_hook(
            lambda m, args, kwargs, k=k: captured.__setitem__(k, select(args, kwargs)), with_kwargs=True)
            for k, module in modules.items()]
    else:
        handles = [module.register_forward_hook(lambda m, args, out, k=k: captured.__setitem__(k, select(out)))
                   for k, module in modules.items()]
    try:
        run_until(modules[max(modules)], inputs, forward)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def middle_third(depth: int) -> list[int]:
    return list(range(depth // 3, depth - depth // 3)) or [depth // 2]


class DiffusionTransformerBackbone(Backbone):
    """Image tokens of a diffusers diffusion transformer's blocks at steps t. Subclasses set the family's class,
    its text parts, its noise rule and its forward."""

    layer_title = "transformer block"
    normalisation = "x / 255 * 2 - 1, then the VAE encoder's mean with the pipeline's shift and scaling"
    class_name: ClassVar[str]
    pipeline: ClassVar[str]  # for messages
    text_parts: ClassVar[tuple[tuple[str, str], ...]] = ()  # (text_encoder*, tokenizer*) folders read
    flow: ClassVar[bool] = False
    packed: ClassVar[bool] = False  # FLUX: 2 x 2 latent patches packed into one token before the transformer
    attention: ClassVar[str] = "attn1"  # a block's (self- or joint) attention, which reads its modulated tokens

    def __init__(self, *, transformer, vae, scheduler_config: dict, scheduler, files: list[Path], image_size: int,
                 noise: NoisePolicy, dtype: str, device: str, condition: dict, describe: dict,
                 tokens: str = TOKENS[0]):
        self.transformer, self.vae, self.scheduler = transformer, vae, scheduler
        self.scheduler_config = scheduler_config
        self.image_size, self.noise, self.dtype, self.tokens = image_size, noise, dtype, tokens
        self.device = torch.device(device)
        self.condition, self.describe = condition, describe
        self.digest = files_digest(files)
        self.steps_total = int(scheduler_config.get("num_train_timesteps", 1000))
        self.modules = self.block_modules(transformer)
        self.all_layers = [f"block{b}" for b in range(len(self.modules))]
        patch = 2 if self.packed else int(transformer.config.patch_size)
        self.grid = image_size // vae_scale(vae) // patch
        self.latents = LatentCache()
        self.blocks: list[int] = []
        self.cells: list[Cell] = []

    # --- what the families define
    @staticmethod
    def block_modules(transformer) -> list[torch.nn.Module]:
        return list(transformer.transformer_blocks)

    @staticmethod
    def image_tokens(output) -> torch.Tensor:
        """A block's image tokens from its output: DiT / PixArt blocks return them; SD3 / FLUX blocks return
        (text tokens, image tokens)."""
        return output[1] if isinstance(output, tuple) else output

    def modulated_tokens(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """The tokens a block's attention is called with: its AdaLN-modulated image tokens."""
        return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    @classmethod
    def encode_condition(cls, folder: Path, spec, dtype: torch.dtype, config) -> tuple[dict, dict]:
        """(tensors the forward takes, what the identity records) for the prompt / class label."""
        raise NotImplementedError

    def forward(self, x_t: torch.Tensor, step: int) -> None:
        raise NotImplementedError

    @classmethod
    def texts(cls, folder: Path) -> tuple[tuple[str, str], ...]:
        """The (text encoder, tokenizer) folders this pipeline folder's prompt goes through."""
        return cls.text_parts

    # --- shared
    @classmethod
    def build(cls, spec, purpose: str, native_size: int | None) -> DiffusionTransformerBackbone:
        layout = (f"a {cls.pipeline} pipeline folder as diffusers saves it (transformer/, vae/, scheduler/"
                  + "".join(f", {e}/, {t}/" for e, t in cls.text_parts) + ") or its hub name")
        refuse_options(spec, ("--model-flags", "--input-activations"),
                       "reads its model from the folder's configs and records block outputs")
        noise = forward_noise(spec)
        dtype = spec.model_dtype or "float32"
        if dtype not in DTYPES:
            raise ProbeError(f"--model-dtype {dtype!r}: use {', '.join(DTYPES)}")
        if spec.checkpoint is None:
            raise ProbeError(f"--backbone {spec.kind} needs --checkpoint: {layout}")
        folder = Path(spec.checkpoint)
        denoiser_class(folder, "transformer", spec.kind, layout)
        fix = f"--backbone {spec.kind} takes {layout}"
        parts = {"transformer": component(folder, "transformer", "diffusion_pytorch_model", fix),
                 "vae": component(folder, "vae", "diffusion_pytorch_model", fix),
                 "scheduler": [folder / "scheduler" / "scheduler_config.json"]}
        scheduler_config = read_config(parts["scheduler"][0], fix)
        parts["text"] = [f for encoder, tokenizer in cls.texts(folder)
                         for f in (*component(folder, encoder, "model", fix),
                                   *tokenizer_files(folder / tokenizer, fix))]
        index = folder / "model_index.json"
        files = [*([index] if index.is_file() else []), *(f for files in parts.values() for f in files)]
        require_diffusers(spec.kind)
        import diffusers

        model_class = getattr(diffusers, cls.class_name)
        transformer, vae, scheduler = loaded(
            parts["transformer"][1], [spec.kind, file_stats(files), dtype, spec.device, spec.offload],
            lambda: (*offloaded([load_component(model_class, folder / "transformer", DTYPES[dtype], spec.device,
                                                spec.offload),
                                 load_component(diffusers.AutoencoderKL, folder / "vae", torch.float32, spec.device,
                                                spec.offload)], spec.offload, spec.device),
                     None if cls.flow else load_scheduler(parts["scheduler"][0])))
        condition, describe = loaded(
            parts["transformer"][1], ["condition", spec.kind, spec.prompt, getattr(spec, "class_label", None),
                                      file_stats(parts["text"]), dtype, spec.device],
            lambda: cls.encode_condition(folder, spec, DTYPES[dtype], transformer.config))
        step = vae_scale(vae) * (2 if cls.packed else int(transformer.config.patch_size))
        size = spec.image_size or cls.native_size(transformer.config, vae_scale(vae))
        if size % step or size < step:
            what = f"--image-size {size}" if spec.image_size else f"{folder}: the model's image size {size}"
            raise ProbeError(f"{what} is not a multiple of {step} (VAE scale x patch size); give e.g. "
                             f"{max(step, round(size / step) * step)}")
        if vae.config.latent_channels * (4 if cls.packed else 1) != transformer.config.in_channels:
            raise ProbeError(f"{folder}: the VAE gives {vae.config.latent_channels} latent channels, the transformer "
                             f"takes {transformer.config.in_channels}; the folder mixes two pipelines")
        backbone = cls(transformer=transformer, vae=vae, scheduler_config=scheduler_config, scheduler=scheduler,
                       files=files, image_size=size, noise=noise, dtype=dtype, device=spec.device,
                       condition=condition, describe=describe, tokens=spec.tokens)
        backbone.choose_cells(spec, purpose)
        return backbone

    @staticmethod
    def native_size(config, scale: int) -> int:
        size = config.sample_size
        if isinstance(size, (list, tuple)):
            size = size[0]
        return int(size) * scale

    def batch_size(self, image_side: int) -> int:
        return latent_batch_size(image_side // vae_scale(self.vae))

    def default_cells(self, purpose: str) -> tuple[list[int], list[int]]:
        depth = len(self.modules)
        blocks, step = middle_third(depth), scaled_steps((MIDDLE_STEP,), self.steps_total)
        spread = sorted({round((depth - 1) * f) for f in (0.25, 0.5, 0.75, 1)})
        return {"segment": (blocks, step), "features": (blocks, step), "kmeans": (spread, step),
                "grid": (list(range(depth)), scaled_steps(GRID_STEPS, self.steps_total))}[purpose]

    def choose_cells(self, spec, purpose: str) -> None:
        blocks, steps = self.default_cells(purpose)
        layers = select_layers(spec.layers, self.all_layers, [f"block{b}" for b in blocks])
        self.blocks = [self.all_layers.index(layer) for layer in layers]
        self.cells = [Cell(layer, t) for t in select_steps(spec.steps, self.steps_total, steps) for layer in layers]

    @property
    def identity(self) -> dict:
        return {"backbone": self.kind, "version": self.version, "class": self.class_name, "checkpoint": self.digest,
                "image_size": self.image_size, "dtype": self.dtype, "noise": str(self.noise), "seed": self.noise.seed,
                **self.describe, **({} if self.tokens == TOKENS[0] else {"tokens": self.tokens})}

    def passes_per_image(self, step: int | None) -> int:
        """Transformer passes one image costs at a step: the noise draws (K for mean-of-K; forward_noise refuses DDIM
        inversion)."""
        return self.noise.draws

    def release(self) -> None:
        self.modules, self.condition = [], {}
        super().release()

    def x_t(self, x0: torch.Tensor, noise: torch.Tensor, step: int) -> torch.Tensor:
        noise = noise.to(x0.device, x0.dtype)
        if self.flow:  # FlowMatchEulerDiscreteScheduler.scale_noise with sigma = t / T (no shift)
            s = step / self.steps_total
            return (1 - s) * x0 + s * noise
        timesteps = torch.full((len(x0),), step, dtype=torch.long, device=x0.device)
        return self.scheduler.add_noise(x0, noise, timesteps)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.latents.get(images, lambda x: vae_latents(self.vae, x))

    def features(self, images: torch.Tensor, stems: list[str], step: int | None) -> dict[str, torch.Tensor]:
        if images.shape[-1] != self.image_size:
            raise ProbeError(f"images of {tuple(images.shape[-2:])} given to a {self.kind} backbone of input size "
                             f"{self.image_size}: load them at that size (probe.data.layout does)")
        x0 = self.encode(images.to(self.device, torch.float32))
        sums: dict[int, torch.Tensor] = {}
        draws = self.noise.noises(stems, tuple(x0.shape[1:]))
        for noise in draws:
            x_t = self.x_t(x0, noise, step)
            if self.tokens == TOKENS[0]:
                modules = {b: self.modules[b] for b in self.blocks}
                captured = run_until_hooked(modules, self.image_tokens, lambda: self.forward(x_t, step))
            else:
                modules = {b: getattr(self.modules[b], self.attention) for b in self.blocks}
                captured = run_until_hooked(modules, self.modulated_tokens, lambda: self.forward(x_t, step),
                                            inputs=True)
            for b, tokens in captured.items():
                sums[b] = tokens.float() if b not in sums else sums[b] + tokens.float()
        maps = {}
        for b in self.blocks:
            tokens = sums[b] / len(draws)
            if tokens.shape[1] != self.grid ** 2:
                raise ProbeError(f"{self.class_name}: block {b} gave {tokens.shape[1]} image tokens, not "
                                 f"{self.grid}x{self.grid}")
            maps[Cell(f"block{b}", step).name] = tokens.transpose(1, 2).reshape(
                len(tokens), -1, self.grid, self.grid).cpu().contiguous()
        return maps

    @property
    def model_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def refuse_class_label(spec, kind: str) -> None:
    if getattr(spec, "class_label", None) is not None:
        raise ProbeError(f"--class-label: the {kind} backbone is text-conditioned (use --prompt); drop --class-label")


class DiTBackbone(DiffusionTransformerBackbone):
    """`--backbone dit`: DiTTransformer2DModel, class-conditional, as DiTPipeline calls it."""

    kind = "dit"
    class_name = "DiTTransformer2DModel"
    pipeline = "DiT"

    @classmethod
    def encode_condition(cls, folder, spec, dtype, config) -> tuple[dict, dict]:
        if spec.prompt is not None:
            raise ProbeError("--prompt: the dit backbone is class-conditional (use --class-label N); drop --prompt")
        classes = int(config.num_embeds_ada_norm)
        label = classes if spec.class_label is None else spec.class_label
        if not 0 <= label <= classes:
            raise ProbeError(f"--class-label {label} is out of range: this model has classes 0..{classes - 1} and "
                             f"the null class {classes} (the default)")
        return {"class_labels": torch.tensor([label], dtype=torch.long)}, {"class_label": label}

    def forward(self, x_t: torch.Tensor, step: int) -> None:
        b = len(x_t)
        self.transformer(x_t.to(self.model_dtype), timestep=torch.full((b,), step, dtype=torch.long,
                                                                         device=self.device),
                         class_labels=self.condition["class_labels"].to(self.device).expand(b), return_dict=False)


class PixArtBackbone(DiffusionTransformerBackbone):
    """`--backbone pixart`: PixArtTransformer2DModel (PixArt-alpha, PixArt-Sigma) with a T5 prompt, as
    PixArtAlphaPipeline / PixArtSigmaPipeline call it (clean_caption off)."""

    kind = "pixart"
    class_name = "PixArtTransformer2DModel"
    pipeline = "PixArt-alpha / PixArt-Sigma"
    text_parts = (("text_encoder", "tokenizer"),)

    @classmethod
    def encode_condition(cls, folder, spec, dtype, config) -> tuple[dict, dict]:
        refuse_class_label(spec, cls.kind)
        prompt = spec.prompt or ""
        sigma = pipeline_index(folder).get("_class_name") == "PixArtSigmaPipeline"
        length = 300 if sigma else 120  # the pipelines' max_sequence_length
        text, mask = t5_embeds(folder, "text_encoder", "tokenizer", prompt, length, dtype, spec.device, masked=True,
                               offload=spec.offload)
        return {"text": text.to(dtype), "mask": mask}, {"prompt": prompt, "max_sequence_length": length}

    def forward(self, x_t: torch.Tensor, step: int) -> None:
        b, dtype = len(x_t), self.model_dtype
        added = {"resolution": None, "aspect_ratio": None}
        if self.transformer.use_additional_conditions:  # as the pipelines: the image's height and width
            added = {"resolution": torch.tensor([[self.image_size] * 2] * b, dtype=dtype, device=self.device),
                     "aspect_ratio": torch.ones(b, 1, dtype=dtype, device=self.device)}
        self.transformer(x_t.to(dtype), encoder_hidden_states=self.condition["text"].expand(b, -1, -1),
                         encoder_attention_mask=self.condition["mask"].expand(b, -1),
                         timestep=torch.full((b,), step, dtype=torch.long, device=self.device),
                         added_cond_kwargs=added, return_dict=False)


class SD3Backbone(DiffusionTransformerBackbone):
    """`--backbone sd3`: SD3Transformer2DModel (SD3, SD3.5) with the prompt encoded as StableDiffusion3Pipeline
    does: both CLIPs' penultimate hidden states concatenated and zero-padded to T5's width, then T5's 256 tokens
    (zeros when the pipeline has no text_encoder_3); pooled = both CLIPs' projected embeddings concatenated."""

    kind = "sd3"
    class_name = "SD3Transformer2DModel"
    pipeline = "Stable Diffusion 3 / 3.5"
    text_parts = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3"))
    flow = True
    attention = "attn"

    @classmethod
    def texts(cls, folder: Path) -> tuple[tuple[str, str], ...]:
        """Without text_encoder_3/ (the pipeline loaded with text_encoder_3=None) T5's tokens are zeros."""
        return cls.text_parts if (folder / "text_encoder_3").exists() else cls.text_parts[:2]

    @classmethod
    def encode_condition(cls, folder, spec, dtype, config) -> tuple[dict, dict]:
        refuse_class_label(spec, cls.kind)
        prompt, device, offload = spec.prompt or "", spec.device, spec.offload
        first, pooled_1 = clip_embeds(folder, "text_encoder", "tokenizer", "CLIPTextModelWithProjection", prompt,
                                      dtype, device, offload)
        second, pooled_2 = clip_embeds(folder, "text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", prompt,
                                       dtype, device, offload)
        clip = torch.cat([first, second], dim=-1)
        if (folder / "text_encoder_3").exists():
            t5 = t5_embeds(folder, "text_encoder_3", "tokenizer_3", prompt, 256, dtype, device, masked=False,
                           offload=offload)[0]
        else:
            t5 = torch.zeros(1, 256, config.joint_attention_dim, dtype=dtype, device=device)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return ({"text": torch.cat([clip, t5], dim=-2).to(dtype),
                 "pooled": torch.cat([pooled_1, pooled_2], dim=-1).to(dtype)}, {"prompt": prompt})

    def forward(self, x_t: torch.Tensor, step: int) -> None:
        b, dtype = len(x_t), self.model_dtype
        self.transformer(x_t.to(dtype), encoder_hidden_states=self.condition["text"].expand(b, -1, -1),
                         pooled_projections=self.condition["pooled"].expand(b, -1),
                         timestep=torch.full((b,), float(step), device=self.device), return_dict=False)

    @staticmethod
    def block_modules(transformer) -> list[torch.nn.Module]:
        return list(transformer.transformer_blocks)


class FluxBackbone(DiffusionTransformerBackbone):
    """`--backbone flux`: FluxTransformer2DModel (FLUX.1 dev / schnell), as FluxPipeline calls it: the latents
    packed 2 x 2 into tokens with their (0, row, column) ids, CLIP's pooled prompt and T5's 512 tokens (text ids 0),
    timestep t / 1000, guidance 3.5 when the model has a guidance embedding."""

    kind = "flux"
    class_name = "FluxTransformer2DModel"
    pipeline = "FLUX.1"
    text_parts = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
    flow = True
    packed = True
    attention = "attn"

    @staticmethod
    def native_size(config, scale: int) -> int:
        return 128 * scale  # FluxPipeline's default_sample_size (the config has no sample_size)

    @staticmethod
    def block_modules(transformer) -> list[torch.nn.Module]:
        return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]

    def modulated_tokens(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """A single-stream block's attention reads the text tokens, then the image tokens: the last grid^2."""
        return super().modulated_tokens(args, kwargs)[:, -self.grid ** 2:]

    def default_cells(self, purpose: str) -> tuple[list[int], list[int]]:
        if purpose not in ("segment", "features"):
            return super().default_cells(purpose)
        depth = len(self.modules)
        return [round(DITF_BLOCK * (depth - 1) / (DITF_DEPTH - 1))], scaled_steps((DITF_STEP,), self.steps_total)

    @classmethod
    def encode_condition(cls, folder, spec, dtype, config) -> tuple[dict, dict]:
        refuse_class_label(spec, cls.kind)
        prompt = spec.prompt or ""
        pooled = clip_pooled(folder, prompt, dtype, spec.device, spec.offload)
        text = t5_embeds(folder, "text_encoder_2", "tokenizer_2", prompt, 512, dtype, spec.device, masked=False,
                         offload=spec.offload)[0]
        guidance = FLUX_GUIDANCE if config.guidance_embeds else None
        return ({"text": text.to(dtype), "pooled": pooled.to(dtype), "guidance": guidance},
                {"prompt": prompt, "guidance": guidance})

    def forward(self, x_t: torch.Tensor, step: int) -> None:
        b, c, h, w = x_t.shape
        dtype = self.model_dtype
        packed = x_t.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        ids = torch.zeros(h // 2, w // 2, 3)
        ids[..., 1] += torch.arange(h // 2)[:, None]
        ids[..., 2] += torch.arange(w // 2)[None, :]
        text = self.condition["text"]
        guidance = self.condition["guidance"]
        self.transformer(packed.to(dtype), encoder_hidden_states=text.expand(b, -1, -1),
                         pooled_projections=self.condition["pooled"].expand(b, -1),
                         timestep=torch.full((b,), step / 1000, dtype=dtype, device=self.device),
                         img_ids=ids.reshape(-1, 3).to(self.device, dtype),
                         txt_ids=torch.zeros(text.shape[1], 3, dtype=dtype, device=self.device),
                         guidance=None if guidance is None else torch.full((b,), guidance, dtype=torch.float32,
                                                                           device=self.device),
                         return_dict=False)
