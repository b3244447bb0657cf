"""One training step of the stacked ensemble written out by hand: forward pass, the members' cross-entropy losses,
backward pass and Adam, in one function that torch.compile turns into a few fused loops around the two large
batched products of the first layer (each member's own batch times its own weight).

The arithmetic is autograd's and torch.optim.Adam's (tests compare the eager step with torch's modules and the
compiled step with the eager one); what changes is how it runs. Torch's eager step with autograd and its fused Adam
reads and writes the first layer's 2.7 million weights, their gradient and Adam's moments in several separate passes
(the bfloat16 copy of the weight, the gradient's cast back to float32, Adam) and launches some 150 small operations;
the compiled step makes one pass over them (Adam, which also writes the bfloat16 copy the next forward pass multiplies)
and a handful of fused loops for the small layers. At the paper's shape (D = 2112, 10 members, batch 64, 2 CPU
threads; `python bench/bench_ensemble_step.py --split`) a step is about 3.2 ms, plus 1.3 ms to gather the ten
members' batches (docs/performance.md, "Each member its own order").
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch

from probe.utils.runtime import Compiled

if TYPE_CHECKING:
    from probe.ensemble.model import StackedMLP

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as the authors use them
ADAM_EPS = 1e-8


def _batch_norm(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor,
                running_var: torch.Tensor, momentum: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode batch norm over the columns of (B, C) `a`, updating the running statistics as torch does
    (unbiased variance); returns (output, normalised input, 1 / std)."""
    mean = a.mean(0)
    var = a.var(0, unbiased=False)
    inv_std = torch.rsqrt(var + eps)
    normalised = (a - mean) * inv_std
    n = a.shape[0]
    running_mean.mul_(1 - momentum).add_(mean * momentum)
    running_var.mul_(1 - momentum).add_(var * (momentum * n / (n - 1)))
    return normalised * weight + bias, normalised, inv_std


def _batch_norm_backward(grad: torch.Tensor, normalised: torch.Tensor, inv_std: torch.Tensor,
                         weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `_batch_norm`'s output -> (input, weight, bias)."""
    grad_bias = grad.sum(0)
    grad_weight = (grad * normalised).sum(0)
    n = grad.shape[0]
    grad_input = (weight * inv_std) * (grad - grad_bias / n - normalised * (grad_weight / n))
    return grad_input, grad_weight, grad_bias


def _adam(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
          exp_avg_sqs: list[torch.Tensor], step_size: torch.Tensor, bias_correction2_sqrt: torch.Tensor) -> None:
    """torch.optim.Adam's update of every parameter, in place, as a few operations over the lists (eagerly, a
    handful of kernel launches for all parameters; compiled, one fused loop per parameter)."""
    grads = [grad.float() for grad in grads]
    torch._foreach_lerp_(exp_avgs, grads, 1 - BETAS[0])
    torch._foreach_mul_(exp_avg_sqs, BETAS[1])
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - BETAS[1])
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denominators, bias_correction2_sqrt)
    torch._foreach_add_(denominators, ADAM_EPS)
    torch._foreach_div_(denominators, step_size)
    torch._foreach_addcdiv_(params, exp_avgs, denominators, value=-1.0)


