"""A linear-Gaussian multimodal model with exact marginals: the reference for testing estimators.

    z ~ N(0, I_L),   x_m = A_m z + a_m + N(0, diag(s_m^2))   for m = 1..M

so (x_1..M) is jointly Gaussian and log p(x_1..M), log p(x_m) and the PMI have closed forms.
Its encoders are affine Gaussian maps; ``exact_experts`` sets them so that the product of the
experts and the prior is the exact posterior (possible when A_m^T A_m is diagonal).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from .modality import Modality
from .networks import LinearGaussianDecoder, LinearGaussianEncoder


@dataclass
class LinearGaussianParams:
    """A_m [D_m, L], a_m [D_m], s_m [D_m] per modality."""

    A: list[Tensor]
    a: list[Tensor]
    s: list[Tensor]

    @property
    def latent_dim(self) -> int:
        return self.A[0].shape[1]

    def joint(self, ms: list[int] | None = None) -> MultivariateNormal:
        """The exact Gaussian marginal of the modalities ``ms`` (all if None), concatenated."""
        ms = list(range(len(self.A))) if ms is None else ms
        A = torch.cat([self.A[m] for m in ms])
        cov = A @ A.T + torch.diag(torch.cat([self.s[m] ** 2 for m in ms]))
        return MultivariateNormal(torch.cat([self.a[m] for m in ms]), covariance_matrix=cov)

    def log_joint(self, xs: list[Tensor]) -> Tensor:
        """Exact log p(x_1..M): list of [B, D_m] -> [B]."""
        return self.joint().log_prob(torch.cat(xs, dim=-1))

    def log_marginal(self, x: Tensor, m: int) -> Tensor:
        """Exact log p(x_m): [B, D_m] -> [B]."""
        return self.joint([m]).log_prob(x)

    def pmi(self, xs: list[Tensor]) -> Tensor:
        """Exact log p(x_1..M) - Σ_m log p(x_m): [B]."""
        return self.log_joint(xs) - sum(self.log_marginal(x, m) for m, x in enumerate(xs))

    def sample(self, B: int, generator: torch.Generator | None = None) -> tuple[list[Tensor], Tensor]:
        """(xs: list of [B, D_m], z [B, L]) drawn from the model."""
        z = torch.randn(B, self.latent_dim, generator=generator, dtype=self.A[0].dtype)
        xs = [z @ A.T + a + s * torch.randn(B, A.shape[0], generator=generator, dtype=A.dtype)
              for A, a, s in zip(self.A, self.a, self.s)]
        return xs, z


def random_params(dims: list[int], latent_dim: int, *, orthogonal: bool = True,
                  generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float64) -> LinearGaussianParams:
    """Random parameters; ``orthogonal`` gives A_m orthogonal columns (A_m^T A_m diagonal)."""
    A, a, s = [], [], []
    for D in dims:
        M = torch.randn(D, latent_dim, generator=generator, dtype=dtype)
        if orthogonal:
            if D < latent_dim:
                raise ValueError(f"orthogonal columns need D >= L, got D={D}, L={latent_dim}")
            q, _ = torch.linalg.qr(M)
            M = q * (0.5 + 1.5 * torch.rand(latent_dim, generator=generator, dtype=dtype))
        A.append(M)
        a.append(0.5 * torch.randn(D, generator=generator, dtype=dtype))
        if orthogonal:  # isotropic noise keeps the expert's precision A^T A / s^2 diagonal
            s.append(torch.full((D,), 0.3 + 0.4 * float(torch.rand((), generator=generator)), dtype=dtype))
        else:
            s.append(0.3 + 0.4 * torch.rand(D, generator=generator, dtype=dtype))
    return LinearGaussianParams(A, a, s)


def linear_modalities(params: LinearGaussianParams) -> list[Modality]:
    """Modalities whose decoders are the model's exact likelihoods (encoders left random)."""
    L = params.latent_dim
    mods = []
    for m, (A, a, s) in enumerate(zip(params.A, params.a, params.s)):
        enc = LinearGaussianEncoder(A.shape[0], L).to(A.dtype)
        dec = LinearGaussianDecoder(L, A.shape[0]).to(A.dtype)
        with torch.no_grad():
            dec.lin.weight.copy_(A)
            dec.lin.bias.copy_(a)
            dec.log_scale.copy_(s.log())
        mods.append(Modality(f"x{m}", enc, dec, likelihood="normal"))
    return mods


def exact_experts(mods: list[Modality], params: LinearGaussianParams) -> None:
    """Set each encoder to the Gaussian factor p(x_m | z) as a function of z.

    With A_m^T A_m diagonal, the product of these experts and the prior is the exact posterior.
    """
    for mod, A, a, s in zip(mods, params.A, params.a, params.s):
        prec = (A.T @ (A / s[:, None] ** 2)).diagonal()  # [L]
        W = (A / s[:, None] ** 2).T / prec[:, None]  # [L, D]: (A^T S^-1 A)^-1 A^T S^-1
        with torch.no_grad():
            mod.encoder.lin.weight.copy_(W)
            mod.encoder.lin.bias.copy_(-W @ a)
            mod.encoder.log_scale.copy_(-0.5 * prec.log())


def exact_posteriors(mods: list[Modality], params: LinearGaussianParams) -> None:
    """Set each encoder to the exact unimodal posterior p(z | x_m) (prior included)."""
    for mod, A, a, s in zip(mods, params.A, params.a, params.s):
        prec = 1.0 + (A.T @ (A / s[:, None] ** 2)).diagonal()  # [L]
        W = (A / s[:, None] ** 2).T / prec[:, None]
        with torch.no_grad():
            mod.encoder.lin.weight.copy_(W)
            mod.encoder.lin.bias.copy_(-W @ a)
            mod.encoder.log_scale.copy_(-0.5 * prec.log())
