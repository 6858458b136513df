"""The paper's unimodal networks (Table 3; as in the official MMVAE code) and a generic MLP.

Encoders: x [B, *event] -> (loc [B, L], scale [B, L]). Decoders: z [..., L] -> (loc [..., *event],
scale), with a fixed scalar likelihood scale (0.75 in the official MNIST-SVHN code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import POSTERIOR_SCALES  # the one list of kinds; config checks it too

_MIN_SCALE = 1e-4
_ETA = 1e-6  # the official MMVAE code's Constants.eta

#: Rows per decoder call on the CPU. The decoders see K·B (MMVAE: M·K·B) latent samples at once;
#: on the CPU one call over all of them moves activations of hundreds of MB per layer, and the
#: step runs 2x faster in row chunks whose activations stay in cache (docs/benchmarks.md, "Side
#: by side with MultiVae": MMVAE K = 30, B = 128: 4.0 s -> 1.9 s per step; 128-256 rows were
#: best, 768 and more lost most of the gain). Accelerators get one call.
CPU_DECODE_ROWS = 256


def in_row_chunks(fn, flat: Tensor, rows: int | None = None) -> Tensor:
    """``fn`` over flat [n, ...] in chunks of ``rows`` rows (default ``CPU_DECODE_ROWS``) on the
    CPU, concatenated -> [n, ...].

    The same numbers as ``fn(flat)`` for a row-wise ``fn`` (each output row depends on its input
    row only); on other devices, or for n <= rows, one call.
    """
    rows = rows or CPU_DECODE_ROWS
    if flat.device.type != "cpu" or flat.shape[0] <= rows:
        return fn(flat)
    return torch.cat([fn(c) for c in flat.split(rows)])


def posterior_scale(raw: Tensor, kind: str = "softplus") -> Tensor:
    """Posterior scale from an unconstrained output raw [B, L] -> [B, L].

    "softplus": softplus(raw) + 1e-4 (each dimension free, bounded away from 0);
    "softmax": softmax(raw over L) * L + 1e-6, the official MMVAE parameterisation: the scales
    of one item sum to L (+ L·eta), so no dimension's scale can blow up early in training.
    """
    if kind == "softplus":
        return F.softplus(raw) + _MIN_SCALE
    if kind == "softmax":
        return F.softmax(raw, dim=-1) * raw.shape[-1] + _ETA
    raise ValueError(f"unknown posterior scale {kind!r}; expected one of {', '.join(POSTERIOR_SCALES)}")


class _FixedScale(nn.Module):
    """Holds the decoder's scalar likelihood scale as a buffer (moves with .to(device))."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"likelihood scale must be > 0, got {scale}")
        self.register_buffer("scale", torch.tensor(float(scale)), persistent=False)


