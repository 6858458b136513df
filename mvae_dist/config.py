"""Typed, frozen configuration sections on pydantic v2: YAML plus ``section.key=value`` overrides,
validated when built.

Every input format of the project (run configs, sweep specs, ``data prepare`` and ``propagate``
options) is a ``Section``: unknown keys are refused, numbers are finite, choices are ``Literal``
types, and a bad value raises ConfigError with one line naming the key, e.g.
``objective.gamma must be > 1, got 0.5``. ``Section.replace`` validates too (pydantic's own
``model_copy`` does not).
"""

from __future__ import annotations

import math
import os
import re
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import ConfigError

ModelName = Literal["mmvae", "mvae", "jmvae"]
#: how encoders turn their unconstrained scale output into a posterior scale (models/networks.py)
PosteriorScale = Literal["softplus", "softmax"]
#: how the networks compute (models/compute.py): no autocast, or autocast to bfloat16
Precision = Literal["fp32", "bf16"]
MODEL_NAMES: tuple[str, ...] = typing.get_args(ModelName)
POSTERIOR_SCALES: tuple[str, ...] = typing.get_args(PosteriorScale)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)


# ----------------------------------------------------------------- the mechanism
def _not_bool(kind: str):
    """A before-validator refusing booleans where a number is meant (pydantic's lax mode would
    read ``true`` as 1)."""
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError(f"{kind}_type", "not a number")
        return value
    return BeforeValidator(check)


Int = Annotated[int, _not_bool("int")]
Float = Annotated[float, _not_bool("float")]
PositiveInt = Annotated[int, _not_bool("int"), Field(ge=1)]
NonNegativeInt = Annotated[int, _not_bool("int"), Field(ge=0)]
PositiveFloat = Annotated[float, _not_bool("float"), Field(gt=0)]
NonNegativeFloat = Annotated[float, _not_bool("float"), Field(ge=0)]


def _comma_list(value: Any) -> Any:
    """``"mnist,svhn"`` (a command-line override) -> ``["mnist", "svhn"]``."""
    return [v for v in value.split(",") if v] if isinstance(value, str) else value


Names = Annotated[tuple[str, ...], BeforeValidator(_comma_list)]

#: pydantic error type -> what the one-line message says the key must be
_MUST = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
    "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
    "tuple_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
}


_OPS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _key(where: str, loc: tuple) -> str:
    """``("model", "name")`` under ``where`` -> ``model.name`` (list indices left out)."""
    parts = [where] if where else []
    return ".".join(parts + [str(p) for p in loc if isinstance(p, str)])


