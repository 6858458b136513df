"""The contrastive objective of Relating by Contrasting (paper eq. 4 and appendix C).

    L(x, y) = -γ log p(x, y)  +  ½ [ log Σ_{i=1..N} p(x'_i, y) + log Σ_{i=1..N} p(x, y'_i) ],  γ > 1

Term 1 uses IWAE; term 2 uses the chosen estimator (IWAE: "cI-", CUBO: "cC-"). Negatives come
from the batch. For M > 2 modalities term 2 is appendix C's O(N) form: N random tuples per
anchor, each modality's member drawn from the batch by a random index matrix J.

Speed: the negatives reuse the positives' encoder outputs (every model) and, for MMVAE, also
their samples and decoder outputs; only the likelihoods of mismatched (sample, target) pairs
are new work (``Modality.log_lik_pairs``). ``impl="loop"`` is the straightforward version —
one full pass per negative — kept as the reference the fused path is tested against.
"""

from __future__ import annotations

import numbers
from typing import Literal

import torch
from torch import Tensor

from ..models.base import CrossRank, MultimodalVAE
from ..models.distributions import standard_noise
from .estimators import check_estimator, estimate, iwae, iwae_looser
from .joint import check_K


def check_gamma(gamma: float) -> float:
    """γ must be a real number > 1 (at γ <= 1 the loss collapses to noise, paper appendix E)."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not gamma > 1:
        raise ValueError(f"gamma must be > 1, got {gamma!r}")
    return float(gamma)


def check_N(N: int, batch_size: int) -> int:
    """N negatives per anchor need 1 <= N < batch size (the anchor's own partner is excluded)."""
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"N must be an integer >= 1, got {N!r}")
    if N >= batch_size:
        raise ValueError(f"N must be < batch size {batch_size} (negatives exclude the anchor), got {N}")
    return N