class MLPEncoder(nn.Module):
    """x [B, *event] -> flatten -> hidden ReLU layers -> (loc, scale) [B, L]."""

    def __init__(self, in_features: int, latent_dim: int, hidden: Sequence[int] = (400,),
                 scale: str = "softplus") -> None:
        super().__init__()
        posterior_scale(torch.zeros(1, 1), scale)  # an unknown kind fails here, not in forward
        self.scale_kind = scale
        dims = [in_features, *hidden]
        self.body = nn.Sequential(
            *[m for a, b in zip(dims[:-1], dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        )
        self.loc = nn.Linear(dims[-1], latent_dim)
        self.raw_scale = nn.Linear(dims[-1], latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x.flatten(1).to(self.loc.weight.dtype))
        return self.loc(h), posterior_scale(self.raw_scale(h), self.scale_kind)


class MLPDecoder(_FixedScale):
    """z [..., L] -> hidden ReLU layers -> loc [..., *event] (sigmoid if ``bounded``), fixed scale."""

    def __init__(
        self, latent_dim: int, event_shape: Sequence[int], hidden: Sequence[int] = (400,),
        scale: float = 0.75, bounded: bool = True,
    ) -> None:
        super().__init__(scale)
        self.event_shape = tuple(event_shape)
        dims = [latent_dim, *hidden]
        self.body = nn.Sequential(
            *[m for a, b in zip(dims[:-1], dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        )
        self.out = nn.Linear(dims[-1], math.prod(self.event_shape))
        self.bounded = bounded

    def _rows(self, z: Tensor) -> Tensor:
        h = self.out(self.body(z))
        return torch.sigmoid(h) if self.bounded else h

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        loc = in_row_chunks(self._rows, z.reshape(-1, z.shape[-1]))
        return loc.reshape(*z.shape[:-1], *self.event_shape), self.scale


class SVHNEncoder(nn.Module):
    """x [B, 3, 32, 32] -> conv 32-64-128 (4x4, stride 2) -> 4x4 conv heads -> (loc, scale) [B, L]."""

    def __init__(self, latent_dim: int = 20, channels: int = 3, scale: str = "softplus") -> None:
        super().__init__()
        posterior_scale(torch.zeros(1, 1), scale)
        self.scale_kind = scale
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.ReLU(),  # 32 -> 16
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),  # 16 -> 8
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),  # 8 -> 4
        )
        self.loc = nn.Conv2d(128, latent_dim, 4, 1, 0)  # 4 -> 1
        self.raw_scale = nn.Conv2d(128, latent_dim, 4, 1, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x.to(self.loc.weight.dtype))
        return self.loc(h).flatten(1), posterior_scale(self.raw_scale(h).flatten(1), self.scale_kind)


class SVHNDecoder(_FixedScale):
    """z [..., L] -> transposed convs 128-64-32-3 -> sigmoid loc [..., 3, 32, 32], fixed scale."""

    def __init__(self, latent_dim: int = 20, channels: int = 3, scale: float = 0.75) -> None:
        super().__init__(scale)
        self.body = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 128, 4, 1, 0), nn.ReLU(),  # 1 -> 4
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),  # 4 -> 8
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),  # 8 -> 16
            nn.ConvTranspose2d(32, channels, 4, 2, 1),  # 16 -> 32
        )

    def _rows(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.body(z.reshape(*z.shape, 1, 1)))  # [n, L] -> [n, 3, 32, 32]

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        lead = z.shape[:-1]
        h = in_row_chunks(self._rows, z.reshape(-1, z.shape[-1]))  # [prod(lead), 3, 32, 32]
        return h.reshape(*lead, *h.shape[1:]), self.scale


class LinearGaussianEncoder(nn.Module):
    """x [B, D] -> (W x + b, exp(log_scale)) [B, L]: an affine Gaussian posterior for tests."""

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_features, latent_dim)
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc = self.lin(x)
        return loc, self.log_scale.exp().expand_as(loc)


class LinearGaussianDecoder(nn.Module):
    """z [..., L] -> (A z + c, exp(log_scale) [D]): the likelihood of a linear-Gaussian model."""

    def __init__(self, latent_dim: int, out_features: int) -> None:
        super().__init__()
        self.lin = nn.Linear(latent_dim, out_features)
        self.log_scale = nn.Parameter(torch.zeros(out_features))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.lin(z), self.log_scale.exp()


# ----------------------------------------------------------------------------- sentences
#: The official MMVAE CUB sentence networks' geometry: 32 tokens x 128-d word embeddings.
SENTENCE_LENGTH = 32
EMBEDDING_DIM = 128
#: Token ids of the official MMVAE CUB vocabulary's special tokens. Unknown words map to
#: "<exc>" = 0, which is also the embedding's padding index and is not scored by the
#: categorical likelihood (the official code's ``ignore_index=0``); sentences end with "<eos>"
#: and are filled up to SENTENCE_LENGTH with "<pad>".
UNK, PAD, EOS = 0, 1, 2
SPECIAL_TOKENS = ("<exc>", "<pad>", "<eos>")


