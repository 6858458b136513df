"""MMVAE: the uniform mixture of unimodal experts q(z | x_1..M) = 1/M Σ_m q(z | x_m).

Sampling is stratified: K samples from every expert (M*K in all). A sample z ~ q(z | x_e)
carries the log-weight log p(z) + Σ_m log p(x_m | z) - log (1/M Σ_m q(z | x_m)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import CrossRank, MultimodalVAE, PassState
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

    def joint_posterior(self, xs: list[Tensor]) -> None:
        """None: q(z | x_1..M) is the uniform mixture 1/M sum_m q(z | x_m), not one Laplace."""
        self._check_xs(xs)
        return None

    def joint_posterior_mean(self, xs: list[Tensor]) -> Tensor:
        """The mixture's mean, the average of the experts' locs: [B, L]."""
        return torch.stack([loc for loc, _ in self.encode(list(xs))]).mean(0)

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
        q = (c["q_loc"], c["q_scale"])
        rows = [self.expert_rows(state, e, tuples[:, e], tuples, state.xs, q) for e in range(M)]
        return torch.stack(rows).reshape(M * K, tuples.shape[0])

    def expert_rows(self, state: PassState, e: int, src: Tensor, tgt: Tensor, xs_t: list[Tensor],
                    q_t: tuple[Tensor, Tensor]) -> Tensor:
        """log w of the K samples that expert e drew for item ``src[p]`` in tuple p -> [K, P].

        src: [P] indices into ``state``'s batch (the member whose expert drew the samples);
        tgt: [P, M] indices into the target arrays xs_t (M tensors [B_t, ...]) and q_t
        (loc, scale [M, B_t, L]) — the same batch, or the global batch under data parallelism.
        Only the likelihoods of mismatched (sample, target) pairs are new work.
        """
        c = state.cache
        K = state.z.shape[1]
        z_e = state.z[e][:, src]  # [K, P, L]
        ll = c["ll"][e][e][:, src]  # matched: modality e's own item drew the samples
        lq = []
        for m, mod in enumerate(self.modalities):
            if m == e:
                lq.append(c["lq"][e, e][:, src])
                continue
            loc, scale = c["dec"][m]
            per_sample = scale is not None and scale.numel() > 1 and scale.shape[0] == self.M * K
            params = (loc[e * K:(e + 1) * K], scale[e * K:(e + 1) * K] if per_sample else scale)
            ll = ll + mod.log_lik_pairs(xs_t[m], params, src, tgt[:, m])
            lq.append(log_prob_sum(self.family, z_e, q_t[0][m][tgt[:, m]], q_t[1][m][tgt[:, m]]))
        log_qmix = torch.logsumexp(torch.stack(lq), 0) - math.log(self.M)
        return c["lpz"][e][:, src] + ll - log_qmix

    def tuple_log_weights_dist(self, state: PassState, tuples: Tensor, eps: Tensor | None,
                               group: CrossRank) -> Tensor:
        """Rows of expert e are computed by the rank that owns the tuple's member e (it holds
        that member's samples and decoder outputs) and summed across ranks with gradients."""
        q_g = (group.all_gather(state.cache["q_loc"].transpose(0, 1)).transpose(0, 1),
               group.all_gather(state.cache["q_scale"].transpose(0, 1)).transpose(0, 1))
        K, B = state.z.shape[1], state.z.shape[2]
        return self._owner_rows_dist(state, tuples, group, self.expert_rows, q_g, K, B)

    def reused_tuple_log_weights(self, state: PassState, tuples: Tensor) -> Tensor:
        """MMVAE's negatives always reuse its experts' samples: ``tuple_log_weights``."""
        return self.tuple_log_weights(state, tuples)

    def reused_tuple_log_weights_dist(self, state: PassState, tuples: Tensor, group: CrossRank) -> Tensor:
        return self.tuple_log_weights_dist(state, tuples, None, group)

    def tuple_noise(self, state: PassState, tuples: Tensor, eps: Tensor | None) -> Tensor:
        # Expert e of tuple p reuses the samples of item tuples[p, e].
        return torch.stack([state.eps[e][:, tuples[:, e]] for e in range(self.M)])

