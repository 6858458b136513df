"""Typed, frozen configuration sections; YAML plus ``key=value`` overrides; validated once.

A bad value raises ConfigError naming the key, e.g. ``objective.gamma must be > 1, got 0.5``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

MODEL_NAMES = ("mmvae", "mvae", "jmvae")
OBJECTIVES = ("baseline", "contrastive")


@dataclass(frozen=True)
class ModelConfig:
    """Which multimodal VAE and which modalities.

    modalities: built-in names "mnist" (784-400-L MLP), "svhn" (32-64-128 conv net) or
    "vector:D" (a D-dimensional vector with an MLP). family: posterior and prior family,
    default laplace for MMVAE and normal for MVAE / JMVAE. llik_scaling: "auto" rescales each
    modality's log-likelihood by (largest event size / its event size), as the MMVAE code does
    for MNIST-SVHN; or a list of one number per modality.
    """

    name: str = "mmvae"
    modalities: tuple[str, ...] = ("mnist", "svhn")
    latent_dim: int = 20
    family: str | None = None
    likelihood: str = "laplace"
    likelihood_scale: float = 0.75
    llik_scaling: Any = "auto"
    hidden: int = 400
    jmvae_alpha: float = 0.01
    mvae_unimodal_weight: float = 1.0

    def validate(self) -> ModelConfig:
        if self.name not in MODEL_NAMES:
            raise ConfigError(f"model.name must be one of {', '.join(MODEL_NAMES)}, got {self.name!r}")
        if len(self.modalities) < 2:
            raise ConfigError(
                f"model.modalities needs at least 2 entries, got {list(self.modalities)}"
            )
        for spec in self.modalities:
            parse_modality_spec(spec)
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be >= 1, got {self.latent_dim}")
        if self.family not in (None, "normal", "laplace"):
            raise ConfigError(f"model.family must be 'normal' or 'laplace', got {self.family!r}")
        if self.name == "mvae" and self.family == "laplace":
            raise ConfigError("model.family must be 'normal' for mvae (product of experts), got 'laplace'")
        if self.likelihood not in ("normal", "laplace"):
            raise ConfigError(f"model.likelihood must be 'normal' or 'laplace', got {self.likelihood!r}")
        if not self.likelihood_scale > 0:
            raise ConfigError(f"model.likelihood_scale must be > 0, got {self.likelihood_scale}")
        if self.llik_scaling != "auto":
            vals = self.llik_scaling
            if not isinstance(vals, (list, tuple)) or len(vals) != len(self.modalities) or not all(
                isinstance(v, (int, float)) and v > 0 for v in vals
            ):
                n = len(self.modalities)
                raise ConfigError(f"model.llik_scaling must be 'auto' or {n} positive numbers, got {vals!r}")
        if self.hidden < 1:
            raise ConfigError(f"model.hidden must be >= 1, got {self.hidden}")
        if self.jmvae_alpha < 0:
            raise ConfigError(f"model.jmvae_alpha must be >= 0, got {self.jmvae_alpha}")
        return self

    @property
    def posterior_family(self) -> str:
        return self.family or ("laplace" if self.name == "mmvae" else "normal")


@dataclass(frozen=True)
class ObjectiveConfig:
    """The training objective: baseline bound or contrastive eq. 4 (paper defaults γ=2, N=5, K=30)."""

    name: str = "contrastive"
    estimator: str = "iwae"
    gamma: float = 2.0
    N: int = 5
    K: int = 30
    baseline_estimator: str = "iwae"
    dreg: bool = False
    looser: bool = False

    def validate(self) -> ObjectiveConfig:
        if self.name not in OBJECTIVES:
            raise ConfigError(f"objective.name must be one of {', '.join(OBJECTIVES)}, got {self.name!r}")
        if self.estimator not in ("iwae", "cubo", "elbo"):
            raise ConfigError(f"objective.estimator must be 'iwae', 'cubo' or 'elbo', got {self.estimator!r}")
        if self.baseline_estimator not in ("iwae", "elbo"):
            raise ConfigError(
                f"objective.baseline_estimator must be 'iwae' or 'elbo', got {self.baseline_estimator!r}"
            )
        if not self.gamma > 1:
            raise ConfigError(f"objective.gamma must be > 1, got {self.gamma}")
        if self.N < 1:
            raise ConfigError(f"objective.N must be >= 1, got {self.N}")
        if self.K < 1:
            raise ConfigError(f"objective.K must be >= 1, got {self.K}")
        if self.dreg and (self.name != "baseline" or self.baseline_estimator != "iwae" or self.looser):
            raise ConfigError("objective.dreg applies to the baseline objective with the pooled iwae bound")
        return self


def parse_modality_spec(spec: str) -> tuple[str, int | None]:
    """'mnist' | 'svhn' | 'vector:D' -> (kind, D or None); ConfigError naming a bad spec."""
    kind, _, arg = str(spec).partition(":")
    if kind in ("mnist", "svhn") and not arg:
        return kind, None
    if kind == "vector" and arg.isdigit() and int(arg) > 0:
        return kind, int(arg)
    raise ConfigError(f"model.modalities: unknown modality {spec!r}; expected mnist, svhn or vector:D")


# ----------------------------------------------------------------- generic loading
def from_mapping(cls: type, data: Mapping[str, Any] | None, section: str) -> Any:
    """Build dataclass ``cls`` from a mapping, naming unknown keys and mistyped values."""
    data = dict(data or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown key {section}.{unknown[0]}; known: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    return obj.validate() if hasattr(obj, "validate") else obj


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} has a bad value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        is_int_text = isinstance(value, str) and value.lstrip("-").isdigit()
        if isinstance(value, bool) or not (isinstance(value, int) or is_int_text):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