class SentenceEncoder(nn.Module):
    """Tokens [B, 32] (int) -> word embeddings [B, 1, 32, 128] -> 5 convs -> (loc, scale) [B, L].

    The official MMVAE CUB sentence encoder (32-64-128-128-128 channels: 4x4 stride-2 convs
    down to 4x16, then 1x4 stride-(1, 2) convs down to 4x4, 4x4 conv heads) without its
    BatchNorm layers: batch statistics make one item's posterior depend on the rest of the
    batch, which the per-item bounds (IWAE, the contrastive negatives) must not.
    """

    def __init__(self, vocab_size: int, latent_dim: int, scale: str = "softplus", base: int = 32) -> None:
        super().__init__()
        posterior_scale(torch.zeros(1, 1), scale)
        self.scale_kind = scale
        self.embedding = nn.Embedding(vocab_size, EMBEDDING_DIM, padding_idx=UNK)
        self.body = nn.Sequential(
            nn.Conv2d(1, base, 4, 2, 1), nn.ReLU(),  # 32 x 128 -> 16 x 64
            nn.Conv2d(base, base * 2, 4, 2, 1), nn.ReLU(),  # -> 8 x 32
            nn.Conv2d(base * 2, base * 4, 4, 2, 1), nn.ReLU(),  # -> 4 x 16
            nn.Conv2d(base * 4, base * 4, (1, 4), (1, 2), (0, 1)), nn.ReLU(),  # -> 4 x 8
            nn.Conv2d(base * 4, base * 4, (1, 4), (1, 2), (0, 1)), nn.ReLU(),  # -> 4 x 4
        )
        self.loc = nn.Conv2d(base * 4, latent_dim, 4, 1, 0)
        self.raw_scale = nn.Conv2d(base * 4, latent_dim, 4, 1, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(self.embedding(x.long()).unsqueeze(1))
        return self.loc(h).flatten(1), posterior_scale(self.raw_scale(h).flatten(1), self.scale_kind)


class SentenceDecoder(nn.Module):
    """z [..., L] -> transposed convs to [n, 1, 32, 128] -> per-token logits [..., 32, V].

    The official MMVAE CUB sentence decoder without BatchNorm (see SentenceEncoder): transposed
    convs mirror the encoder up to 32 x 128, then a linear map from the 128-d embedding space to
    the vocabulary whose weight ``tie`` shares with the encoder's embedding (as the official
    ``tie_modules``). Returns (logits, None): a categorical likelihood has no scale.
    """

    def __init__(self, latent_dim: int, vocab_size: int, base: int = 32) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.body = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, base * 4, 4, 1, 0), nn.ReLU(),  # 1 x 1 -> 4 x 4
            nn.ConvTranspose2d(base * 4, base * 4, (1, 4), (1, 2), (0, 1)), nn.ReLU(),  # -> 4 x 8
            nn.ConvTranspose2d(base * 4, base * 4, (1, 4), (1, 2), (0, 1)), nn.ReLU(),  # -> 4 x 16
            nn.ConvTranspose2d(base * 4, base * 2, 4, 2, 1), nn.ReLU(),  # -> 8 x 32
            nn.ConvTranspose2d(base * 2, base, 4, 2, 1), nn.ReLU(),  # -> 16 x 64
            nn.ConvTranspose2d(base, 1, 4, 2, 1), nn.ReLU(),  # -> 32 x 128
        )
        self.to_vocab = nn.Linear(EMBEDDING_DIM, vocab_size)

    def tie(self, embedding: nn.Embedding) -> None:
        """Share the output layer's weight [V, 128] with an encoder's embedding [V, 128]."""
        self.to_vocab.weight = embedding.weight

    def _rows(self, z: Tensor) -> Tensor:
        h = self.body(z.reshape(*z.shape, 1, 1)).reshape(z.shape[0], SENTENCE_LENGTH, EMBEDDING_DIM)
        return self.to_vocab(h)  # [n, 32, V]

    def forward(self, z: Tensor) -> tuple[Tensor, None]:
        lead = z.shape[:-1]
        logits = in_row_chunks(self._rows, z.reshape(-1, z.shape[-1]))
        return logits.reshape(*lead, SENTENCE_LENGTH, self.vocab_size), None
