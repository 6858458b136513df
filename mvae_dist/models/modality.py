"""A modality: encoder, decoder, likelihood family and likelihood scaling.

Encoders map x [B, *event] to posterior parameters (loc, scale), each [B, L]. Decoders map
z [..., L] to likelihood parameters: (loc [..., *event], scale broadcastable to loc) for the
"normal" and "laplace" likelihoods; (logits [..., T, V], None) for "categorical", whose data
are token ids x [B, T] (int) over a vocabulary of V (a sentence: models/networks.py).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .distributions import _LOG_2, _LOG_2PI

#: likelihood families of a modality (the posterior families are distributions.FAMILIES)
LIKELIHOODS = ("normal", "laplace", "categorical")
#: token id the categorical likelihood does not score (the official MMVAE CUB code's
#: ``ignore_index=0``, its "<exc>" token for words outside the vocabulary): networks.UNK
_UNSCORED_TOKEN = 0

# Pairs scored per chunk in the mismatched-likelihood kernel: K * chunk * D floats at a time.
_PAIR_CHUNK_ELEMENTS = 1 << 20


def _autocast(x: Tensor, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on x's device type, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, dtype=dtype)


def _full(t: Tensor | None) -> Tensor | None:
    """A network output in reduced precision (bf16/fp16) as float32; anything else as it is
    (float64 stays float64): distributions, likelihoods and the contrastive kernels never run
    in reduced precision."""
    if t is not None and t.dtype in (torch.bfloat16, torch.float16):
        return t.float()
    return t


class Modality(nn.Module):
    """One observed modality of a multimodal VAE.

    Args:
        name: a label used in logs and artifacts.
        encoder: module, x [B, *event] -> (loc [B, L], scale [B, L]) of q(z | x).
        decoder: module, z [..., L] -> (loc [..., *event], scale broadcastable to loc) of p(x | z).
        likelihood: "normal", "laplace" or "categorical" (token ids; decoder gives logits).
        llik_scaling: multiplies log p(x | z) (MMVAE rescales the smaller modality, e.g. 3072/784).
    """

    def __init__(
        self, name: str, encoder: nn.Module, decoder: nn.Module, likelihood: str = "laplace",
        llik_scaling: float = 1.0,
    ) -> None:
        super().__init__()
        self.name = name
        self.encoder = encoder
        self.decoder = decoder
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood of modality {name!r} {likelihood!r}; "
                             f"expected one of {', '.join(LIKELIHOODS)}")
        self.likelihood = likelihood
        if not llik_scaling > 0:
            raise ValueError(f"llik_scaling of modality {name!r} must be > 0, got {llik_scaling}")
        self.llik_scaling = float(llik_scaling)
        #: set by models.compute.configure_compute: the networks' autocast dtype (None: none)
        #: and whether image inputs go to the encoder channels-last
        self.compute_dtype: torch.dtype | None = None
        self.channels_last = False

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | x) parameters: x [B, *event] -> (loc [B, L], scale [B, L])."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(x, self.compute_dtype):
            loc, scale = self.encoder(x)
        return _full(loc), _full(scale)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """p(x | z) parameters: z [K, B, L] -> (loc [K, B, *event], scale broadcastable)."""
        with _autocast(z, self.compute_dtype):
            loc, scale = self.decoder(z)
        return _full(loc), _full(scale)

    def mean(self, params: tuple[Tensor, Tensor | None]) -> Tensor:
        """The typical x of p(x | z): loc [..., *event], or for "categorical" the most likely
        token at every position, int64 [..., T] (the categorical's mode)."""
        loc, _ = params
        return loc.argmax(-1) if self.likelihood == "categorical" else loc

    def log_lik(self, x: Tensor, params: tuple[Tensor, Tensor]) -> Tensor:
        """Scaled log p(x_b | z_kb) summed over the event: x [B, *event], loc [K, B, *event] -> [K, B]."""
        if self.likelihood == "categorical":
            items = torch.arange(x.shape[0], device=x.device)
            return self.log_lik_pairs(x, params, items, items)
        loc, scale = params
        K, B = loc.shape[:2]
        loc = loc.reshape(K, B, -1)
        x = x.reshape(1, B, -1).to(loc.dtype)
        scale = _flat_scale(scale, K, B)
        if self.likelihood == "normal":
            ll = -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - 0.5 * _LOG_2PI
        else:
            ll = -(x - loc).abs() / scale - torch.log(scale) - _LOG_2
        if ll.shape[-1] != loc.shape[-1]:
            ll = ll.expand(K, B, loc.shape[-1])
        return self.llik_scaling * ll.sum(-1)

    def log_lik_pairs(
        self, x: Tensor, params: tuple[Tensor, Tensor], src: Tensor, tgt: Tensor
    ) -> Tensor:
        """Scaled log p(x_{tgt[p]} | z_{k, src[p]}) for P (source, target) pairs -> [K, P].

        x: [B, *event]; loc: [K, B, *event]; src, tgt: [P] long. The same numbers as
        ``log_lik(x[tgt], (loc[:, src], scale[:, src]))`` without materialising the gathered
        [K, P, D] likelihood parameters for the backward pass (they are recomputed in chunks).
        Categorical: x [B, T] token ids, logits [K, B, T, V]; the sum over the T positions of
        log softmax(logits)[token], positions holding the unscored token 0 left out.
        """
        if self.likelihood == "categorical":
            return self.llik_scaling * _categorical_pairs(x, params[0], src, tgt)
        loc, scale = params
        K, B = loc.shape[:2]
        D = loc[0, 0].numel()
        loc = loc.reshape(K, B, D)
        x = x.reshape(x.shape[0], D).to(loc.dtype)
        power = 2 if self.likelihood == "normal" else 1
        if scale.numel() == 1:
            # Fixed scalar scale (the paper's decoders use 0.75): weight the distance outside.
            s = scale.reshape(())
            dist = _PairDistance.apply(loc, None, x, src, tgt, power)
            if power == 2:
                ll = -0.5 * dist / s**2 - D * (torch.log(s) + 0.5 * _LOG_2PI)
            else:
                ll = -dist / s - D * (torch.log(s) + _LOG_2)
        else:
            s = _flat_scale(scale, K, B).expand(K, B, D)
            weight = 0.5 * s.pow(-2) if power == 2 else s.reciprocal()
            const = torch.log(s).sum(-1) + D * (0.5 * _LOG_2PI if power == 2 else _LOG_2)  # [K, B]
            dist = _PairDistance.apply(loc, weight, x, src, tgt, power)
            ll = -dist - const[:, src]
        return self.llik_scaling * ll


def _categorical_pairs(x: Tensor, logits: Tensor, src: Tensor, tgt: Tensor) -> Tensor:
    """Σ_t log softmax(logits[k, src_p, t])[x[tgt_p, t]] over scored positions -> [K, P].

    Gathers the K·P·T target logits and subtracts log Σ_v exp(logits) of the source rows, so no
    [K, P, T, V] array is made (the normaliser is [K, B, T]).
    """
    K, _, T, _ = logits.shape
    tokens = x[tgt].long()  # [P, T]
    lse = torch.logsumexp(logits, -1)  # [K, B, T]
    picked = logits[:, src.unsqueeze(1), torch.arange(T, device=logits.device), tokens]  # [K, P, T]
    ll = picked - lse[:, src]
    return (ll * (tokens != _UNSCORED_TOKEN).to(ll.dtype)).sum(-1)


def _flat_scale(scale: Tensor, K: int, B: int) -> Tensor:
    """Bring a decoder scale to [K, B, D] or a broadcastable [1, 1, 1] / [K, B, 1]-like shape."""
    if scale.numel() == 1:
        return scale.reshape(1, 1, 1)
    if scale.dim() >= 2 and scale.shape[0] == K and scale.shape[1] == B:
        return scale.reshape(K, B, -1)
    return scale.reshape(1, 1, -1)


class _PairDistance(torch.autograd.Function):
    """d[k, p] = sum_d w[k, src_p, d] * |x[tgt_p, d] - loc[k, src_p, d]|^power, power in {1, 2}.

    Works item-major ([B, K, D], so gathers and scatter-adds move whole contiguous rows) in
    chunks of pairs; the backward pass recomputes the differences instead of saving [K, P, D]
    intermediates. ``w`` may be None (all ones). No gradient flows to x (data).
    """

    @staticmethod
    def forward(ctx, loc, w, x, src, tgt, power):  # type: ignore[override]
        K, _, D = loc.shape
        P = src.shape[0]
        loc_t = loc.detach().transpose(0, 1).contiguous()  # [B, K, D]
        w_t = None if w is None else w.detach().transpose(0, 1).contiguous()
        out = loc.new_empty(P, K)
        chunk = max(1, _PAIR_CHUNK_ELEMENTS // max(1, K * D))
        for a in range(0, P, chunk):
            s, t = src[a : a + chunk], tgt[a : a + chunk]
            diff = x[t].unsqueeze(1) - loc_t[s]  # [c, K, D]
            f = diff.abs_() if power == 1 else diff.square_()
            if w_t is not None:
                f.mul_(w_t[s])
            torch.sum(f, -1, out=out[a : a + chunk])
        ctx.save_for_backward(loc_t, w_t, x, src, tgt)
        ctx.power = power
        return out.t()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        loc_t, w_t, x, src, tgt = ctx.saved_tensors
        power = ctx.power
        _, K, D = loc_t.shape
        P = src.shape[0]
        need_loc, need_w = ctx.needs_input_grad[0], w_t is not None and ctx.needs_input_grad[1]
        grad_loc = torch.zeros_like(loc_t) if need_loc else None  # [B, K, D]
        grad_w = torch.zeros_like(w_t) if need_w else None
        g_all = grad_out.t().contiguous()  # [P, K]
        chunk = max(1, _PAIR_CHUNK_ELEMENTS // max(1, K * D))
        for a in range(0, P, chunk):
            s, t = src[a : a + chunk], tgt[a : a + chunk]
            g = g_all[a : a + chunk].unsqueeze(-1)  # [c, K, 1]
            diff = loc_t[s] - x[t].unsqueeze(1)  # [c, K, D]; d f / d loc has this sign
            if need_w:
                f = diff.abs() if power == 1 else diff.square()
                grad_w.index_add_(0, s, f.mul_(g))
            if need_loc:
                dl = diff.sign_() if power == 1 else diff.mul_(2.0)
                if w_t is not None:
                    dl.mul_(w_t[s])
                grad_loc.index_add_(0, s, dl.mul_(g))
        return (
            None if grad_loc is None else grad_loc.transpose(0, 1),
            None if grad_w is None else grad_w.transpose(0, 1),
            None, None, None, None,
        )