def _section_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The Section class that holds the key at ``loc`` (for naming the known keys)."""
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        inner = field.annotation if field is not None else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return None
        cls = inner
    return cls


def one_line_error(error: ValidationError, cls: type[BaseModel], where: str) -> ConfigError:
    """The first error of a pydantic ValidationError as a ConfigError of one line naming the key."""
    e = error.errors(include_url=False)[0]
    kind, loc, ctx, value = e["type"], tuple(e["loc"]), e.get("ctx") or {}, e.get("input")
    key = _key(where, loc)
    if getattr(cls, "flag_keys", False):  # a command's options: named as its flags
        key = "--" + key.replace("_", "-")
    if kind == "extra_forbidden":
        holder = _section_at(cls, loc)
        known = ", ".join(holder.model_fields) if holder else ""  # in the order they are declared
        template = getattr(holder, "unknown_key", "unknown key {key}; known: {known}")
        return ConfigError(template.format(key=key, name=loc[-1], known=known))
    if kind == "model_type" and len(loc) == 1 and getattr(cls, "not_a_mapping", None):
        return ConfigError(cls.not_a_mapping.format(key=key, value=value))
    if kind == "missing":
        return ConfigError(f"{key} is required")
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx["expected"])  # pydantic's "'a', 'b' or 'c'"
        return ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    if kind == "finite_number":
        return ConfigError(f"{key} must be a finite number, got {value}")
    if kind in _OPS:
        bound = next(iter(ctx.values()))
        return ConfigError(f"{key} must be {_OPS[kind]} {bound:g}, got {value}")
    if kind in ("string_too_short",):
        return ConfigError(f"{key} must be a non-empty string, got {value!r}")
    if kind in _MUST:
        return ConfigError(f"{key} must be {_MUST[kind]}, got {value!r}")
    if kind in ("value_error", "assertion_error"):
        return ConfigError(str(ctx.get("error", e["msg"])))
    return ConfigError(f"{key}: {e['msg']}, got {value!r}")


class Section(BaseModel):
    """A frozen config section: unknown keys refused, floats finite, validated when built; a bad
    value raises ConfigError naming the key (``key_prefix`` + the field)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    #: how keys of this section are named in errors ("model" -> "model.name")
    key_prefix: ClassVar[str] = ""
    #: the message for a key the section does not have ({key}: dotted, {name}: the key, {known})
    unknown_key: ClassVar[str] = "unknown key {key}; known: {known}"
    #: name keys as command-line flags in errors (``batch_size`` -> ``--batch-size``)
    flag_keys: ClassVar[bool] = False

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise one_line_error(e, type(self), self.key_prefix) from None

    @classmethod
    def build(cls, data: Mapping[str, Any] | None = None):
        """The section from a mapping (a YAML section, parsed overrides); ConfigError naming a bad key."""
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{cls.key_prefix or 'config'} must be a mapping, got {data!r}")
        return cls(**{str(k): v for k, v in (data or {}).items()})

    def replace(self, **changes: Any):
        """A copy with ``changes``, validated (unlike pydantic's ``model_copy``)."""
        return type(self).build({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


# ----------------------------------------------------------------- the run's sections
class ModelConfig(Section):
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

    key_prefix: ClassVar[str] = "model"

    name: ModelName = "mmvae"
    modalities: Names = ("mnist", "svhn")
    latent_dim: PositiveInt = 20
    family: Literal["normal", "laplace"] | None = None
    likelihood: Literal["normal", "laplace"] = "laplace"
    likelihood_scale: PositiveFloat = 0.75
    llik_scaling: Any = "auto"
    hidden: PositiveInt = 400
    jmvae_alpha: NonNegativeFloat = 0.01
    mvae_unimodal_weight: Float = 1.0
    posterior_scale: PosteriorScale = "softplus"
    learn_prior: bool = False

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) < 2:
            raise ConfigError(f"model.modalities needs at least 2 entries, got {list(value)}")
        for spec in value:
            parse_modality_spec(spec)
        return value

    @model_validator(mode="after")
    def _across_keys(self) -> ModelConfig:
        if self.name == "mvae" and self.family == "laplace":
            raise ConfigError("model.family must be 'normal' for mvae (product of experts), got 'laplace'")
        if self.llik_scaling != "auto":
            vals = self.llik_scaling
            _finite(vals, "model.llik_scaling")
            if not isinstance(vals, (list, tuple)) or len(vals) != len(self.modalities) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in vals
            ):
                n = len(self.modalities)
                raise ConfigError(f"model.llik_scaling must be 'auto' or {n} positive numbers, got {vals!r}")
        if self.learn_prior and self.name != "mmvae":
            raise ConfigError(f"model.learn_prior applies to mmvae only (the prior is the product's "
                              f"expert in mvae and jmvae's KL target), got model.name {self.name!r}")
        return self

    @property
    def posterior_family(self) -> str:
        return self.family or ("laplace" if self.name == "mmvae" else "normal")


