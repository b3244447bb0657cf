"""The MAE ViT of facebookresearch/mae (the paper's MAE baseline), written to match its state-dict keys.

Module names mirror MaskedAutoencoderViT (built from timm's PatchEmbed and Block) so that the authors'
checkpoints load strictly: cls_token, pos_embed, patch_embed.proj, blocks.{i}.norm1/attn.qkv/attn.proj/
norm2/mlp.fc1/mlp.fc2, norm; and for the decoder decoder_embed, mask_token, decoder_pos_embed,
decoder_blocks.*, decoder_norm, decoder_pred. Weights are drawn from an explicit torch.Generator only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from probe.errors import ProbeError
from probe.models.checkpoint import checkpoint_family, read_checkpoint, resolve_device, strict_problems

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MAEConfig", "MaskedAutoencoder", "ViTEncoder", "imagenet_normalize",
           "load_mae", "read_checkpoint", "sincos_pos_embed"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LN_EPS = 1e-6
# Keys of a MaskedAutoencoderViT state dict that the encoder does not use.
DECODER_KEY = re.compile(r"^(decoder_|mask_token$)")


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) images to the baselines' input: (x / 255 - mean) / std, float32."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


# ---------------------------------------------------------------------------------------------------------
# Configuration


def _check_heads(num_heads: int, width: int, what: str) -> None:
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or width % num_heads:
        divisors = ", ".join(str(d) for d in range(1, min(width, 64) + 1) if width % d == 0)
        raise ProbeError(f"{what} {num_heads!r} does not divide the width {width}: pass a number of heads that "
                         f"divides it ({divisors}); the paper's ViT-L (width 1024) uses 16")


def default_heads(width: int) -> int:
    """The head count when a checkpoint does not say: heads of 64 channels, as in ViT-B/L/H."""
    return max(1, width // 64)


@dataclass
class MAEConfig:
    """A MaskedAutoencoderViT architecture; the defaults are the paper's ViT-L/8 at 256 pixels."""

    img_size: int = 256
    patch_size: int = 8
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    in_chans: int = 3
    decoder_embed_dim: int | None = 512
    decoder_depth: int | None = 8
    decoder_num_heads: int | None = 16

    def __post_init__(self):
        if self.patch_size < 1 or self.img_size % self.patch_size:
            raise ProbeError(f"MAE img_size {self.img_size} is not a multiple of patch_size {self.patch_size}: "
                             "choose sizes where the patches tile the image")
        _check_heads(self.num_heads, self.embed_dim, "num_heads")
        if self.decoder_embed_dim is not None:
            _check_heads(self.decoder_num_heads, self.decoder_embed_dim, "decoder_num_heads")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch_size

    @property
    def has_decoder(self) -> bool:
        return bool(self.decoder_embed_dim and self.decoder_depth)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], num_heads: int | None = None,
                        decoder_num_heads: int | None = None, source: str = "the checkpoint") -> MAEConfig:
        """Sizes read from tensor shapes; heads cannot be read, so they default to width // 64 (at least 1)."""
        for key in ("patch_embed.proj.weight", "pos_embed"):
            if key not in state:
                family = checkpoint_family(state)
                looks = f"it looks like {family}" if family else f"its keys start {', '.join(sorted(state)[:4])}"
                raise ProbeError(f"{source} is not an MAE checkpoint (no {key}; {looks}): give the MAE "
                                 "checkpoint saved as {'model': MaskedAutoencoderViT state dict}")
        proj = state["patch_embed.proj.weight"]
        pos = state["pos_embed"]
        if proj.dim() != 4 or proj.shape[2] != proj.shape[3] or pos.dim() != 3:
            raise ProbeError(f"{source} has patch_embed.proj.weight {tuple(proj.shape)} and pos_embed {tuple(pos.shape)}, "
                             "not a square-patch ViT: give an MAE checkpoint")
        width, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[2]
        grid = math.isqrt(pos.shape[1] - 1)
        if grid * grid != pos.shape[1] - 1:
            raise ProbeError(f"{source}: pos_embed has {pos.shape[1]} tokens, not 1 + a square number of patches: "
                             "only square MAE images are supported")
        depth = _count(state, "blocks")
        fc1 = state.get("blocks.0.mlp.fc1.weight")
        mlp_ratio = fc1.shape[0] / width if fc1 is not None else 4.0
        dec = state.get("decoder_embed.weight")
        decoder_width = dec.shape[0] if dec is not None else None
        if num_heads is None:
            num_heads = default_heads(width)
        if decoder_width is not None and decoder_num_heads is None:  # unused for features: never fail on it
            decoder_num_heads = default_heads(decoder_width) if decoder_width % default_heads(decoder_width) == 0 else 1
        return cls(img_size=grid * patch, patch_size=patch, embed_dim=width, depth=depth, num_heads=num_heads,
                   mlp_ratio=mlp_ratio, in_chans=in_chans, decoder_embed_dim=decoder_width,
                   decoder_depth=_count(state, "decoder_blocks") if decoder_width is not None else None,
                   decoder_num_heads=decoder_num_heads if decoder_width is not None else None)


