"""Typed, frozen configuration sections; YAML plus ``key=value`` overrides; validated once.

A bad value raises ConfigError naming the key, e.g. ``objective.gamma must be > 1, got 0.5``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

MODEL_NAMES = ("mmvae", "mvae", "jmvae")
OBJECTIVES = ("baseline", "contrastive")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: how encoders turn their unconstrained scale output into a posterior scale (models/networks.py)
POSTERIOR_SCALES = ("softplus", "softmax")


class _Validated:
    """Config sections validate themselves when built (``dataclasses.replace`` included), so an
    invalid section cannot exist; ``validate()`` raises ConfigError naming the key."""

    def __post_init__(self) -> None:
        self.validate()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ModelConfig(_Validated):
    """Which multimodal VAE and which modalities.

    modalities: built-in names "mnist" (784-400-L MLP), "svhn" (32-64-128 conv net) or
    "vector:D" (a D-dimensional vector with an MLP). family: posterior and prior family,
    default laplace for MMVAE and normal for MVAE / JMVAE. llik_scaling: "auto" rescales each
    modality's log-likelihood by (largest event size / its event size), as the MMVAE code does
    for MNIST-SVHN; or a list of one number per modality. posterior_scale: how encoders make the
    posterior scale, "softplus" or "softmax" (softmax over latent dims x L + 1e-6, the official
    MMVAE code's). learn_prior: learn the prior's scale (softmax x L; MMVAE only, as the
    official code's --learn-prior).
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
    posterior_scale: str = "softplus"
    learn_prior: bool = False

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
        if self.posterior_scale not in POSTERIOR_SCALES:
            raise ConfigError(f"model.posterior_scale must be one of {', '.join(POSTERIOR_SCALES)}, "
                              f"got {self.posterior_scale!r}")
        if self.learn_prior and self.name != "mmvae":
            raise ConfigError(f"model.learn_prior applies to mmvae only (the prior is the product's "
                              f"expert in mvae and jmvae's KL target), got model.name {self.name!r}")
        return self

    @property
    def posterior_family(self) -> str:
        return self.family or ("laplace" if self.name == "mmvae" else "normal")


@dataclass(frozen=True)
class ObjectiveConfig(_Validated):
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
        if self.dreg and (self.name != "baseline" or self.baseline_estimator != "iwae"):
            raise ConfigError("objective.dreg applies to the baseline objective with the iwae bound (in the "
                              "contrastive objective the negatives reuse the positives' samples)")
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
    return cls(**kwargs)  # a config section validates itself when built


def _finite(value: Any, key: str) -> Any:
    """``value``; ConfigError naming ``key`` when it is or holds an infinite or NaN number."""
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, (list, tuple)):
            _finite(v, key)
        elif isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key} must be a finite number, got {v}")
    return value


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return _finite(value, key)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        types = [a for a in args if a is not type(None)]
        for a in types:
            try:
                return _coerce(value, a, key)
            except ConfigError:
                if len(types) == 1:  # e.g. float | None: that type's own message
                    raise
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
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
        return _finite(number, key)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value




@dataclass(frozen=True)
class DataConfig(_Validated):
    """Where the shards are and how each worker reads them. batch_size is per worker."""

    url: str = "data/embedded"
    train_split: str = "train"
    test_split: str = "test"
    batch_size: int = 128
    loader_workers: int = 0
    shuffle_buffer: int = 2000
    storage_options_file: str | None = None

    def validate(self) -> DataConfig:
        if not self.url:
            raise ConfigError("data.url must name a prepared data set (a path or URL)")
        if self.batch_size < 2:
            raise ConfigError(f"data.batch_size must be >= 2, got {self.batch_size}")
        if self.loader_workers < 0:
            raise ConfigError(f"data.loader_workers must be >= 0, got {self.loader_workers}")
        return self