class ObjectiveConfig(Section):
    """The training objective: baseline bound or contrastive eq. 4 (paper defaults γ=2, N=5, K=30).

    neg_samples: how MVAE and JMVAE estimate the negatives' log p in term 2: "fresh" (the exact
    path) draws neg_K new samples (0: K) from each negative tuple's own joint posterior and
    decodes them; "reuse" reuses the positives' samples and decoder outputs under the mixture of
    the members' joint posteriors, as MMVAE always does (still a lower bound; no decoder pass).
    """

    key_prefix: ClassVar[str] = "objective"

    name: Literal["baseline", "contrastive"] = "contrastive"
    estimator: Literal["iwae", "cubo", "elbo"] = "iwae"
    gamma: Annotated[float, _not_bool("float"), Field(gt=1)] = 2.0
    N: PositiveInt = 5
    K: PositiveInt = 30
    baseline_estimator: Literal["iwae", "elbo"] = "iwae"
    dreg: bool = False
    looser: bool = False
    neg_samples: Literal["fresh", "reuse"] = "fresh"
    neg_K: NonNegativeInt = 0

    @model_validator(mode="after")
    def _across_keys(self) -> ObjectiveConfig:
        if self.neg_K and self.neg_samples == "reuse":
            raise ConfigError("objective.neg_K applies to fresh negative samples; with neg_samples 'reuse' "
                              "the negatives reuse the positives' K samples")
        if self.dreg and (self.name != "baseline" or self.baseline_estimator != "iwae"):
            raise ConfigError("objective.dreg applies to the baseline objective with the iwae bound (in the "
                              "contrastive objective the negatives reuse the positives' samples)")
        return self


def parse_modality_spec(spec: str) -> tuple[str, int | None]:
    """'mnist' | 'svhn' | 'vector:D' | 'text:V' -> (kind, D or V or None); ConfigError naming a
    bad spec. text:V is a sentence of 32 token ids over a vocabulary of V >= 4 words (the three
    special tokens and at least one word)."""
    kind, _, arg = str(spec).partition(":")
    if kind in ("mnist", "svhn") and not arg:
        return kind, None
    if kind == "vector" and arg.isdigit() and int(arg) > 0:
        return kind, int(arg)
    if kind == "text" and arg.isdigit() and int(arg) >= 4:
        return kind, int(arg)
    raise ConfigError(f"model.modalities: unknown modality {spec!r}; "
                      "expected mnist, svhn, vector:D or text:V (V >= 4)")


def _finite(value: Any, key: str) -> Any:
    """``value``; ConfigError naming ``key`` when it is or holds an infinite or NaN number."""
    import math

    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, (list, tuple)):
            _finite(v, key)
        elif isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key} must be a finite number, got {v}")
    return value


class DataConfig(Section):
    """Where the shards are and how each worker reads them. batch_size is per worker.

    read_retries, read_retry_s: how a shard or manifest read that fails with a transient storage
    error (throttling, HTTP 5xx, a refused or dropped connection) is retried: at most
    read_retries more tries, 0.5, 1, 2, 4, 8, 8, ... s apart, sleeping at most read_retry_s
    seconds in all (``data/retry.py``); then the worker fails with StorageUnavailable and Ray
    Train restarts the group (``train.max_failures``). 0 retries: fail at the first error.
    """

    key_prefix: ClassVar[str] = "data"

    url: Annotated[str, Field(min_length=1)] = "data/embedded"
    train_split: str = "train"
    test_split: str = "test"
    batch_size: Annotated[int, _not_bool("int"), Field(ge=2)] = 128
    loader_workers: NonNegativeInt = 0
    shuffle_buffer: NonNegativeInt = 2000
    storage_options_file: str | None = None
    read_retries: NonNegativeInt = 5
    read_retry_s: NonNegativeFloat = 60.0


class OptimConfig(Section):
    """Adam with an optional cosine schedule (the paper trains with Adam, lr 1e-3; the official
    MMVAE code with amsgrad). grad_clip: the gradient-norm bound, 0 = off."""

    key_prefix: ClassVar[str] = "optim"

    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    amsgrad: bool = False
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: NonNegativeFloat = 0.0


