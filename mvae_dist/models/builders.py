"""Built-in modalities and ``build_model(cfg)``: a dict registry, unknown names are errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..config import ModelConfig, parse_modality_spec
from .base import MultimodalVAE
from .jmvae import JMVAE, ConcatJointEncoder
from .mmvae import MMVAE
from .modality import Modality
from .mvae import MVAE
from .networks import (
    SENTENCE_LENGTH,
    MLPDecoder,
    MLPEncoder,
    SentenceDecoder,
    SentenceEncoder,
    SVHNDecoder,
    SVHNEncoder,
)

#: event shape of each built-in modality kind (text: token ids)
EVENT_SHAPES: dict[str, tuple[int, ...]] = {"mnist": (1, 28, 28), "svhn": (3, 32, 32),
                                            "text": (SENTENCE_LENGTH,)}


def event_shape(spec: str) -> tuple[int, ...]:
    kind, dim = parse_modality_spec(spec)
    return (dim,) if kind == "vector" else EVENT_SHAPES[kind]


def mnist_modality(latent_dim: int = 20, likelihood: str = "laplace", scale: float = 0.75,
                   llik_scaling: float = 1.0, hidden: int = 400, name: str = "mnist",
                   posterior_scale: str = "softplus") -> Modality:
    """The paper's MNIST networks: 784-400-L MLP encoder and L-400-784 sigmoid decoder."""
    return Modality(name, MLPEncoder(784, latent_dim, (hidden,), posterior_scale),
                    MLPDecoder(latent_dim, (1, 28, 28), (hidden,), scale), likelihood, llik_scaling)


def svhn_modality(latent_dim: int = 20, likelihood: str = "laplace", scale: float = 0.75,
                  llik_scaling: float = 1.0, name: str = "svhn",
                  posterior_scale: str = "softplus") -> Modality:
    """The paper's SVHN networks: 32-64-128 channel conv encoder and its transposed decoder."""
    return Modality(name, SVHNEncoder(latent_dim, scale=posterior_scale),
                    SVHNDecoder(latent_dim, scale=scale), likelihood, llik_scaling)


def vector_modality(dim: int, latent_dim: int = 20, likelihood: str = "normal", scale: float = 0.75,
                    llik_scaling: float = 1.0, hidden: int = 128, name: str | None = None,
                    posterior_scale: str = "softplus") -> Modality:
    """A generic D-dimensional vector with MLP encoder/decoder (unbounded loc)."""
    return Modality(name or f"vector{dim}", MLPEncoder(dim, latent_dim, (hidden,), posterior_scale),
                    MLPDecoder(latent_dim, (dim,), (hidden,), scale, bounded=False),
                    likelihood, llik_scaling)


def sentence_modality(vocab_size: int, latent_dim: int = 20, llik_scaling: float = 1.0, name: str = "text",
                      posterior_scale: str = "softplus") -> Modality:
    """A sentence of 32 token ids: the official MMVAE CUB sentence networks (without BatchNorm),
    the decoder's output layer tied to the encoder's word embedding, a categorical likelihood."""
    enc = SentenceEncoder(vocab_size, latent_dim, posterior_scale)
    dec = SentenceDecoder(latent_dim, vocab_size)
    dec.tie(enc.embedding)
    return Modality(name, enc, dec, "categorical", llik_scaling)


class _TokenFeatures(nn.Module):
    """JMVAE's branch for a sentence: token ids [B, T] -> 32-d embeddings -> MLP -> [B, hidden]."""

    def __init__(self, vocab_size: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, 32)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(32 * SENTENCE_LENGTH, hidden), nn.ReLU())

    def forward(self, x):
        return self.mlp(self.embedding(x.long()))


def _feature_net(spec: str, hidden: int) -> tuple[nn.Module, int]:
    """A modality's branch of the JMVAE joint encoder -> (module x -> [B, F], F)."""
    kind, dim = parse_modality_spec(spec)
    if kind == "svhn":
        body = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(), nn.Flatten(),
        )
        return body, 128 * 4 * 4
    if kind == "text":
        return _TokenFeatures(dim, hidden), hidden
    n_in = 784 if kind == "mnist" else dim
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU()), hidden


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> MultimodalVAE:
    """A model from a ModelConfig (or a mapping of its fields), validated first."""
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.build(cfg)  # validated when built
    L = cfg.latent_dim
    sizes = [_prod(event_shape(s)) for s in cfg.modalities]
    if cfg.llik_scaling == "auto":
        scaling = [max(sizes) / n for n in sizes]
    else:
        scaling = [float(v) for v in cfg.llik_scaling]
    mods = []
    for i, (spec, w) in enumerate(zip(cfg.modalities, scaling)):
        kind, dim = parse_modality_spec(spec)
        name = kind if cfg.modalities.count(spec) == 1 else f"{kind}{i}"
        ps = cfg.posterior_scale
        if kind == "mnist":
            mods.append(mnist_modality(L, cfg.likelihood, cfg.likelihood_scale, w, cfg.hidden, name, ps))
        elif kind == "svhn":
            mods.append(svhn_modality(L, cfg.likelihood, cfg.likelihood_scale, w, name, ps))
        elif kind == "text":
            mods.append(sentence_modality(dim, L, w, name, ps))
        else:
            mods.append(vector_modality(dim, L, cfg.likelihood, cfg.likelihood_scale, w,
                                        cfg.hidden, name if kind != "vector" else f"vector{i}", ps))
    family = cfg.posterior_family
    return _REGISTRY[cfg.name](cfg, mods, family)


def _prod(xs: tuple[int, ...]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _jmvae(cfg: ModelConfig, mods: list[Modality], family: str) -> JMVAE:
    nets = [_feature_net(s, cfg.hidden) for s in cfg.modalities]
    joint = ConcatJointEncoder([n for n, _ in nets], [d for _, d in nets], cfg.latent_dim, 512)
    return JMVAE(mods, cfg.latent_dim, joint, family, cfg.jmvae_alpha)


_REGISTRY = {
    "mmvae": lambda cfg, mods, family: MMVAE(mods, cfg.latent_dim, family, cfg.learn_prior),
    "mvae": lambda cfg, mods, family: MVAE(mods, cfg.latent_dim, family, cfg.mvae_unimodal_weight),
    "jmvae": _jmvae,
}