@dataclass(frozen=True)
class OptimConfig(_Validated):
    """Adam with an optional cosine schedule (the paper trains with Adam, lr 1e-3; the official
    MMVAE code with amsgrad)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    amsgrad: bool = False
    schedule: str = "constant"
    grad_clip: float = 0.0

    def validate(self) -> OptimConfig:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optim.schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        return self


@dataclass(frozen=True)
class TrainSection(_Validated):
    """The run: length, workers, checkpoints, failure handling.

    storage_path: where Ray Train keeps the run's checkpoints (local path or any fsspec URL, e.g.
    s3://bucket/runs); storage_options_file: a YAML file of fsspec options for that URL (endpoint,
    credentials), else Ray resolves it from the standard environment (AWS_*, instance roles);
    checkpoint_every: steps between checkpoints (0: one per epoch); max_steps: 0 = no limit;
    ray_log_level: the level of Ray Train's own per-report worker lines ("Reporting training
    result ...", "Checkpoint successfully created ...", one per report and rank): WARNING hides
    them, INFO shows them.
    """

    name: str = "mvae-run"
    epochs: int = 10
    max_steps: int = 0
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    seed: int = 0
    storage_path: str = "runs"
    storage_options_file: str | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    eval_every: int = 1
    eval_K: int = 30
    eval_batches: int = 4
    log_every: int = 10
    max_failures: int = 2
    max_nonfinite: int = 10
    threads_per_worker: int = 0
    ray_log_level: str = "WARNING"

    def validate(self) -> TrainSection:
        checks = [
            (self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}"),
            (self.max_steps >= 0, f"train.max_steps must be >= 0, got {self.max_steps}"),
            (self.num_workers >= 1, f"train.num_workers must be >= 1, got {self.num_workers}"),
            (self.cpus_per_worker > 0, f"train.cpus_per_worker must be > 0, got {self.cpus_per_worker}"),
            (self.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0, got {self.checkpoint_every}"),
            (self.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}"),
            (self.eval_every >= 0, f"train.eval_every must be >= 0, got {self.eval_every}"),
            (self.eval_K >= 1, f"train.eval_K must be >= 1, got {self.eval_K}"),
            (self.log_every >= 1, f"train.log_every must be >= 1, got {self.log_every}"),
            (self.max_failures >= -1, f"train.max_failures must be >= -1, got {self.max_failures}"),
            (self.max_nonfinite >= 0, f"train.max_nonfinite must be >= 0, got {self.max_nonfinite}"),
            (self.ray_log_level in LOG_LEVELS,
             f"train.ray_log_level must be one of {', '.join(LOG_LEVELS)}, got {self.ray_log_level!r}"),
            (bool(self.name) and "/" not in self.name,
             f"train.name must be a non-empty name without '/', got {self.name!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


@dataclass(frozen=True)
class TrackingConfig(_Validated):
    """MLflow: tracking_uri None = $MLFLOW_TRACKING_URI, else sqlite under the working directory."""

    tracking_uri: str | None = None
    experiment: str = "mvae-dist"
    run_name: str | None = None

    def validate(self) -> TrackingConfig:
        if not self.experiment:
            raise ConfigError("tracking.experiment must be a non-empty name")
        return self


@dataclass(frozen=True)
class EvalConfig(_Validated):
    """The paper's metrics (section 4.2), during training and in ``mvae-dist evaluate``.

    classifiers: where the digit classifiers come from: "auto" = the latest version stored with
    the data set (``{data.url}/classifiers``; without one, training skips the coherence metrics
    and says so once, while ``mvae-dist evaluate`` stops with an error naming the command that
    trains them), a URL of another store, or "none". n_test: test pairs for the coherences;
    n_latent_train: training pairs the latent classifier is fit on (scored on the n_test pairs);
    ll_K / ll_n: importance samples and test pairs of the marginal log-likelihood in
    ``mvae-dist evaluate`` (during training: train.eval_K on train.eval_batches batches);
    seeds: how many seeds ``mvae-dist evaluate`` reports the mean and spread over.
    """

    classifiers: str = "auto"
    n_test: int = 1000
    n_latent_train: int = 2000
    ll_K: int = 1000
    ll_n: int = 100
    seeds: int = 3

    def validate(self) -> EvalConfig:
        for name in ("n_test", "n_latent_train", "ll_K", "ll_n", "seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if not self.classifiers:
            raise ConfigError("eval.classifiers must be 'auto', 'none' or a URL")
        return self


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "objective": ObjectiveConfig, "data": DataConfig, "optim": OptimConfig,
    "train": TrainSection, "tracking": TrackingConfig, "eval": EvalConfig,
}


@dataclass(frozen=True)
class TrainConfig(_Validated):
    """The resolved configuration of one training run (what checkpoints and MLflow record)."""

    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainSection = TrainSection()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()

    def validate(self) -> TrainConfig:
        """The checks across sections (each section validated itself when built)."""
        global_batch = self.data.batch_size * self.train.num_workers
        if self.objective.name == "contrastive" and self.objective.N >= global_batch:
            raise ConfigError(
                f"objective.N must be < the global batch {self.data.batch_size * self.train.num_workers}, "
                f"got {self.objective.N}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TrainConfig:
        data = dict(data or {})
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section {unknown[0]!r}; known: {', '.join(SECTIONS)}")
        for name, value in data.items():
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"config section {name!r} must be a mapping, got {value!r}")
        parts = {name: from_mapping(sec, data.get(name), name) for name, sec in SECTIONS.items()}
        return cls(**parts)


def load_storage_options(path: str | None, what: str = "storage options file") -> dict | None:
    """fsspec storage options from a YAML file (credentials stay out of argv, configs and logs)."""
    if not path:
        return None
    return read_yaml_mapping(path, what, "a mapping")


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["objective.gamma=3", "model.modalities=[mnist,svhn]"]`` -> nested dict (values parsed as YAML)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, field_name = key.strip().partition(".")
        if not sep or not dot or not section or not field_name:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.setdefault(section, {})[field_name] = value
    return out


#: objective keys that do not apply to an objective (left out of its MLflow params)
_NOT_APPLICABLE = {"baseline": ("estimator", "gamma", "N"), "contrastive": ("baseline_estimator", "dreg")}


def applicable(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the keys that do not apply to its objective (a baseline run has no
    gamma, N or term-2 estimator; a contrastive run no baseline bound or DReG), for MLflow's
    params: comparing runs, a user sees only what each run used."""
    objective = cfg.get("objective")
    if not isinstance(objective, Mapping):
        return cfg
    drop = _NOT_APPLICABLE.get(str(objective.get("name")), ())
    return {**cfg, "objective": {k: v for k, v in objective.items() if k not in drop}}


