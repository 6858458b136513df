"""The training objective: baseline (the model's own bound) or contrastive (eq. 4), plus the
model's extra terms (MVAE unimodal ELBOs, JMVAE KL ties)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..models.base import CrossRank, MultimodalVAE
from .contrastive import contrastive_loss
from .estimators import check_estimator, dreg_iwae, estimate, iwae_looser
from .joint import check_K


def training_loss(
    model: MultimodalVAE, xs: list[Tensor], *, objective: Literal["baseline", "contrastive"],
    K: int, estimator: str = "iwae", gamma: float = 2.0, N: int = 5,
    baseline_estimator: str = "iwae", dreg: bool = False, looser: bool = False,
    negatives: Tensor | None = None, generator: torch.Generator | None = None,
    group: CrossRank | None = None, impl: str = "fused", neg_samples: str = "fresh", neg_K: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar loss to minimise and detached stats.

    baseline: -mean(bound) with bound = ``baseline_estimator`` ("elbo" | "iwae"), DReG
    gradients if ``dreg``; for MMVAE ``looser`` uses the per-expert average of IWAE bounds (the
    MMVAE paper's training objective) instead of the pooled estimate; ``dreg`` and ``looser``
    together are the official MMVAE code's ``m_dreg_looser``.
    contrastive: eq. 4 with term 2 by ``estimator`` ("iwae" = cI, "cubo" = cC); ``looser`` makes
    term 1 the per-expert bound (DReG does not apply: the negatives reuse the positives' samples).
    ``impl`` picks the contrastive implementation ("fused", or the reference "loop");
    ``neg_samples`` / ``neg_K`` how MVAE and JMVAE score the negatives (``contrastive_loss``).
    Both add ``model.extra_loss`` (zero for MMVAE). With ``group`` (data parallel), the
    contrastive negatives come from the global batch and every random draw is the global
    batch's, sliced at this rank (see ``contrastive_loss``); the loss is this rank's mean.
    """
    check_K(K)
    W, r = (1, 0) if group is None else (group.world_size, group.rank)
    if objective == "contrastive":
        if dreg:
            raise ValueError("dreg applies to the baseline objective (the contrastive negatives reuse "
                             "the positives' samples, whose gradient DReG reweights)")
        loss, stats = contrastive_loss(model, xs, gamma, N, K, estimator, negatives,
                                       generator=generator, group=group, impl=impl, looser=looser,
                                       neg_samples=neg_samples, neg_K=neg_K)
    elif objective == "baseline":
        check_estimator(baseline_estimator)
        if baseline_estimator == "cubo":
            raise ValueError("baseline_estimator must be a lower bound ('elbo' or 'iwae'), got 'cubo'")
        B = xs[0].shape[0]
        eps = model.draw_eps(K, W * B, generator).narrow(-2, r * B, B)
        state = model.prepare(xs, K, eps, detach_q=dreg)
        if dreg:
            if baseline_estimator != "iwae":
                raise ValueError("dreg applies to the 'iwae' baseline bound only")
            bound = dreg_iwae(state.log_w, state.z, model.samples_per_k if looser else 1)
        elif looser and baseline_estimator == "iwae":
            bound = iwae_looser(state.log_w, model.samples_per_k)
        else:
            bound = estimate(state.log_w, baseline_estimator)
        loss = -bound.mean()
        stats = {"loss": loss.detach(), "log_joint": bound.mean().detach()}  # no eq. 4 terms here
    else:
        raise ValueError(f"unknown objective {objective!r}; expected 'baseline' or 'contrastive'")
    extra = model.extra_loss(xs, generator, rank=r, world_size=W)
    if extra is not None:
        loss = loss + extra.mean()
        stats["extra"] = extra.mean().detach()
        stats["loss"] = loss.detach()
    return loss, stats