def sample_negatives(M: int, B: int, N: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    """Random negative indices [M, B, N]: row (m, b) holds N distinct items of [0, B) other than b.

    M = 2: negatives[0, b] are the x'_i paired with y_b, negatives[1, b] the y'_i paired with x_b.
    M > 2: tuple (b, i) takes modality m from item negatives[m, b, i] (appendix C's J).
    """
    check_N(N, B)
    dev = generator.device if generator is not None else device
    scores = torch.rand(M, B, B, generator=generator, device=dev)
    scores.diagonal(dim1=1, dim2=2).fill_(2.0)  # above every uniform draw: never picked
    return scores.topk(N, dim=-1, largest=False).indices


def check_negatives(negatives: Tensor, M: int, B: int, N: int) -> Tensor:
    """Validate a user-given index tensor [M, B, N] (integers in [0, B), never the anchor)."""
    if not isinstance(negatives, Tensor) or negatives.dtype not in (torch.int64, torch.int32):
        raise ValueError("negatives must be an integer index tensor of shape [M, B, N]")
    if tuple(negatives.shape) != (M, B, N):
        raise ValueError(f"negatives has shape {tuple(negatives.shape)}, expected [M, B, N] = {(M, B, N)}")
    if negatives.numel() and (negatives.min() < 0 or negatives.max() >= B):
        raise ValueError(f"negatives must index the batch, in [0, {B}); got values outside")
    anchors = torch.arange(B, device=negatives.device).view(1, B, 1)
    if bool((negatives == anchors).any()):
        raise ValueError("negatives must not contain the anchor's own index (its related partner)")
    return negatives.long()


def negative_tuples(negatives: Tensor) -> Tensor:
    """Index tuples of the negatives: [M, B, N] -> [G, B*N, M] (G = 2 if M == 2 else 1).

    Row p = b*N + i of group g lists, per modality, which batch item supplies that member.
    M = 2 (eq. 4): group 0 = (x'_i, y_b), group 1 = (x_b, y'_i). M > 2: one group of J-tuples.
    """
    M, B, N = negatives.shape
    if M == 2:
        anchor = torch.arange(B, device=negatives.device).view(B, 1).expand(B, N)
        g0 = torch.stack([negatives[0], anchor], dim=-1)
        g1 = torch.stack([anchor, negatives[1]], dim=-1)
        return torch.stack([g0, g1]).reshape(2, B * N, 2)
    return negatives.permute(1, 2, 0).reshape(1, B * N, M)


def contrastive_loss(
    model: MultimodalVAE, xs: list[Tensor], gamma: float, N: int, K: int,
    estimator: str = "iwae", negatives: Tensor | None = None, *,
    generator: torch.Generator | None = None, eps: Tensor | None = None,
    eps_neg: Tensor | None = None, impl: Literal["fused", "loop"] = "fused",
    group: CrossRank | None = None, looser: bool = False,
    neg_samples: Literal["fresh", "reuse"] = "fresh", neg_K: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Paper eq. 4 averaged over the batch -> (loss scalar, stats).

    xs: M tensors [B, *event_m]. estimator: term 2's estimator ("iwae" | "cubo" | "elbo");
    term 1 is IWAE, pooled over all samples, or with ``looser`` the per-expert average
    ``iwae_looser`` (MMVAE's training bound; the same as pooled for one sample set per item).
    negatives: [M, B, N] indices (``sample_negatives``), drawn if None.
    eps / eps_neg: noise of the positives (``model.noise_shape(K, B)``) and of the negative
    tuples (``model.negative_noise_shape(neg_K, G*B*N)``; unused by MMVAE, which reuses the
    positives' samples), drawn from ``generator`` if None.
    neg_samples: how MVAE and JMVAE estimate the negatives' log p: "fresh" (the exact path, the
    default) draws ``neg_K`` (default K) new samples from each negative tuple's own joint
    posterior and decodes them; "reuse" takes the members' positive samples, already decoded,
    under the mixture of the members' joint posteriors (``reused_tuple_log_weights``: still a
    lower bound, no decoder pass). MMVAE's negatives always reuse its experts' samples.

    Data parallel (``group`` given, W ranks with B items each): negatives come from the global
    batch of W*B items; ``negatives``, ``eps`` and ``eps_neg`` are then global-batch shaped and
    must be the same on every rank (draw them from identically seeded generators), and the
    loss is the mean over this rank's anchors, so that the average over ranks (DDP's gradient
    average) is the single-process loss on the concatenated batch with the same draws.

    stats (detached): loss, term1 = mean -γ·log p̂(x, y), term2, log_joint = mean IWAE of the
    related tuples, log_joint_neg = mean estimate over negative tuples, per-item
    log_joint_items [B] and term2_items [B].
    """
    if not isinstance(model, MultimodalVAE):
        raise ValueError(f"model must be a MultimodalVAE, got {type(model).__name__}")
    gamma = check_gamma(gamma)
    check_K(K)
    check_estimator(estimator)
    if impl not in ("fused", "loop"):
        raise ValueError(f"unknown impl {impl!r}; expected 'fused' or 'loop'")
    if group is not None and impl != "fused":
        raise ValueError("impl='loop' is a single-process reference; use 'fused' with a group")
    model._check_xs(xs)
    W, r = (1, 0) if group is None else (group.world_size, group.rank)
    M, B = model.M, xs[0].shape[0]
    GB = W * B  # the global batch
    check_N(N, GB)
    if negatives is None:
        negatives = sample_negatives(M, GB, N, generator, device=xs[0].device)
    negatives = check_negatives(negatives, M, GB, N)
    tuples = negative_tuples(negatives)  # [G, GB*N, M], row b*N + i of each group
    G = tuples.shape[0]
    P = B * N  # this rank's tuples per group: its anchors r*B .. r*B+B-1
    tuples = tuples[:, r * P:(r + 1) * P].reshape(G * P, M)

    dev, dtype = xs[0].device, model._prior_loc.dtype
    if eps is None:
        eps = standard_noise(model.family, model.noise_shape(K, GB), generator=generator,
                             device=dev, dtype=dtype)
    if neg_samples not in ("fresh", "reuse"):
        raise ValueError(f"unknown neg_samples {neg_samples!r}; expected 'fresh' or 'reuse'")
    neg_K = K if neg_K is None else check_K(neg_K)
    own_posterior = model.negative_noise_shape(K, 1) is not None  # MVAE, JMVAE; MMVAE always reuses
    reuse = own_posterior and neg_samples == "reuse"
    fresh = own_posterior and not reuse
    if not fresh and neg_K != K:
        raise ValueError("neg_K applies to negatives with fresh samples (MVAE, JMVAE with neg_samples "
                         f"'fresh'); these reuse the positives' K = {K}, got neg_K {neg_K}")
    if reuse and impl == "loop":
        raise ValueError("impl='loop' is the reference of fresh negatives; reused ones are checked "
                         "against tests/objectives/test_negatives.py's reference")
    neg_shape = model.negative_noise_shape(neg_K, G * GB * N) if fresh else None
    if neg_shape is not None and eps_neg is None:
        eps_neg = standard_noise(model.family, neg_shape, generator=generator, device=dev, dtype=dtype)
    if W > 1:  # this rank's slices of the global draws
        eps = eps.narrow(-2, r * B, B)
        if eps_neg is not None:
            L = eps_neg.shape[-1]
            eps_neg = eps_neg.reshape(neg_K, G, GB * N, L)[:, :, r * P:(r + 1) * P].reshape(neg_K, G * P, L)

    state = model.prepare(xs, K, eps)
    log_p = iwae(state.log_w)  # [B]
    bound = iwae_looser(state.log_w, model.samples_per_k) if looser else log_p  # [B]
    if reuse:
        log_w_neg = (model.reused_tuple_log_weights(state, tuples) if group is None
                     else model.reused_tuple_log_weights_dist(state, tuples, group))  # [M*K, G*P]
    elif group is not None:
        log_w_neg = model.tuple_log_weights_dist(state, tuples, eps_neg, group)  # [S, G*P]
    elif impl == "fused":
        log_w_neg = model.tuple_log_weights(state, tuples, eps_neg)
    else:
        log_w_neg = _loop_log_weights(model, state, tuples, eps_neg, neg_K)
    est_neg = estimate(log_w_neg, estimator).reshape(G, B, N)
    term2 = torch.logsumexp(est_neg, dim=-1).mean(0)  # [B]: mean over the G directions
    term1 = -gamma * bound
    loss = (term1 + term2).mean()
    stats = {
        "loss": loss.detach(),
        "term1": term1.mean().detach(),
        "term2": term2.mean().detach(),
        "log_joint": log_p.mean().detach(),
        "log_joint_neg": est_neg.mean().detach(),
        "log_joint_items": log_p.detach(),
        "term2_items": term2.detach(),
    }
    return loss, stats


def _loop_log_weights(model: MultimodalVAE, state, tuples: Tensor, eps_neg: Tensor | None,
                      K: int) -> Tensor:
    """Reference: one full model pass per block of B tuples, as if they were a new batch."""
    B = state.xs[0].shape[0]
    out = []
    for a in range(0, tuples.shape[0], B):
        sub = tuples[a:a + B]
        xs = [x[sub[:, m]] for m, x in enumerate(state.xs)]
        noise = model.tuple_noise(state, sub, None if eps_neg is None else eps_neg[:, a:a + B])
        out.append(model.prepare(xs, K, noise).log_w)
    return torch.cat(out, dim=1)