#: where relative run outputs go when the working directory is a Ray job's temporary copy
JOB_OUTPUT_ROOT = "~/mvae-dist"


def ray_job_working_dir(environ: Mapping[str, str] | None = None, cwd: str | None = None) -> str | None:
    """The working directory when it is a Ray job's temporary copy of ``--working-dir``, else None.

    ``ray job submit --working-dir .`` runs the entrypoint in
    ``.../runtime_resources/working_dir_files/_ray_pkg_<hash>``: a per-job copy that the next
    submission does not see and that goes with the session. Ray's job supervisor gives the
    entrypoint the job's runtime env as JSON in ``RAY_JOB_CONFIG_JSON_ENV_VAR``.
    """
    import json

    environ = os.environ if environ is None else environ
    cwd = os.getcwd() if cwd is None else cwd
    raw = environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if raw:
        try:
            runtime_env = (json.loads(raw) or {}).get("runtime_env") or {}
        except (ValueError, AttributeError):
            runtime_env = {}
        if runtime_env.get("working_dir"):
            return cwd
    return cwd if "/working_dir_files/_ray_pkg_" in cwd.replace(os.sep, "/") else None


def durable_output_paths(cfg: dict[str, Any], job_dir: str | None) -> tuple[dict[str, Any], list[str]]:
    """In a Ray job's temporary working directory (``job_dir``), relative output paths
    (``train.storage_path``) would be lost with the job: resolve them under ``JOB_OUTPUT_ROOT``
    in the home directory instead. -> (config dict, one note per path moved). Elsewhere: as is.
    Relative *inputs* (``data.url``) cannot be moved: the data is not uploaded with the job
    (``relative_input_hint``)."""
    if job_dir is None:
        return cfg, []
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in cfg.items()}
    notes = []
    train = out.get("train")
    path = train.get("storage_path") if isinstance(train, dict) else None
    if path and "://" not in path and not os.path.isabs(path) and not path.startswith("~"):
        durable = os.path.join(os.path.expanduser(JOB_OUTPUT_ROOT), path)
        train["storage_path"] = durable
        notes.append(f"train.storage_path {path!r} is relative and this is a Ray job's temporary working "
                     f"directory: checkpoints go to {durable} (give an absolute path or s3:// for "
                     "storage every node sees)")
    return out, notes


