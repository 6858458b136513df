"""The shared machinery of multimodal VAEs: encoding, noise, and log importance weights.

A model turns a batch of M modalities into log importance weights log w = log p(x_1..M, z) -
log q(z | x_1..M) for K posterior samples per item; every estimator (ELBO, IWAE, CUBO, DReG)
and the contrastive loss are functions of those weights. ``prepare`` computes the weights of
the related tuples (x_1[b], ..., x_M[b]) and keeps what negatives can reuse;
``tuple_log_weights`` scores arbitrary tuples (x_1[t_1], ..., x_M[t_M]) of the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .distributions import check_family, log_prob_sum, standard_noise
from .modality import Modality


class CrossRank(Protocol):
    """Collectives across data-parallel ranks, injected by the training layer (train/dist.py).

    Both are gradient-carrying: the backward pass sends every rank's gradient back to the
    rank that produced the tensor, so DDP's average is the gradient of the global-batch loss.
    """

    rank: int
    world_size: int

    def all_gather(self, t: Tensor) -> Tensor:
        """Concatenate every rank's ``t`` along dim 0, in rank order: [B, ...] -> [W*B, ...]."""
        ...

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Elementwise sum of every rank's ``t``."""
        ...


@dataclass
class PassState:
    """What one pass over a batch computed.

    log_w: [S, B] log importance weights of the related tuples (S = K, or M*K for MMVAE).
    z: posterior samples (MMVAE [M, K, B, L]; others [K, B, L]) — DReG hooks their gradient.
    eps: the standard noise the samples were made from (same shape as z).
    xs: the batch; posts: per-modality (loc [B, L], scale [B, L]); cache: model-specific reuse.
    """

    log_w: Tensor
    z: Tensor
    eps: Tensor
    xs: list[Tensor]
    posts: list[tuple[Tensor, Tensor]]
    cache: dict[str, Any] = field(default_factory=dict)


@contextmanager
def evaluating(*modules: nn.Module) -> Iterator[torch.device]:
    """Eval mode and no grad for the duration; yields the first module's device; restores every
    module's training flag afterwards (metrics and image grids run inside it)."""
    flags = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            p = next(modules[0].parameters(), None)
            yield p.device if p is not None else torch.device("cpu")
    finally:
        for m, f in zip(modules, flags):
            m.train(f)


