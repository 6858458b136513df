"""MMVAE: the uniform mixture of unimodal experts q(z | x_1..M) = 1/M Σ_m q(z | x_m).

Sampling is stratified: K samples from every expert (M*K in all). A sample z ~ q(z | x_e)
carries the log-weight log p(z) + Σ_m log p(x_m | z) - log (1/M Σ_m q(z | x_m)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import MultimodalVAE, PassState
from .distributions import log_prob_sum


class MMVAE(MultimodalVAE):
    """Mixture-of-experts multimodal VAE (Shi et al., 2019). log_w has M*K rows, expert-major."""

    def noise_shape(self, K: int, B: int) -> tuple[int, ...]:
        return (self.M, K, B, self.latent_dim)

    def negative_noise_shape(self, K: int, P: int) -> None:
        # Every sample of a tuple comes from one of its members' experts: the positives' samples.
        return None

    @property
    def samples_per_k(self) -> int:  # type: ignore[override]
        return self.M

    def prepare(self, xs: list[Tensor], K: int, eps: Tensor | None = None,
                detach_q: bool = False) -> PassState:
        posts = self.encode(xs)
        M, B, L = self.M, xs[0].shape[0], self.latent_dim
        loc = torch.stack([p[0] for p in posts])  # [M, B, L]
        scale = torch.stack([p[1] for p in posts])
        if eps is None:
            eps = self.draw_eps(K, B)
        if tuple(eps.shape) != (M, K, B, L):
            raise ValueError(f"noise has shape {tuple(eps.shape)}, expected {(M, K, B, L)}")
        z = loc.unsqueeze(1) + scale.unsqueeze(1) * eps  # [M, K, B, L], expert-major
        q_loc, q_scale = (loc.detach(), scale.detach()) if detach_q else (loc, scale)
        # lq[e, m] = log q(z_e | x_m) for the item's own members: [M(e), M(m), K, B]
        lq = log_prob_sum(self.family, z.unsqueeze(1), q_loc[None, :, None], q_scale[None, :, None])
        lpz = self.log_prior(z)  # [M, K, B]
        flat = z.reshape(M * K, B, L)
        dec, ll = [], []
        for mod, x in zip(self.modalities, xs):
            params = mod.decode(flat)  # every expert's samples through every decoder
            dec.append(params)
            ll.append(mod.log_lik(x, params).reshape(M, K, B))
        log_qmix = torch.logsumexp(lq, dim=1) - math.log(M)  # [M, K, B]
        log_w = lpz + torch.stack(ll).sum(0) - log_qmix
        cache = {"lq": lq, "lpz": lpz, "dec": dec, "ll": ll, "q_loc": q_loc, "q_scale": q_scale}
        return PassState(log_w.reshape(M * K, B), z, eps, list(xs), posts, cache)

    def tuple_log_weights(self, state: PassState, tuples: Tensor,
                          eps: Tensor | None = None) -> Tensor:
        M, K = self.M, state.z.shape[1]
        c = state.cache
        rows = []
        for e in range(M):
            j = tuples[:, e]  # the member whose expert drew these samples
            z_e = state.z[e][:, j]  # [K, P, L]
            ll = 0
            lq = []
            for m, mod in enumerate(self.modalities):
                t = tuples[:, m]
                if m == e:
                    ll = ll + c["ll"][m][e][:, j]
                    lq.append(c["lq"][e, e][:, j])
                else:
                    loc, scale = c["dec"][m]
                    loc_e = loc[e * K:(e + 1) * K]
                    per_sample = scale.numel() > 1 and scale.shape[0] == M * K
                    scale_e = scale[e * K:(e + 1) * K] if per_sample else scale
                    ll = ll + mod.log_lik_pairs(state.xs[m], (loc_e, scale_e), j, t)
                    lq.append(log_prob_sum(self.family, z_e, c["q_loc"][m][t], c["q_scale"][m][t]))
            log_qmix = torch.logsumexp(torch.stack(lq), 0) - math.log(M)
            rows.append(c["lpz"][e][:, j] + ll - log_qmix)
        return torch.stack(rows).reshape(M * K, tuples.shape[0])

    def tuple_noise(self, state: PassState, tuples: Tensor, eps: Tensor | None) -> Tensor:
        # Expert e of tuple p reuses the samples of item tuples[p, e].
        return torch.stack([state.eps[e][:, tuples[:, e]] for e in range(self.M)])