def relative_input_hint(value: str | None, job_dir: str | None) -> str:
    """The hint to add to a 'not found' error for a relative local input inside a Ray job."""
    if job_dir is None or not value or "://" in value or os.path.isabs(value):
        return ""
    return (f"; {value!r} is relative to the Ray job's working directory, and local data is not "
            "uploaded with it (data/ is git-ignored): give an absolute path on the cluster or an s3:// URL")


def absolute_local_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config dict with its local relative paths made absolute (Ray workers and Tune trials run
    in other working directories): data.url, the storage-options files, train.storage_path and
    an eval.classifiers store. URLs (``scheme://``) and absolute paths stay as they are."""
    def fix(value: str | None) -> str | None:
        if not value or "://" in value or os.path.isabs(value) or value in ("auto", "none"):
            return value
        return os.path.abspath(value)

    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in cfg.items()}
    for section, key in (("data", "url"), ("data", "storage_options_file"), ("train", "storage_path"),
                         ("train", "storage_options_file"), ("eval", "classifiers")):
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section][key] = fix(out[section][key])
    return out


def read_yaml_mapping(path: str, what: str, expected: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (empty file: {}); ConfigError naming ``what`` and the
    problem: unreadable, not UTF-8 text, not YAML, or not ``expected`` (e.g. "a mapping of sections")."""
    import yaml

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path!r}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path!r} must hold {expected}")
    return data


def shipped_config(name: str) -> str:
    """The path of a config shipped with the package, e.g. ``shipped_config("embedded/demo.yaml")``
    (found through the package, so it exists in a wheel install as in a checkout)."""
    from importlib.resources import files

    return str(files("mvae_dist") / "configs" / name)


def resolve_config_path(path: str) -> str:
    """``path`` if it exists; else, for a shipped config's name (``configs/embedded/mmvae-ci.yaml``
    or ``embedded/mmvae-ci.yaml``), the packaged copy, so the documented commands work from any
    directory and in an installed package; else ``path`` (reading it gives the error)."""
    if os.path.exists(path):
        return path
    rel = path.replace(os.sep, "/").removeprefix("./").removeprefix("configs/")
    packaged = shipped_config(rel)
    return packaged if os.path.isfile(packaged) else path


def load_train_config(path: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (optional; a shipped config's name also works, see ``resolve_config_path``) +
    ``section.key=value`` overrides -> validated TrainConfig."""

    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(resolve_config_path(path), "config file", "a mapping of sections")
    for section, values in parse_overrides(overrides or []).items():
        base = data.get(section) or {}
        if not isinstance(base, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        data[section] = {**base, **values}
    return TrainConfig.from_dict(data)