class MultimodalVAE(nn.Module):
    """Base class: M >= 2 modalities sharing a latent space with prior p(z) = family(0, 1)."""

    #: how many sample sets of size K one item has (MMVAE: one per expert)
    samples_per_k: int = 1

    def __init__(self, modalities: list[Modality], latent_dim: int, family: str = "laplace",
                 learn_prior: bool = False) -> None:
        super().__init__()
        if len(modalities) < 2:
            raise ValueError(f"a multimodal VAE needs at least 2 modalities, got {len(modalities)}")
        if not (isinstance(latent_dim, int) and latent_dim >= 1):
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        names = [m.name for m in modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"modality names must be unique, got {names}")
        self.modalities = nn.ModuleList(modalities)
        self.latent_dim = latent_dim
        self.family = check_family(family, "posterior/prior family")
        self.register_buffer("_prior_loc", torch.zeros(latent_dim), persistent=False)
        # Learned prior scale (the official MMVAE code's --learn-prior): softmax(logits) * L, so
        # the scales sum to L and start at 1; the location stays 0.
        self.prior_logits = nn.Parameter(torch.zeros(latent_dim)) if learn_prior else None

    # ----------------------------------------------------------------- basics
    @property
    def M(self) -> int:
        return len(self.modalities)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modalities]

    @property
    def learn_prior(self) -> bool:
        return self.prior_logits is not None

    def prior_scale(self) -> Tensor:
        """Scale of p(z) per latent dimension [L]: 1, or softmax(prior_logits) * L if learned."""
        if self.prior_logits is None:
            return torch.ones_like(self._prior_loc)
        return torch.softmax(self.prior_logits, -1) * self.latent_dim

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) summed over the latent dimension: [..., L] -> [...]."""
        return log_prob_sum(self.family, z, self._prior_loc, self.prior_scale())

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws z ~ p(z) -> [n, L] on the model's device; the noise is drawn on the
        generator's device (the CPU by default) so a seed gives the same z on any device."""
        eps = standard_noise(self.family, (n, self.latent_dim), generator=generator)
        p = self._prior_loc
        with torch.no_grad():
            return p + self.prior_scale() * eps.to(p.device, p.dtype)

    def encode(self, xs: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Unimodal posteriors q(z | x_m): list of M (loc [B, L], scale [B, L])."""
        self._check_xs(xs)
        return [mod.encode(x) for mod, x in zip(self.modalities, xs)]

    def noise_shape(self, K: int, B: int) -> tuple[int, ...]:
        """Shape of the standard noise one pass over B items with K samples consumes."""
        return (K, B, self.latent_dim)

    def draw_eps(self, K: int, B: int, generator: torch.Generator | None = None) -> Tensor:
        """Standard noise of the posterior family, shape ``noise_shape(K, B)``."""
        p = self._prior_loc
        return standard_noise(self.family, self.noise_shape(K, B), generator=generator,
                              device=p.device, dtype=p.dtype)

    def negative_noise_shape(self, K: int, P: int) -> tuple[int, ...] | None:
        """Shape of fresh noise that P negative tuples need; None when they reuse the positives'."""
        return (K, P, self.latent_dim)

    # ------------------------------------------------------------- interface
    def prepare(self, xs: list[Tensor], K: int, eps: Tensor | None = None,
                detach_q: bool = False) -> PassState:
        """Log-weights of the related tuples and what negatives reuse. See PassState."""
        raise NotImplementedError

    def tuple_log_weights(self, state: PassState, tuples: Tensor,
                          eps: Tensor | None = None) -> Tensor:
        """log w of the tuples (x_1[tuples[p, 0]], ..., x_M[tuples[p, M-1]]): [P, M] -> [S, P].

        Gives the same numbers as ``prepare([x_m[tuples[:, m]]], K, tuple_noise(...)).log_w``.
        """
        raise NotImplementedError

    def tuple_log_weights_dist(self, state: PassState, tuples: Tensor, eps: Tensor | None,
                               group: CrossRank) -> Tensor:
        """``tuple_log_weights`` under data parallelism: ``state`` covers this rank's B items
        (global indices rank*B .. rank*B+B-1), ``tuples`` [P, M] hold GLOBAL indices. -> [S, P]."""
        return self.tuple_log_weights(self.gather_state(state, group), tuples, eps)

    def gather_state(self, state: PassState, group: CrossRank) -> PassState:
        """A state over the global batch holding what ``tuple_log_weights`` reads: the inputs
        (plain) and the encoder outputs (gradient-carrying)."""
        xs = [group.all_gather(x.detach()) for x in state.xs]
        posts = [(group.all_gather(loc), group.all_gather(scale)) for loc, scale in state.posts]
        cache = {k: [group.all_gather(f) for f in v] for k, v in state.cache.items() if k == "feats"}
        return PassState(state.log_w, state.z, state.eps, xs, posts, cache)

    def tuple_noise(self, state: PassState, tuples: Tensor, eps: Tensor | None) -> Tensor:
        """The noise that ``prepare`` on the gathered tuples needs to reproduce tuple_log_weights."""
        if eps is None:
            raise ValueError("negative tuples of this model need fresh noise")
        return eps

    def unimodal_posterior(self, x: Tensor, m: int) -> tuple[Tensor, Tensor]:
        """The model's q(z | x_m), the proposal of log p(x_m): (loc [B, L], scale [B, L])."""
        return self.modalities[m].encode(x)

    def decode_mean(self, m: int, z: Tensor) -> Tensor:
        """The typical x_m of p(x_m | z) (``Modality.mean``: the loc, or a sentence's most likely
        tokens): z [B, L] -> [B, *event_m] (decoders take [K, B, L])."""
        mod = self.modalities[m]
        return mod.mean(mod.decode(z.unsqueeze(0)))[0]

    def joint_posterior(self, xs: list[Tensor]) -> tuple[Tensor, Tensor] | None:
        """The model's own q(z | x_1..M) as (loc [B, L], scale [B, L]), or None when it is not one
        distribution of the family (MMVAE's mixture). Every model answers it."""
        raise NotImplementedError(f"{type(self).__name__} must define joint_posterior(xs)")

    def joint_posterior_mean(self, xs: list[Tensor]) -> Tensor:
        """The mean of q(z | x_1..M): [B, L] (the latent code of the latent-accuracy metric)."""
        post = self.joint_posterior(xs)
        if post is None:
            raise NotImplementedError(f"{type(self).__name__} must define joint_posterior_mean(xs)")
        return post[0]

    def extra_loss(self, xs: list[Tensor], generator: torch.Generator | None = None, *,
                   rank: int = 0, world_size: int = 1) -> Tensor | None:
        """Model-specific training terms added to the joint objective (per item, [B]); None here.

        Noise is drawn for the global batch (world_size * B items) and sliced at ``rank``, so
        data-parallel ranks reproduce one process's draws.
        """
        return None

    def forward(self, xs: list[Tensor], K: int = 1) -> PassState:
        """Posteriors, samples and log-weights of a batch (never a loss)."""
        return self.prepare(xs, K)

    # --------------------------------------------------------------- helpers
    def _check_xs(self, xs: list[Tensor]) -> None:
        if len(xs) != self.M:
            raise ValueError(f"expected {self.M} modalities ({', '.join(self.names)}), got {len(xs)}")
        B = xs[0].shape[0]
        if any(x.shape[0] != B for x in xs):
            raise ValueError(f"modalities have different batch sizes: {[x.shape[0] for x in xs]}")

    def _sample(self, loc: Tensor, scale: Tensor, eps: Tensor | None, K: int) -> tuple[Tensor, Tensor]:
        """z = loc + scale * eps with eps [K, B, L] (drawn if None) -> (z, eps)."""
        if eps is None:
            eps = standard_noise(self.family, (K, *loc.shape), device=loc.device, dtype=loc.dtype)
        if eps.shape != (K, *loc.shape):
            raise ValueError(f"noise has shape {tuple(eps.shape)}, expected {(K, *loc.shape)}")
        return loc + scale * eps, eps

    def _log_lik_all(self, xs: list[Tensor], z: Tensor) -> Tensor:
        """Σ_m log p(x_m | z): z [K, B, L] decoded by every decoder -> [K, B]."""
        return sum(mod.log_lik(x, mod.decode(z)) for mod, x in zip(self.modalities, xs))

    # ------------------------------------------------------------- one joint posterior (MVAE, JMVAE)
    def _joint_pass(self, xs: list[Tensor], loc: Tensor, scale: Tensor, K: int, eps: Tensor | None,
                    detach_q: bool) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        """K samples of the joint posterior (loc, scale [B, L]) and their log-weights -> (log_w
        [K, B], z [K, B, L], eps, cache). The cache keeps what reused negatives read: every
        decoder's output ``dec`` (per modality, at every sample), the matched likelihoods ``ll``
        (per modality, [K, B]), ``lpz`` and ``lq`` (log p(z), log q(z | own item): [K, B]) and the
        posterior ``q_loc``, ``q_scale``."""
        z, eps = self._sample(loc, scale, eps, K)
        q_loc, q_scale = (loc.detach(), scale.detach()) if detach_q else (loc, scale)
        lpz = self.log_prior(z)
        dec = [mod.decode(z) for mod in self.modalities]
        ll = [mod.log_lik(x, params) for mod, x, params in zip(self.modalities, xs, dec)]
        lq = log_prob_sum(self.family, z, q_loc, q_scale)
        log_w = lpz + sum(ll) - lq
        return log_w, z, eps, {"dec": dec, "ll": ll, "lpz": lpz, "lq": lq, "q_loc": q_loc, "q_scale": q_scale}

    def reused_tuple_log_weights(self, state: PassState, tuples: Tensor) -> Tensor:
        """log w of the tuples [P, M] under a proposal whose samples exist already -> [M*K, P].

        The proposal of tuple p is the uniform mixture of its members' own joint posteriors,
        1/M Σ_e q(z | item tuples[p, e]), sampled stratified: the K samples of component e are
        the positives' samples of item tuples[p, e], already decoded by every decoder. So only
        the likelihoods of mismatched (sample, target) pairs and M posterior densities per
        sample are new work (no encoder, no decoder pass), as in MMVAE, whose own proposal this
        is. Any proposal with full support gives an unbiased importance-sampling estimate of
        p(x_1..M), so the IWAE of these weights is a lower bound of log p of the tuple (looser
        than fresh samples from the tuple's own posterior; tests/objectives/test_negatives.py
        measures by how much on the linear-Gaussian model).
        """
        q = (state.cache["q_loc"], state.cache["q_scale"])
        K = state.z.shape[0]
        rows = [self._reused_rows(state, e, tuples[:, e], tuples, state.xs, q) for e in range(self.M)]
        return torch.stack(rows).reshape(self.M * K, tuples.shape[0])

    def reused_tuple_log_weights_dist(self, state: PassState, tuples: Tensor, group: CrossRank) -> Tensor:
        """``reused_tuple_log_weights`` under data parallelism (``tuples`` hold global indices):
        the rows of component e are computed by the rank that holds member e's samples."""
        q_g = (group.all_gather(state.cache["q_loc"]), group.all_gather(state.cache["q_scale"]))
        K, B = state.z.shape[0], state.z.shape[1]
        return self._owner_rows_dist(state, tuples, group, self._reused_rows, q_g, K, B)

    def _reused_rows(self, state: PassState, e: int, src: Tensor, tgt: Tensor, xs_t: list[Tensor],
                     q_t: tuple[Tensor, Tensor]) -> Tensor:
        """log w of component e's K samples (item ``src[p]``'s) for tuple p -> [K, P]; ``tgt`` [P, M]
        indexes the target arrays xs_t and q_t (joint posteriors (loc, scale) [B_t, L])."""
        c = state.cache
        z = state.z[:, src]  # [K, P, L]
        ll = c["ll"][e][:, src]  # modality e is the one item src supplies
        lq = []
        for m, mod in enumerate(self.modalities):
            if m == e:
                lq.append(c["lq"][:, src])
                continue
            ll = ll + mod.log_lik_pairs(xs_t[m], c["dec"][m], src, tgt[:, m])
            lq.append(log_prob_sum(self.family, z, q_t[0][tgt[:, m]], q_t[1][tgt[:, m]]))
        log_qmix = torch.logsumexp(torch.stack(lq), 0) - math.log(self.M)
        return c["lpz"][:, src] + ll - log_qmix

    def _owner_rows_dist(self, state: PassState, tuples: Tensor, group: CrossRank, rows_of: Any,
                         q_g: tuple[Tensor, Tensor], K: int, B: int) -> Tensor:
        """Rows of component e of every tuple, computed by the rank that owns the tuple's member e
        (it holds that member's samples and decoder outputs) and summed across ranks with their
        gradients -> this rank's tuples' rows [M*K, P]. ``rows_of(state, e, src, tgt, xs_g, q_g)``
        computes [K, len(src)] rows from local ``src`` and global ``tgt`` indices."""
        r, P = group.rank, tuples.shape[0]
        tuples_all = group.all_gather(tuples)  # [W*P, M] global indices, every rank's anchors
        xs_g = [group.all_gather(x.detach()) for x in state.xs]
        per_component = []
        for e in range(self.M):
            idx = ((tuples_all[:, e] // B) == r).nonzero().squeeze(1)  # tuples whose member e is mine
            sel = tuples_all[idx]
            vals = rows_of(state, e, sel[:, e] - r * B, sel, xs_g, q_g)  # [K, len(idx)]
            per_component.append(vals.new_zeros(K, tuples_all.shape[0]).index_copy(1, idx, vals))
        rows = group.all_reduce_sum(torch.stack(per_component))  # [M, K, W*P]: from their owners
        return rows[:, :, r * P:(r + 1) * P].reshape(self.M * K, P)


def log_mean_exp(x: Tensor, dim: int) -> Tensor:
    """log (1/n) Σ exp(x) along ``dim``."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])
