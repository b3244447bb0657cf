"""The members' network: one member as torch's own modules (`new_member`), all members as one stacked network
(`StackedMLP`, of StackedLinear and StackedBatchNorm layers), their seeded initialisation and the precision of the
first layer's products."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from probe.ensemble.settings import PRECISIONS, check_precision

INIT_STD = 0.02
PRODUCT_DTYPES = {name: getattr(torch, name) for name in PRECISIONS}  # the first layer's products, by precision


def resolve_precision(precision: str, device: str, batched: bool = True) -> str:
    """"auto" -> bfloat16 where the device multiplies bfloat16 natively (CPUs with AVX512-BF16 or AMX, CUDA
    GPUs that support it), float32 elsewhere; "float32" and "bfloat16" are returned as they are. The sequential
    ensemble (`batched` False), the reference with torch's own modules, is always float32."""
    check_precision(precision, batched)
    if not batched:
        return "float32"
    if precision in PRECISIONS:
        return precision
    if str(device).startswith("cuda"):
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        native = bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return "bfloat16" if native else "float32"


def hidden_sizes(num_classes: int) -> tuple[int, int]:
    """DatasetGAN's hidden widths: (128, 32) below 30 classes, (256, 128) from 30 on."""
    return (128, 32) if num_classes < 30 else (256, 128)


def member_generators(seed: int, member: int) -> tuple[torch.Generator, np.random.Generator]:
    """Member `member`'s own generators, both seeded from (seed, member): (weight init, shuffles)."""
    sequence = np.random.SeedSequence([seed, member])
    init = torch.Generator().manual_seed(int(sequence.generate_state(1)[0]))
    return init, np.random.default_rng(sequence)


def new_member(dim: int, num_classes: int, generator: torch.Generator) -> nn.Sequential:
    """One member MLP; Linear weights normal(0, 0.02) from `generator`, biases 0, BatchNorm default."""
    h1, h2 = hidden_sizes(num_classes)
    linears = [nn.utils.skip_init(nn.Linear, a, b) for a, b in ((dim, h1), (h1, h2), (h2, num_classes))]
    for linear in linears:
        with torch.no_grad():
            linear.weight.normal_(0.0, INIT_STD, generator=generator)
            linear.bias.zero_()
    return nn.Sequential(
        linears[0], nn.ReLU(), nn.BatchNorm1d(h1), linears[1], nn.ReLU(), nn.BatchNorm1d(h2), linears[2]
    )


class StackedLinear(nn.Module):
    """M independent Linear layers: weight (M, in, out), bias (M, out); activations are (B, M, features).

    Member first, so that training, where each member has its own batch, multiplies (M, B, in) by the weight as
    it lies (one batched product, and Adam's pass over contiguous memory). A (B, in) input shared by all members
    (prediction) is multiplied once by the weight laid out as (in, M * out) (`shared_weight`). With `products`
    bfloat16 these products (and so the weight gradient) run on bfloat16 copies of input and weight, accumulating
    in float32; the parameters stay float32."""

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(members, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(members, out_features))
        self.products = torch.float32

    def shared_weight(self) -> torch.Tensor:
        """The weight as (in, M * out): column block m is member m's weight, for an input shared by all members."""
        members, fan_in, fan_out = self.weight.shape
        return self.weight.transpose(0, 1).reshape(fan_in, members * fan_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in) shared by all members, or (B, M, in) one per member -> (B, M, out)."""
        members, _, fan_out = self.weight.shape
        if x.ndim == 2:
            flat = x.to(self.products) @ self.shared_weight().to(self.products)
            flat = flat + self.bias.view(-1)  # float32 bias: also the cast back from bfloat16, in one pass
            return flat.view(len(x), members, fan_out)
        products = torch.bmm(x.transpose(0, 1).to(self.products), self.weight.to(self.products))
        return products.transpose(0, 1) + self.bias


class StackedBatchNorm(nn.Module):
    """M independent nn.BatchNorm1d layers over (B, M, F): one torch batch norm over the M x F columns, so
    the statistics, the running-statistics updates and the gradients are torch's own."""

    def __init__(self, members: int, features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(members, features))
        self.bias = nn.Parameter(torch.zeros(members, features))
        self.register_buffer("running_mean", torch.zeros(members, features))
        self.register_buffer("running_var", torch.ones(members, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = F.batch_norm(x.reshape(len(x), -1), self.running_mean.view(-1), self.running_var.view(-1),
                               self.weight.view(-1), self.bias.view(-1), self.training, self.momentum, self.eps)
        return columns.view(x.shape)


class StackedMLP(nn.Sequential):
    """M member MLPs as one network; its state_dict keys match a member's nn.Sequential, and entry [m] of each of
    its tensors is member m's (a Linear weight transposed: (in, out)).

    `precision` bfloat16 computes the first layer's products (nearly all of the network's arithmetic) in
    bfloat16; everything else, and every parameter, stays float32."""

    def __init__(self, members: int, dim: int, num_classes: int, precision: str = "float32") -> None:
        h1, h2 = hidden_sizes(num_classes)
        super().__init__(
            StackedLinear(members, dim, h1), nn.ReLU(), StackedBatchNorm(members, h1),
            StackedLinear(members, h1, h2), nn.ReLU(), StackedBatchNorm(members, h2),
            StackedLinear(members, h2, num_classes),
        )
        self[0].products = PRODUCT_DTYPES[precision]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim) features -> (M, B, classes) logits of every member."""
        return super().forward(x).transpose(0, 1)

    def after_first_products(self, products: torch.Tensor) -> torch.Tensor:
        """(B, M * hidden) float32 products of the first layer (its bias not yet added) -> (M, B, classes) logits,
        as `forward` computes them from the features."""
        first = self[0]
        h = products.view(len(products), *first.bias.shape) + first.bias
        for layer in list(self)[1:]:
            h = layer(h)
        return h.transpose(0, 1)

    @classmethod
    def from_members(cls, mlps: list[nn.Sequential], precision: str = "float32") -> StackedMLP:
        """Stack member MLPs built by `new_member` (parameters and running statistics)."""
        first = mlps[0]
        stacked = cls(len(mlps), first[0].in_features, first[-1].out_features, precision).to(first[0].weight.device)
        states = [mlp.state_dict() for mlp in mlps]
        with torch.no_grad():
            for key, target in stacked.state_dict().items():
                value = torch.stack([state[key] for state in states])
                target.copy_(value.transpose(1, 2) if value.ndim == 3 else value)  # Linear (out, in) -> (in, out)
        return stacked