def _count(state: dict, prefix: str) -> int:
    """1 + the largest i of `prefix.i.` keys (0 without any)."""
    found = [int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))]
    return max(found) + 1 if found else 0


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2D sin-cos embedding (1, 1 + grid^2, dim): a zero cls row, then raster-order patches.

    The first half of the channels encodes the column, the second half the row; each half is
    [sin(p * w), cos(p * w)] with w = 10000^(-k / (dim / 4)).
    """
    if dim % 4:
        raise ProbeError(f"MAE embed width {dim} is not a multiple of 4, which the sin-cos position embedding needs: "
                         "choose a width divisible by 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    halves = []
    for coord in (cols.reshape(-1), rows.reshape(-1)):
        angle = coord[:, None] * omega[None]
        halves += [angle.sin(), angle.cos()]
    table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.cat(halves, dim=1)], dim=0)
    return table.float().unsqueeze(0)


# ---------------------------------------------------------------------------------------------------------
# Layers (timm's PatchEmbed, Attention, Mlp and Block, by key name)


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided convolution (key: proj), flattened to tokens in raster order."""

    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one qkv projection laid out [q | k | v], heads inside each."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _init_vit_module(module: nn.Module, generator: torch.Generator) -> None:
    """MAE's initialisation: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight, generator=generator)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------------------
# Networks


class ViTEncoder(nn.Module):
    """The MAE encoder: patch embedding + fixed position embedding + cls token, blocks, final LayerNorm.

    Built on the meta device and materialised once, so construction never touches the global RNG:
    with `init` the weights come from `generator` (seed 0 when None), without it they stay unset
    until a load_state_dict.
    """

    def __init__(self, config: MAEConfig, generator: torch.Generator | None = None, init: bool = True):
        super().__init__()
        self.config = config
        with torch.device("meta"):
            self._build()
        self.to_empty(device="cpu")
        if init:
            self.reset_parameters(generator if generator is not None else torch.Generator().manual_seed(0))

    def _build(self) -> None:
        c = self.config
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.grid ** 2 + 1, c.embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(c.embed_dim, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim, eps=LN_EPS)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        c = self.config
        self.pos_embed.copy_(sincos_pos_embed(c.embed_dim, c.grid))
        nn.init.xavier_uniform_(self.patch_embed.proj.weight.view(c.embed_dim, -1), generator=generator)
        bound = 1 / math.sqrt(c.in_chans * c.patch_size ** 2)  # nn.Conv2d's default bias range
        self.patch_embed.proj.bias.uniform_(-bound, bound, generator=generator)
        nn.init.normal_(self.cls_token, std=0.02, generator=generator)
        _init_vit_module(self.blocks, generator)
        _init_vit_module(self.norm, generator)

    def _check_input(self, x: torch.Tensor) -> None:
        c = self.config
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.in_chans, c.img_size, c.img_size):
            raise ProbeError(f"the MAE encoder takes (B, {c.in_chans}, {c.img_size}, {c.img_size}) images, got "
                             f"{tuple(x.shape)}: resize the images to {c.img_size}x{c.img_size}")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with their position embedding (B, L, C), no cls token."""
        self._check_input(x)
        return self.patch_embed(x) + self.pos_embed[:, 1:]

    def with_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm (B, 1 + L, C), cls first (the encoder at mask ratio 0)."""
        x = self.with_cls(self.embed(x))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    @torch.no_grad()
    def forward_blocks(self, x: torch.Tensor, blocks) -> dict[int, torch.Tensor]:
        """Output of each asked block (0-based; negative counts from the end) as (B, C, grid, grid).

        The cls token is dropped and the patch tokens are laid out on the patch grid in raster order,
        as the authors' FeatureExtractorMAE does; blocks after the last asked one are not run.
        """
        depth = len(self.blocks)
        wanted = {}
        for b in blocks:
            if isinstance(b, bool) or not isinstance(b, int) or not -depth <= b < depth:
                raise ProbeError(f"MAE block {b!r} does not exist: the encoder has blocks 0..{depth - 1}")
            wanted[b % depth] = b
        x = self.with_cls(self.embed(x))
        grid, found = self.config.grid, {}
        for i, block in enumerate(self.blocks[: max(wanted, default=-1) + 1]):
            x = block(x)
            if i in wanted:
                found[wanted[i]] = x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, grid, grid).contiguous()
        return {b: found[b] for b in blocks}


class MaskedAutoencoder(ViTEncoder):
    """The full MAE (encoder + light decoder) with MaskedAutoencoderViT's state-dict layout.

    `forward(images, generator)` masks a random `mask_ratio` of the patches per image (noise from the
    generator), encodes the rest, decodes every patch and returns (loss, pred, mask): the mean squared
    error on the masked patches, against per-patch normalised pixels when `norm_pix_loss`.
    """

    def __init__(self, config: MAEConfig, generator: torch.Generator | None = None, mask_ratio: float = 0.75,
                 norm_pix_loss: bool = True, init: bool = True):
        if not config.has_decoder or not config.decoder_num_heads:
            raise ProbeError("the MAE config has no decoder sizes: set decoder_embed_dim, decoder_depth and decoder_num_heads")
        if not 0 <= mask_ratio < 1:
            raise ProbeError(f"mask ratio {mask_ratio} is outside [0, 1): MAE uses 0.75")
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        super().__init__(config, generator, init)

    def _build(self) -> None:
        super()._build()
        c = self.config
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, c.grid ** 2 + 1, c.decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio)
                                            for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=LN_EPS)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_size ** 2 * c.in_chans)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        super().reset_parameters(generator)
        c = self.config
        self.decoder_pos_embed.copy_(sincos_pos_embed(c.decoder_embed_dim, c.grid))
        nn.init.normal_(self.mask_token, std=0.02, generator=generator)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            _init_vit_module(module, generator)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's keys only (what load_mae uses)."""
        return {k: v for k, v in self.state_dict().items() if not DECODER_KEY.match(k)}

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) to (B, L, p * p * C), pixels of a patch ordered row, column, channel (as MAE)."""
        b, ch, _, _ = images.shape
        p, g = self.config.patch_size, self.config.grid
        return images.reshape(b, ch, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, p * p * ch)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        p, g, ch = self.config.patch_size, self.config.grid, self.config.in_chans
        return tokens.reshape(b, g, g, p, p, ch).permute(0, 5, 1, 3, 2, 4).reshape(b, ch, g * p, g * p)

    def forward_encoder(self, images: torch.Tensor, generator: torch.Generator | None, mask_ratio: float):
        """(latent (B, 1 + keep, C), mask (B, L) with 1 = masked, ids_restore (B, L))."""
        x = self.embed(images)
        b, n, c = x.shape
        keep = int(n * (1 - mask_ratio))
        noise = torch.rand(b, n, generator=generator).to(x.device)
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        x = x.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, c))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = mask.gather(1, ids_restore)
        x = self.with_cls(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predicted pixels of every patch (B, L, p * p * C)."""
        x = self.decoder_embed(latent)
        b, _, c = x.shape
        masked = self.mask_token.expand(b, ids_restore.shape[1] + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], masked], dim=1).gather(1, ids_restore[..., None].expand(-1, -1, c))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.patchify(images)
        if self.norm_pix_loss:
            target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        per_patch = (pred - target).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                mask_ratio: float | None = None):
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(images, generator, ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.loss(images, pred, mask), pred, mask


def load_mae(checkpoint: str | Path | dict, num_heads: int | None = None, device: str = "cpu") -> ViTEncoder:
    """The MAE encoder of a checkpoint, loaded strictly, in eval mode.

    Accepts the authors' `{"model": MaskedAutoencoderViT state dict}` (their trainer's extra entries are
    ignored), a bare state dict, or a path to either. Decoder keys and mask_token are expected and unused.
    Heads cannot be read from shapes: `num_heads`, else the count stored by probe's trainer, else width // 64.
    """
    state, source, wrapper = read_checkpoint(checkpoint, "an MAE checkpoint")
    if num_heads is None and isinstance(wrapper.get("probe_config"), dict):
        num_heads = wrapper["probe_config"].get("num_heads")
    config = MAEConfig.from_state_dict(state, num_heads=num_heads, source=source)
    encoder = ViTEncoder(config, init=False)
    used = {k: v for k, v in state.items() if not DECODER_KEY.match(k)}
    problems = strict_problems(encoder.state_dict(), used)
    if problems:
        raise ProbeError(f"{source} does not fit an MAE ViT encoder ({'; '.join(problems)}): give the full "
                         "MAE pre-training checkpoint (MaskedAutoencoderViT), not a fine-tuned or different model")
    encoder.load_state_dict(used)
    return encoder.eval().to(resolve_device(device))
