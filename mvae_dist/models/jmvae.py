"""JMVAE-kl: a joint encoder q(z | x_1..M) plus unimodal encoders tied to it by KL terms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import MultimodalVAE, PassState
from .distributions import kl_divergence
from .modality import Modality
from .networks import posterior_scale


class ConcatJointEncoder(nn.Module):
    """Joint encoder: per-modality feature nets, concatenated, then an MLP head -> (loc, scale).

    ``features(m, x_m) -> [B, F_m]`` and ``head([h_1..h_M]) -> (loc [B, L], scale [B, L])`` are
    separate so that negative tuples reuse the features and only rerun the small head.
    """

    def __init__(self, feature_nets: Sequence[nn.Module], feature_dims: Sequence[int],
                 latent_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.feature_nets = nn.ModuleList(feature_nets)
        self.body = nn.Sequential(nn.Linear(sum(feature_dims), hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, latent_dim)
        self.raw_scale = nn.Linear(hidden, latent_dim)

    def features(self, m: int, x: Tensor) -> Tensor:
        return self.feature_nets[m](x.to(self.loc.weight.dtype)).flatten(1)

    def head(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        h = self.body(torch.cat(feats, dim=-1))
        return self.loc(h), posterior_scale(self.raw_scale(h))

    def forward(self, xs: list[Tensor]) -> tuple[Tensor, Tensor]:
        return self.head([self.features(m, x) for m, x in enumerate(xs)])


class JMVAE(MultimodalVAE):
    """q(z | x_1..M) is the joint encoder; the loss adds alpha * Σ_m KL(q(z|x_1..M) || q(z|x_m)).

    ``joint_encoder`` maps the list xs to (loc, scale); if it also has ``features`` and ``head``
    (as ConcatJointEncoder does) negative tuples reuse the per-modality features.
    """

    def __init__(self, modalities: list[Modality], latent_dim: int, joint_encoder: nn.Module,
                 family: str = "normal", alpha: float = 0.01) -> None:
        super().__init__(modalities, latent_dim, family)
        if not alpha >= 0:
            raise ValueError(f"JMVAE alpha must be >= 0, got {alpha}")
        self.joint_encoder = joint_encoder
        self.alpha = float(alpha)
        self._reuses_features = hasattr(joint_encoder, "features") and hasattr(joint_encoder, "head")

    def joint_posterior(self, xs: list[Tensor]) -> tuple[Tensor, Tensor]:
        """q(z | x_1..M): (loc [B, L], scale [B, L])."""
        self._check_xs(xs)
        return self.joint_encoder(xs)

    def prepare(self, xs: list[Tensor], K: int, eps: Tensor | None = None,
                detach_q: bool = False) -> PassState:
        self._check_xs(xs)
        cache = {}
        if self._reuses_features:
            feats = [self.joint_encoder.features(m, x) for m, x in enumerate(xs)]
            loc, scale = self.joint_encoder.head(feats)
            cache["feats"] = feats
        else:
            loc, scale = self.joint_encoder(xs)
        log_w, z, eps, reuse = self._joint_pass(xs, loc, scale, K, eps, detach_q)
        return PassState(log_w, z, eps, list(xs), [(loc, scale)], {**cache, **reuse})

    def tuple_log_weights(self, state: PassState, tuples: Tensor,
                          eps: Tensor | None = None) -> Tensor:
        xs = [x[tuples[:, m]] for m, x in enumerate(state.xs)]
        if "feats" in state.cache:
            loc, scale = self.joint_encoder.head(
                [f[tuples[:, m]] for m, f in enumerate(state.cache["feats"])]
            )
        else:
            loc, scale = self.joint_encoder(xs)
        K = state.z.shape[0] if eps is None else eps.shape[0]  # fresh samples: objective.neg_K
        return self._joint_pass(xs, loc, scale, K, eps, False)[0]

    def extra_loss(self, xs: list[Tensor], generator: torch.Generator | None = None, *,
                   rank: int = 0, world_size: int = 1) -> Tensor:
        """alpha * Σ_m KL(q(z | x_1..M) || q(z | x_m)) per item: [B]."""
        loc, scale = self.joint_posterior(xs)
        kl = sum(
            kl_divergence(self.family, loc, scale, *mod.encode(x))
            for mod, x in zip(self.modalities, xs)
        )
        return self.alpha * kl
