"""One optimiser step: the model and its objective as the one module DDP wraps."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ObjectiveConfig
from ..models.base import CrossRank, MultimodalVAE
from ..objectives import training_loss


class TrainStep(nn.Module):
    """forward(xs, generator, group) -> (loss, stats): the objective of ``ObjectiveConfig``.

    Wrapping this module (not the bare model) in DistributedDataParallel makes DDP see every
    parameter the loss uses, including those only the negatives or the extra terms touch.
    """

    def __init__(self, model: MultimodalVAE, objective: ObjectiveConfig) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, xs: list[Tensor], generator: torch.Generator | None = None,
                group: CrossRank | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        o = self.objective
        return training_loss(
            self.model, xs, objective=o.name, K=o.K, estimator=o.estimator, gamma=o.gamma, N=o.N,
            baseline_estimator=o.baseline_estimator, dreg=o.dreg, looser=o.looser,
            generator=generator, group=group, neg_samples=o.neg_samples, neg_K=o.neg_K or None,
        )


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one step's draws (negatives, noise): the same on every rank, so the
    ranks' draws are slices of one global draw, and reproducible after a resume."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return g


def make_optimizer(params: Any, lr: float, weight_decay: float,
                   amsgrad: bool = False) -> torch.optim.Optimizer:
    """Adam over the parameters that train (a frozen parameter gets no state)."""
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay,
                            amsgrad=amsgrad)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int):
    """"constant" or "cosine" (to 0 over ``total_steps``) as a LambdaLR, so it checkpoints."""
    if schedule == "cosine":
        T = max(1, total_steps)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, T) / T))
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def apply_step(module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, xs: list[Tensor],
               generator: torch.Generator, group: CrossRank | None, grad_clip: float = 0.0,
               ) -> tuple[dict[str, float], bool]:
    """Forward, check finiteness on every rank, backward, step. -> (stats as floats, stepped).

    A non-finite loss on ANY rank skips the step on all of them (before backward, so DDP's
    gradient all-reduce is never entered by only some ranks).
    """
    loss, stats = module(xs, generator, group)
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if group is not None:
        finite = group.all_reduce_sum(finite) / group.world_size
    if float(finite) < 1.0:
        optimizer.zero_grad(set_to_none=True)
        return {k: float(v) for k, v in stats.items() if v.dim() == 0}, False
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return {k: float(v) for k, v in stats.items() if v.dim() == 0}, True
