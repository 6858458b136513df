"""Gradient-carrying collectives over torch.distributed (gloo on CPU, NCCL on GPU).

``TorchCrossRank`` implements ``models.base.CrossRank``: the contrastive loss gathers what its
negatives need from every rank, and the backward pass returns each rank's share of the
gradient to the rank that produced the tensor. Written with all_reduce only, which every
backend supports (gloo has no reduce_scatter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


class _AllGather(torch.autograd.Function):
    """[B, ...] per rank -> [W*B, ...]; backward: sum the gradients of all ranks, keep my slice."""

    @staticmethod
    def forward(ctx, t: Tensor, rank: int, world: int) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        ctx.rank, ctx.n = rank, t.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None, None


class _AllReduceSum(torch.autograd.Function):
    """Elementwise sum over ranks; backward: every rank's output gradient, summed."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # type: ignore[override]
        out = t.clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.clone().contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


@dataclass
class TorchCrossRank:
    """CrossRank over the default torch.distributed process group."""

    rank: int
    world_size: int

    @classmethod
    def from_process_group(cls) -> TorchCrossRank:
        return cls(dist.get_rank(), dist.get_world_size())

    def all_gather(self, t: Tensor) -> Tensor:
        if not t.requires_grad:  # inputs, indices: a plain gather
            parts = [torch.empty_like(t) for _ in range(self.world_size)]
            dist.all_gather(parts, t.contiguous())
            return torch.cat(parts, dim=0)
        return _AllGather.apply(t, self.rank, self.world_size)

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        if not t.requires_grad:
            out = t.clone().contiguous()
            dist.all_reduce(out)
            return out
        return _AllReduceSum.apply(t)


def global_slice(rank: int, local_batch: int) -> slice:
    """The global-batch indices of a rank's items: rank*B .. rank*B+B-1."""
    return slice(rank * local_batch, (rank + 1) * local_batch)