def _step(x: torch.Tensor, y: torch.Tensor, first_products: torch.Tensor | None, params: list[torch.Tensor],
          buffers: list[torch.Tensor], moments: tuple[list[torch.Tensor], list[torch.Tensor]], step_size: torch.Tensor,
          bias_correction2_sqrt: torch.Tensor, momentum: float, eps: float) -> torch.Tensor:
    """One step of StackedMLP (Linear-ReLU-BN-Linear-ReLU-BN-Linear per member) on (M, B, D) `x`, (M, B) labels
    `y`: member m's own batch is x[m], y[m]. Updates `params` (the model's parameters in its order), `buffers` (the
    batch norms' running statistics), `moments` and `first_products` (a bfloat16 copy of the first layer's (M, D, H1)
    weight, which its products then use; None: they use the float32 weight); returns the members' (M,) mean
    cross-entropy losses."""
    w1, b1, g1, beta1, w2, b2, g2, beta2, w3, b3 = params
    members, dim, h1 = w1.shape
    batch = x.shape[1]
    products = w1 if first_products is None else first_products
    xp = x.to(products.dtype)

    z1 = torch.bmm(xp, products)  # (M, B, H1), in the products' dtype as StackedLinear's
    a1 = torch.relu(z1.transpose(0, 1).reshape(batch, members * h1) + b1.view(-1))  # (B, M * H1) float32
    n1, normalised1, inv_std1 = _batch_norm(a1, g1.view(-1), beta1.view(-1), buffers[0].view(-1),
                                            buffers[1].view(-1), momentum, eps)
    hidden1 = n1.view(batch, members, h1).transpose(0, 1)  # (M, B, H1)
    a2 = torch.relu(torch.baddbmm(b2.unsqueeze(1), hidden1, w2))  # (M, B, H2)
    h2 = a2.shape[-1]
    a2_columns = a2.transpose(0, 1).reshape(batch, members * h2)
    n2, normalised2, inv_std2 = _batch_norm(a2_columns, g2.view(-1), beta2.view(-1), buffers[2].view(-1),
                                            buffers[3].view(-1), momentum, eps)
    hidden2 = n2.view(batch, members, h2).transpose(0, 1)  # (M, B, H2)
    logits = torch.baddbmm(b3.unsqueeze(1), hidden2, w3)  # (M, B, K)
    log_probs = torch.log_softmax(logits, -1)
    target = (y[..., None] == torch.arange(logits.shape[-1], device=y.device)).to(logits.dtype)  # (M, B, K) one-hot
    losses = -(log_probs * target).sum(-1).mean(1)

    grad_logits = (log_probs.exp() - target) / batch  # d(sum of the members' losses) / d logits
    grad_w3 = torch.bmm(hidden2.transpose(1, 2), grad_logits)
    grad_b3 = grad_logits.sum(1)
    grad_n2 = torch.bmm(grad_logits, w3.transpose(1, 2)).transpose(0, 1).reshape(batch, members * h2)
    grad_a2, grad_g2, grad_beta2 = _batch_norm_backward(grad_n2, normalised2, inv_std2, g2.view(-1))
    grad_z2 = torch.where(a2_columns > 0, grad_a2, 0.0).view(batch, members, h2).transpose(0, 1)  # (M, B, H2)
    grad_w2 = torch.bmm(hidden1.transpose(1, 2), grad_z2)
    grad_b2 = grad_z2.sum(1)
    grad_n1 = torch.bmm(grad_z2, w2.transpose(1, 2)).transpose(0, 1).reshape(batch, members * h1)
    grad_a1, grad_g1, grad_beta1 = _batch_norm_backward(grad_n1, normalised1, inv_std1, g1.view(-1))
    grad_z1 = torch.where(a1 > 0, grad_a1, 0.0)
    grad_z1_members = grad_z1.view(batch, members, h1).transpose(0, 1).to(xp.dtype)  # (M, B, H1)
    grad_w1 = torch.bmm(xp.transpose(1, 2), grad_z1_members)
    grads = (grad_w1, grad_z1.sum(0).view(members, h1), grad_g1.view(members, h1), grad_beta1.view(members, h1),
             grad_w2, grad_b2, grad_g2.view(members, h2), grad_beta2.view(members, h2), grad_w3, grad_b3)
    _adam(params, list(grads), *moments, step_size, bias_correction2_sqrt)
    if first_products is not None:
        first_products.copy_(w1)
    return losses


class StackedStep:
    """Trains a StackedMLP with Adam (torch's defaults, no weight decay) one batch at a time: `step(x, y, lr)`.

    `compile` True runs the step through torch.compile; if compiling fails (no C++ compiler, say) the step says so
    once on stderr and runs eagerly, with the same arithmetic."""

    def __init__(self, model: StackedMLP, compile: bool) -> None:
        self.params = [p.detach() for p in model.parameters()]  # views: the step updates the model's parameters
        self.buffers = [buffer for name, buffer in model.named_buffers() if name.endswith(("running_mean", "running_var"))]
        self.moments = ([torch.zeros_like(p) for p in self.params], [torch.zeros_like(p) for p in self.params])
        first = model[0]
        weight = first.weight.detach()
        self.first_products = None if first.products == torch.float32 else weight.to(first.products)
        self.device = weight.device
        self.momentum, self.eps = model[2].momentum, model[2].eps  # both batch norms are built alike
        self.steps = 0
        self.function = Compiled(_step, compile, "training")

    @property
    def compiled(self) -> bool:
        """Whether the steps run compiled (False after a failed compile too)."""
        return self.function.compiled

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        """One Adam step at learning rate `lr` on (M, B, D) features `x` and (M, B) labels `y`, member m's batch at
        [m] -> (M,) batch losses."""
        self.steps += 1
        bias_correction1 = 1 - BETAS[0] ** self.steps
        bias_correction2 = 1 - BETAS[1] ** self.steps
        step_size = torch.tensor(lr / bias_correction1, device=self.device)
        correction = torch.tensor(math.sqrt(bias_correction2), device=self.device)
        args = (x, y, self.first_products, self.params, self.buffers, self.moments, step_size, correction,
                self.momentum, self.eps)
        with torch.no_grad():
            return self.function(*args)

    def run(self, batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> list[torch.Tensor]:
        """One step per (x, y) batch, in order -> each step's (M,) losses. Once the step has compiled, its calls skip
        dynamo's guard checks (about 0.1 ms a call): there is one graph, and the Compiled wrapper sends it only inputs
        of its shapes."""
        losses = [self(*batches[0], lr)] if self.steps == 0 else []
        unguarded = torch.compiler.set_stance("default", skip_guard_eval_unsafe=True) if self.compiled else None
        with unguarded or contextlib.nullcontext():
            return losses + [self(x, y, lr) for x, y in batches[len(losses):]]