class TrainSection(Section):
    """The ``train:`` section: length, workers, checkpoints, failure handling.

    num_workers: Ray Train workers (DDP ranks), each ``cpus_per_worker`` CPUs; 0 trains in the
    calling process (Ray Train's local mode: no Ray cluster, no worker restarts; checkpoints,
    resume and MLflow logging as with workers), for debugging, notebooks and small studies.
    ``[min, max]`` (the same as ``min_workers: min`` and ``num_workers: max``) trains
    elastically: Ray Train runs as many workers as the cluster has room for, from min to max,
    goes on with fewer when a node is lost and grows back when there is room again (it looks
    every ``resize_check_s`` seconds), each time from the newest checkpoint. The global batch,
    data.batch_size x max, is the invariant: each of W workers takes global / W, so the loss,
    the learning rate and the negatives mean the same at every size, and the data order is
    planned for lcm(min..max) virtual ranks (data/stream.py), the same at every size. The global
    batch must divide by every worker count from min to max, and the split needs at least
    lcm(min..max) shards.
    storage_path: where Ray Train keeps the run's checkpoints (local path or any fsspec URL, e.g.
    s3://bucket/runs); storage_options_file: a YAML file of fsspec options for that URL (endpoint,
    credentials), else Ray resolves it from the standard environment (AWS_*, instance roles);
    checkpoint_every: steps between checkpoints (0: one per epoch); max_steps: 0 = no limit;
    max_failures: worker-group restarts (-1: no limit); ray_log_level: the level of Ray Train's
    own per-report worker lines ("Reporting training result ...", "Checkpoint successfully
    created ...", one per report and rank): WARNING hides them, INFO shows them.
    precision, channels_last, compile: how the encoders and decoders compute (for GPUs; see
    models/compute.py): "bf16" autocasts them to bfloat16 (distributions, likelihoods and the
    objective stay float32), channels_last stores convolutions channels-last, compile runs
    each network through torch.compile. Evaluation runs the model as it trains.
    storage_retries, storage_retry_s: how a checkpoint read or write on train.storage_path that
    fails with a transient error is retried (as data.read_retries / data.read_retry_s).
    node_wait_s: how long a run waits for the cluster to have room for its workers again after a
    node is lost before it fails (0: Ray's default, wait forever); address_timeout_s: how long
    ``--address`` may take to answer. resize_check_s: how often an elastic run looks for room
    for more workers (Ray Train's elastic_resize_monitor_interval_s). record_keys: a directory
    every node can write (local or a shared file system) where each rank appends the sample keys
    of every step it trains, one JSON line per step (``keys-rank{R}-{pid}.jsonl``): an audit of
    the data order, e.g. of an elastic run's coverage; off by default.
    """

    key_prefix: ClassVar[str] = "train"

    name: str = "mvae-run"
    epochs: PositiveInt = 10
    max_steps: NonNegativeInt = 0
    num_workers: NonNegativeInt = 2
    min_workers: NonNegativeInt = 0
    resize_check_s: PositiveFloat = 60.0
    use_gpu: bool = False
    cpus_per_worker: PositiveFloat = 1.0
    seed: Int = 0
    storage_path: str = "runs"
    storage_options_file: str | None = None
    checkpoint_every: NonNegativeInt = 0
    keep_checkpoints: PositiveInt = 2
    eval_every: NonNegativeInt = 1
    eval_K: PositiveInt = 30
    eval_batches: PositiveInt = 4
    log_every: PositiveInt = 10
    max_failures: Annotated[int, _not_bool("int"), Field(ge=-1)] = 2
    max_nonfinite: NonNegativeInt = 10
    threads_per_worker: NonNegativeInt = 0
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    ray_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    storage_retries: NonNegativeInt = 5
    storage_retry_s: NonNegativeFloat = 60.0
    node_wait_s: NonNegativeFloat = 180.0
    address_timeout_s: PositiveFloat = 30.0
    record_keys: str | None = None

    @property
    def ranks(self) -> int:
        """Processes that train (the most, if elastic): ``num_workers``, or 1 in local mode
        (``num_workers`` 0)."""
        return max(1, self.num_workers)

    @property
    def elastic(self) -> bool:
        """``min_workers`` < ``num_workers``: Ray Train may run any number of workers in between."""
        return 0 < self.min_workers < self.num_workers

    @property
    def virtual_ranks(self) -> int | None:
        """The ranks an elastic run's data order is planned for: lcm(min_workers..num_workers)
        (None: a fixed-size run, planned for its ``ranks``)."""
        if not self.elastic:
            return None
        return math.lcm(*range(self.min_workers, self.num_workers + 1))

    @model_validator(mode="before")
    @classmethod
    def _worker_range(cls, data: Any) -> Any:
        """``num_workers: [min, max]`` -> ``min_workers: min``, ``num_workers: max``."""
        if not isinstance(data, Mapping) or not isinstance(data.get("num_workers"), (list, tuple)):
            return data
        pair = data["num_workers"]
        if (len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
                or not 1 <= pair[0] <= pair[1]):
            raise ConfigError(f"train.num_workers must be a count or [min, max] with 1 <= min <= max, "
                              f"got {list(pair)}")
        if data.get("min_workers") not in (None, 0, pair[0]):
            raise ConfigError(f"train.num_workers {list(pair)} and train.min_workers {data['min_workers']} "
                              f"disagree: give one of them")
        return {**data, "min_workers": pair[0], "num_workers": pair[1]}

    @model_validator(mode="after")
    def _min_workers(self) -> TrainSection:
        if self.min_workers > self.num_workers:
            raise ConfigError(f"train.min_workers must be <= train.num_workers ({self.num_workers}), "
                              f"got {self.min_workers}")
        return self

    @property
    def local_mode(self) -> bool:
        """``num_workers`` 0: the run trains in the calling process (Ray Train's local mode)."""
        return self.num_workers == 0

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or "/" in value:
            raise ConfigError(f"train.name must be a non-empty name without '/', got {value!r}")
        return value


