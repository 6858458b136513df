"""MVAE: the product of the unimodal Gaussian experts and the prior expert (Wu & Goodman, 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import MultimodalVAE, PassState
from .distributions import log_prob_sum, poe_normal, standard_noise
from .modality import Modality


class MVAE(MultimodalVAE):
    """q(z | x_1..M) ∝ p(z) Π_m q(z | x_m); trained with the joint bound plus unimodal ELBOs."""

    def __init__(self, modalities: list[Modality], latent_dim: int, family: str = "normal",
                 unimodal_weight: float = 1.0) -> None:
        super().__init__(modalities, latent_dim, family)
        if self.family != "normal":
            raise ValueError(
                f"MVAE needs family 'normal' (a product of {family} experts has no closed form)"
            )
        self.unimodal_weight = float(unimodal_weight)

    def _joint(self, xs: list[Tensor], posts: list[tuple[Tensor, Tensor]], K: int,
               eps: Tensor | None, detach_q: bool) -> tuple[Tensor, Tensor, Tensor, dict]:
        """PoE posterior of the given experts -> (log_w [K, B], z [K, B, L], eps, cache)."""
        loc, scale = poe_normal(torch.stack([p[0] for p in posts]), torch.stack([p[1] for p in posts]))
        return self._joint_pass(xs, loc, scale, K, eps, detach_q)

    def prepare(self, xs: list[Tensor], K: int, eps: Tensor | None = None,
                detach_q: bool = False) -> PassState:
        posts = self.encode(xs)
        log_w, z, eps, cache = self._joint(xs, posts, K, eps, detach_q)
        return PassState(log_w, z, eps, list(xs), posts, cache)

    def tuple_log_weights(self, state: PassState, tuples: Tensor,
                          eps: Tensor | None = None) -> Tensor:
        # The encoders ran once for the batch; a tuple's product of experts is a gather away.
        # Fresh samples: as many as eps holds (objective.neg_K), else K.
        xs = [x[tuples[:, m]] for m, x in enumerate(state.xs)]
        posts = [(loc[tuples[:, m]], scale[tuples[:, m]]) for m, (loc, scale) in enumerate(state.posts)]
        K = state.z.shape[0] if eps is None else eps.shape[0]
        return self._joint(xs, posts, K, eps, False)[0]

    def unimodal_posterior(self, x: Tensor, m: int) -> tuple[Tensor, Tensor]:
        loc, scale = self.modalities[m].encode(x)
        return poe_normal(loc.unsqueeze(0), scale.unsqueeze(0))

    def joint_posterior(self, xs: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The product of the unimodal experts and the prior expert: (loc [B, L], scale [B, L])."""
        posts = self.encode(list(xs))
        return poe_normal(torch.stack([p[0] for p in posts]), torch.stack([p[1] for p in posts]))

    def extra_loss(self, xs: list[Tensor], generator: torch.Generator | None = None, *,
                   rank: int = 0, world_size: int = 1) -> Tensor:
        """-Σ_m ELBO(x_m) with q(z | x_m) = PoE(prior, expert m), one sample each: [B]."""
        total = xs[0].new_zeros(xs[0].shape[0])
        for m, (mod, x) in enumerate(zip(self.modalities, xs)):
            loc, scale = self.unimodal_posterior(x, m)
            B = loc.shape[0]
            eps = standard_noise(self.family, (1, world_size * B, loc.shape[1]), generator=generator,
                                 device=loc.device, dtype=loc.dtype)[:, rank * B:(rank + 1) * B]
            z = loc + scale * eps
            log_q = log_prob_sum(self.family, z, loc, scale)
            elbo = self.log_prior(z) + mod.log_lik(x, mod.decode(z)) - log_q
            total = total - elbo[0]
        return self.unimodal_weight * total
