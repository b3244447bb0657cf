"""The ADM UNet of guided-diffusion (Dhariwal & Nichol), written to match its state-dict keys and forward pass.

Module names mirror guided-diffusion's so that its checkpoints load strictly:
time_embed, label_emb, input_blocks, middle_block, output_blocks, out; inside a residual block
in_layers, emb_layers, out_layers, skip_connection; inside an attention block norm, qkv, proj_out.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from probe.models.flags import NUM_CLASSES, ModelFlags


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) computed in float32 whatever the input precision."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding: [cos(t * f), sin(t * f)] with frequencies f = max_period^(-i / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class Upsample(nn.Module):
    """Nearest-neighbour x2, then an optional 3x3 convolution (key: conv)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """A stride-2 3x3 convolution, or 2x2 average pooling without one (key: op)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding, optionally resampling (up or down) inside."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int,
                 use_scale_shift_norm: bool, up: bool = False, down: bool = False):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.h_upd(self.in_layers[:-1](x))
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention; `new_order` splits q, k, v before heads (QKVAttention), else after (legacy)."""

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, new_order: bool):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.new_order = new_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        ch = c // self.num_heads
        if self.new_order:
            q, k, v = (part.reshape(b * self.num_heads, ch, length) for part in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * self.num_heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class StepSequential(nn.Sequential):
    """A sequence of layers where residual blocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """guided-diffusion's UNetModel for 2-D images, built from ModelFlags."""

    def __init__(self, flags: ModelFlags):
        super().__init__()
        self.flags = flags
        nc = flags.num_channels
        emb_dim = nc * 4
        mult = flags.channel_multipliers
        attention_ds = set(flags.attention_downsamples)
        heads_up = flags.num_heads if flags.num_heads_upsample == -1 else flags.num_heads_upsample

        def res(ch_in: int, ch_out: int, **updown) -> ResBlock:
            return ResBlock(ch_in, emb_dim, flags.dropout, ch_out, flags.use_scale_shift_norm, **updown)

        def attention(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, flags.num_head_channels, flags.use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(nc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if flags.class_cond:
            self.label_emb = nn.Embedding(NUM_CLASSES, emb_dim)

        ch = int(mult[0] * nc)
        self.input_blocks = nn.ModuleList([StepSequential(nn.Conv2d(3, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, m in enumerate(mult):
            for _ in range(flags.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(m * nc))]
                ch = int(m * nc)
                if ds in attention_ds:
                    layers.append(attention(ch, flags.num_heads))
                self.input_blocks.append(StepSequential(*layers))
                skip_channels.append(ch)
            if level != len(mult) - 1:
                down = res(ch, ch, down=True) if flags.resblock_updown else Downsample(ch, True, ch)
                self.input_blocks.append(StepSequential(down))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = StepSequential(res(ch, ch), attention(ch, flags.num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(flags.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(nc * m))]
                ch = int(nc * m)
                if ds in attention_ds:
                    layers.append(attention(ch, heads_up))
                if level and i == flags.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if flags.resblock_updown else Upsample(ch, True, ch))
                    ds //= 2
                self.output_blocks.append(StepSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(int(mult[0] * nc), flags.out_channels, 3, padding=1))
        self.dtype = torch.float32

    def convert_to_fp16(self) -> None:
        """Half-precision convolutions in the input, middle and output blocks (guided-diffusion's use_fp16)."""
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            for module in blocks.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                    module.half()
        self.dtype = torch.float16

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None,
                last_block: int | None = None) -> torch.Tensor:
        """The predicted noise (and variance channels). With `last_block`, the decoder stops after
        output_blocks[last_block] and returns that block's output: feature extraction needs nothing beyond it."""
        emb = self.time_embed(timestep_embedding(timesteps, self.flags.num_channels))
        if self.flags.class_cond:
            if y is None:
                raise ValueError("a class-conditional model needs class labels y")
            emb = emb + self.label_emb(y)
        skips = []
        h = x.type(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for index, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if index == last_block:
                return h
        return self.out(h.type(x.dtype))