class TrackingConfig(Section):
    """MLflow: tracking_uri None = $MLFLOW_TRACKING_URI, else sqlite under the working directory.
    register_model: a registered-model name; a finished run's model becomes its next version."""

    key_prefix: ClassVar[str] = "tracking"

    tracking_uri: str | None = None
    experiment: Annotated[str, Field(min_length=1)] = "mvae-dist"
    run_name: str | None = None
    register_model: Annotated[str, Field(min_length=1)] | None = None


class EvalConfig(Section):
    """The paper's metrics (section 4.2), during training and in ``mvae-dist evaluate``.

    classifiers: where the digit classifiers come from: "auto" = the latest version stored with
    the data set (``{data.url}/classifiers``; without one, training skips the coherence metrics
    and says so once, while ``mvae-dist evaluate`` stops with an error naming the command that
    trains them), a URL of another store (a data set's prefix; its CCA scorer, for data sets with
    a sentence modality, is used too), or "none". n_test: test pairs for the coherences;
    n_latent_train: training pairs the latent classifier is fit on (scored on the n_test pairs);
    ll_K / ll_n: importance samples and test pairs of the marginal log-likelihood in
    ``mvae-dist evaluate`` (during training: train.eval_K on train.eval_batches batches);
    seeds: how many seeds ``mvae-dist evaluate`` reports the mean and spread over.
    """

    key_prefix: ClassVar[str] = "eval"

    classifiers: Annotated[str, Field(min_length=1)] = "auto"
    n_test: PositiveInt = 1000
    n_latent_train: PositiveInt = 2000
    ll_K: PositiveInt = 1000
    ll_n: PositiveInt = 100
    seeds: PositiveInt = 3


SECTIONS: dict[str, type[Section]] = {
    "model": ModelConfig, "objective": ObjectiveConfig, "data": DataConfig, "optim": OptimConfig,
    "train": TrainSection, "tracking": TrackingConfig, "eval": EvalConfig,
}


class RunConfig(Section):
    """The resolved configuration of one training run (what checkpoints and MLflow record): the
    sections model, objective, data, optim, train, tracking and eval."""

    unknown_key: ClassVar[str] = "unknown config section {name!r}; known: {known}"
    not_a_mapping: ClassVar[str] = "config section {key!r} must be a mapping, got {value!r}"

    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainSection = TrainSection()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """An empty YAML section (``eval:`` with nothing under it) is the section's defaults."""
        if isinstance(data, Mapping):
            return {k: ({} if v is None else v) for k, v in data.items()}
        return data

    @property
    def global_batch(self) -> int:
        """Items per optimiser step over all ranks: data.batch_size x train.ranks (for an elastic
        run, at its most workers: the invariant every size keeps)."""
        return self.data.batch_size * self.train.ranks

    @model_validator(mode="after")
    def _across_sections(self) -> RunConfig:
        if self.model.name == "mmvae" and self.objective.neg_K:
            raise ConfigError("objective.neg_K applies to mvae and jmvae (mmvae's negatives reuse its "
                              f"experts' samples), got {self.objective.neg_K} with model.name 'mmvae'")
        global_batch = self.global_batch
        V = self.train.virtual_ranks
        if V is not None and global_batch % V:
            t, step = self.train, V // math.gcd(V, self.train.ranks)
            fit = -(-self.data.batch_size // step) * step
            raise ConfigError(f"train.num_workers [{t.min_workers}, {t.num_workers}]: the global batch "
                              f"{global_batch} (data.batch_size x {t.num_workers}) must divide by every "
                              f"worker count from {t.min_workers} to {t.num_workers} (their lcm {V}); "
                              f"e.g. data.batch_size={fit}")
        if self.objective.name == "contrastive" and self.objective.N >= global_batch:
            raise ConfigError(f"objective.N must be < the global batch {global_batch}, "
                              f"got {self.objective.N}")
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RunConfig:
        """The run config from a mapping of sections (missing sections and keys: the defaults)."""
        return cls.build(data)


def load_storage_options(path: str | None, what: str = "storage options file") -> dict | None:
    """fsspec storage options from a YAML file (credentials stay out of argv, configs and logs)."""
    if not path:
        return None
    return read_yaml_mapping(path, what, "a mapping")


def parse_override(item: str, example: str = "section.key=value",
                   what: str = "override") -> tuple[list[str], Any]:
    """``"objective.gamma=3"`` -> (["objective", "gamma"], 3): the dotted key and the value parsed
    as YAML (text that is not YAML stays text). The one override syntax of every command."""
    import yaml

    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"{what} {item!r} must look like {example}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["objective.gamma=3", "model.modalities=[mnist,svhn]"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        parts, value = parse_override(item)
        if len(parts) != 2:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        section, field_name = parts
        out.setdefault(section, {})[field_name] = value
    return out


#: objective keys that do not apply to an objective (left out of its MLflow params)
_NOT_APPLICABLE = {"baseline": ("estimator", "gamma", "N", "neg_samples", "neg_K"),
                   "contrastive": ("baseline_estimator", "dreg")}


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
    in other working directories): data.url, the storage-options files, train.storage_path,
    train.record_keys and an eval.classifiers store. URLs (``scheme://``) and absolute paths stay
    as they are."""
    def fix(value: str | None) -> str | None:
        if not value or "://" in value or os.path.isabs(value) or value in ("auto", "none"):
            return value
        return os.path.abspath(value)

    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in cfg.items()}
    for section, key in (("data", "url"), ("data", "storage_options_file"), ("train", "storage_path"),
                         ("train", "storage_options_file"), ("train", "record_keys"),
                         ("eval", "classifiers")):
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
    return _packaged("configs", name)


def _packaged(folder: str, name: str) -> str:
    """The path of ``name`` in the package's data folder ``folder`` (configs, tune)."""
    from importlib.resources import files

    return str(files("mvae_dist") / folder / name)


def resolve_config_path(path: str) -> str:
    """``path`` if it exists; else, for a shipped config's name (``configs/embedded/mmvae-ci.yaml``
    or ``embedded/mmvae-ci.yaml``), the packaged copy, so the documented commands work from any
    directory and in an installed package; else ``path`` (reading it gives the error)."""
    return _shipped_or_given(path, "configs")


def resolve_spec_path(path: str) -> str:
    """As ``resolve_config_path``, for the sweep specs shipped in ``mvae_dist/tune``
    (``tune/tiny.yaml`` or ``tiny.yaml``)."""
    return _shipped_or_given(path, "tune")


def _shipped_or_given(path: str, folder: str) -> str:
    if os.path.exists(path):
        return path
    packaged = _packaged(folder, path.replace(os.sep, "/").removeprefix("./").removeprefix(f"{folder}/"))
    return packaged if os.path.isfile(packaged) else path


def load_train_config(path: str | None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (optional; a shipped config's name also works, see ``resolve_config_path``) +
    ``section.key=value`` overrides -> validated RunConfig."""

    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(resolve_config_path(path), "config file", "a mapping of sections")
    for section, values in parse_overrides(overrides or []).items():
        base = data.get(section) or {}
        if not isinstance(base, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        data[section] = {**base, **values}
    return RunConfig.from_dict(data)
