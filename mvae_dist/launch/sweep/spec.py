"""Sweep specs: parse, override and validate a YAML search space (``load_sweep_spec``)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from ...config import (
    SECTIONS,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    RunConfig,
    Section,
    absolute_local_paths,
    durable_output_paths,
    load_train_config,
    parse_override,
    ray_job_working_dir,
    read_yaml_mapping,
    resolve_config_path,
    resolve_spec_path,
)
from ...errors import ConfigError, MvaeDistError

#: CPU share of each trial's driver (the function that fits the trial's TorchTrainer)
DRIVER_CPU = 0.01
#: MLflow tags of child runs
TAG_STATUS, TAG_TRIAL, TAG_SWEEP, TAG_SWEEP_RUN = "tune_status", "tune_trial_id", "sweep", "sweep_run"
TrialStatus = Literal["completed", "early_stopped", "error"]
_RUN_STATUS: dict[str, str] = {"completed": "FINISHED", "early_stopped": "KILLED", "error": "FAILED"}

# kind -> (number of arguments, integer arguments, lower bound must be > 0, upper bound excluded)
_RANGE_KINDS: dict[str, tuple[int, bool, bool, bool]] = {
    "uniform": (2, False, False, False), "quniform": (3, False, False, False),
    "loguniform": (2, False, True, False), "qloguniform": (3, False, True, False),
    "randint": (2, True, False, True), "qrandint": (3, True, False, False),
    "lograndint": (2, True, True, True),
}
_LIST_KINDS = ("choice", "grid_search")
SEARCH_KINDS = tuple(sorted([*_RANGE_KINDS, *_LIST_KINDS]))

# Config keys the sweep sets: never searched, and (the first two groups) never overridden.
_FORCED = {"train.checkpoint_every": 0, "train.eval_every": 1}
_PER_TRIAL = ("train.name", "tracking.run_name")
_NOT_SEARCHABLE = {
    "train.epochs": "the trials' budget: set scheduler.max_t (asha) or base train.epochs",
    "train.storage_path": "set it with base.train.storage_path",
    "train.num_workers": "set resources.workers_per_trial",
    "train.cpus_per_worker": "set resources.cpus_per_worker",
    "train.use_gpu": "set resources.use_gpu",
    "tracking.tracking_uri": "pass --tracking-uri or set tracking.uri",
    "tracking.experiment": "set tracking.experiment of the spec",
}
_MAX_PROBES = 4096
# Tune's bookkeeping keys: left out of the trial table's metrics
_TUNE_KEYS = {"timestamp", "time_this_iter_s", "time_total_s", "pid", "time_since_restore",
              "iterations_since_restore", "training_iteration", "done", "checkpoint_path",
              "should_checkpoint", "date", "hostname", "node_ip", "trial_id", "experiment_tag",
              "config", "aborted_nonfinite"}


class SweepError(MvaeDistError):
    """A sweep that could not run or produced no usable trial."""


# ----------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class Dimension:
    """One searched config key: ``key`` (section.key), ``kind`` (a ray.tune sampler), ``args``."""

    key: str
    kind: str
    args: tuple

    def to_tune(self) -> Any:
        """The ``ray.tune`` search-space object."""
        from ray import tune

        if self.kind in _LIST_KINDS:
            return getattr(tune, self.kind)(list(self.args))
        return getattr(tune, self.kind)(*self.args)

    def probes(self) -> list[Any]:
        """Values a trial can get that validation tries: each listed value, the ends of a range."""
        if self.kind in _LIST_KINDS:
            return list(self.args)
        lo, hi = self.args[0], self.args[1]
        exclusive = _RANGE_KINDS[self.kind][3]
        return [lo, hi - 1 if exclusive else hi]

    @property
    def log_scale(self) -> bool:
        return self.kind.startswith(("log", "qlog"))

    def to_dict(self) -> dict[str, Any]:
        return {self.kind: list(self.args)}


def _shorthand(key: str):
    """A before-validator reading ``scheduler: asha`` as ``scheduler: {name: asha}`` (``key``: the
    one key the text names)."""
    def expand(value: Any) -> Any:
        return {key: value} if isinstance(value, str) else value
    return BeforeValidator(expand)


class _SpecSection(Section):
    """A section of a sweep spec (its unknown keys are "spec keys")."""

    unknown_key: ClassVar[str] = "unknown spec key {key}; known: {known}"


class SchedulerSpec(_SpecSection):
    """``asha`` (AsyncHyperBand on training_iteration = epochs) or ``fifo`` (no early stopping)."""

    key_prefix: ClassVar[str] = "scheduler"

    name: Literal["asha", "fifo"] = "asha"
    max_t: PositiveInt | None = None
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0

    @model_validator(mode="after")
    def _asha_only(self) -> SchedulerSpec:
        if self.name == "fifo":
            extra = sorted(k for k in self.model_fields_set - {"name"} if getattr(self, k) is not None)
            if extra:
                raise ConfigError(f"scheduler.{extra[0]} applies to asha only (scheduler.name is fifo)")
        elif self.max_t is not None and self.grace_period > self.max_t:
            raise ConfigError(f"scheduler.grace_period must be <= scheduler.max_t {self.max_t}, "
                              f"got {self.grace_period}")
        return self


class ResourcesSpec(_SpecSection):
    """Per trial; None keeps the base config's value."""

    key_prefix: ClassVar[str] = "resources"

    workers_per_trial: PositiveInt | None = None
    cpus_per_worker: PositiveFloat | None = None
    use_gpu: bool | None = None


NonEmpty = Annotated[str, Field(min_length=1)]
_AUTO_IS_NONE = BeforeValidator(lambda v: None if v == "auto" else v)
_NONE_IS_EMPTY = BeforeValidator(lambda v: {} if v is None else v)


class TrackingSpec(_SpecSection):
    """The parent run's MLflow experiment, run name and tracking URI (None: the base config's)."""

    key_prefix: ClassVar[str] = "tracking"

    experiment: NonEmpty | None = None
    run_name: NonEmpty | None = None
    uri: NonEmpty | None = None


class BaseSpec(_SpecSection):
    """The training config every trial starts from, and overrides of it (``section.key: value``)."""

    key_prefix: ClassVar[str] = "base"

    config: str | None = None
    overrides: dict[str, Any] = {}

    @field_validator("overrides", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"base.overrides must be a mapping of section.key: value, got {value!r}")
        return {str(k): v for k, v in value.items()}


class SpecFile(Section):
    """A sweep spec as written (YAML + overrides), before the base config and the space resolve."""

    unknown_key: ClassVar[str] = "unknown spec key {name!r}; known: {known}"

    name: str | None = None
    base: Annotated[BaseSpec, _shorthand("config")] = BaseSpec()
    space: Any = None
    metric: NonEmpty = "test_log_joint"
    mode: Literal["max", "min"] = "max"
    num_samples: PositiveInt = 1
    max_concurrent_trials: Annotated[PositiveInt | None, _AUTO_IS_NONE] = None  # None: as many as fit
    scheduler: Annotated[SchedulerSpec, _shorthand("name")] = SchedulerSpec()
    resources: Annotated[ResourcesSpec, _NONE_IS_EMPTY] = ResourcesSpec()
    seed: NonNegativeInt | None = 0
    tracking: Annotated[TrackingSpec, _NONE_IS_EMPTY] = TrackingSpec()
    output_dir: NonEmpty = "sweeps"
    verbose: Annotated[int, Field(ge=0, le=3)] = 1


SPEC_KEYS = tuple(SpecFile.model_fields)


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec. ``base`` is the resolved base RunConfig as a dict, with the
    sweep's own settings applied (see the module docstring)."""

    path: str
    name: str
    base_config: str
    base_overrides: dict[str, Any]
    base: dict[str, Any]
    space: tuple[Dimension, ...]
    metric: str
    mode: Literal["max", "min"]
    num_samples: int
    max_concurrent_trials: int | None
    scheduler: SchedulerSpec
    resources: ResourcesSpec
    seed: int | None
    experiment: str
    run_name: str | None
    tracking_uri: str | None
    output_dir: str
    verbose: int

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.space]

    def trial_config(self, params: Mapping[str, Any], *, name: str = "trial", storage_path: str | None = None,
                     run_name: str | None = None, tracking_uri: str | None = None) -> RunConfig:
        """The resolved RunConfig of a trial with searched values ``params`` ({section.key: value})."""
        d = copy.deepcopy(self.base)
        for key, value in params.items():
            section, name_ = key.split(".", 1)
            d[section][name_] = _plain_value(value)
        d["train"]["name"] = name
        if storage_path is not None:
            d["train"]["storage_path"] = storage_path
        d["tracking"]["run_name"] = run_name
        if tracking_uri is not None:
            d["tracking"]["tracking_uri"] = tracking_uri
        return RunConfig.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec (what ``spec.yaml`` and the parent run's params hold)."""
        return {
            "name": self.name, "base": {"config": self.base_config, "overrides": dict(self.base_overrides)},
            "space": {d.key: d.to_dict() for d in self.space}, "metric": self.metric, "mode": self.mode,
            "num_samples": self.num_samples,
            "max_concurrent_trials": self.max_concurrent_trials if self.max_concurrent_trials else "auto",
            "scheduler": self.scheduler.to_dict(), "resources": self.resources.to_dict(),
            "seed": self.seed, "tracking": {"experiment": self.experiment, "run_name": self.run_name,
                                            "uri": self.tracking_uri},
            "output_dir": self.output_dir, "verbose": self.verbose,
        }


def load_sweep_spec(path: str, overrides: list[str] | None = None) -> SweepSpec:
    """Read, override and validate a sweep spec -> SweepSpec; ConfigError naming the bad key.
    path: a file, or the name of a spec shipped with the package (``tune/tiny.yaml``)."""
    path = resolve_spec_path(path)
    raw = read_yaml_mapping(path, "sweep spec", f"a mapping of keys ({', '.join(SPEC_KEYS)})")
    for item in overrides or []:
        _apply_override(raw, item)
    try:
        return _parse_spec(raw, path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _apply_override(raw: dict, item: str) -> None:
    """Apply ``key=value`` to the raw spec: a top-level key, ``<section>.<key>`` of scheduler,
    resources or tracking, ``base.config=PATH``, ``base.<section>.<key>=VALUE`` (an override of the
    base config) or ``space.<section>.<key>={kind: [...]}`` (null removes the key from the space)."""
    parts, value = parse_override(item, "key=value (e.g. num_samples=4)", "spec override")
    head = parts[0]
    if head not in SPEC_KEYS:
        raise ConfigError(f"unknown spec key {head!r} in override {item!r}; known: {', '.join(SPEC_KEYS)}")
    if head == "base":
        base = raw.get("base")
        base = {"config": base} if isinstance(base, str) else dict(base or {})
        if parts[1:] == ["config"]:
            base["config"] = value
        elif len(parts) == 3:
            base["overrides"] = {**(base.get("overrides") or {}), f"{parts[1]}.{parts[2]}": value}
        else:
            raise ConfigError(f"override {item!r}: use base.config=PATH or base.<section>.<key>=VALUE")
        raw["base"] = base
    elif head == "space":
        if len(parts) != 3:
            raise ConfigError(f"override {item!r}: use space.<section>.<key>={{kind: [...]}}")
        space = dict(raw.get("space") or {})
        if value is None:
            space.pop(f"{parts[1]}.{parts[2]}", None)
        else:
            space[f"{parts[1]}.{parts[2]}"] = value
        raw["space"] = space
    elif head in ("scheduler", "resources", "tracking") and len(parts) == 2:
        sub = raw.get(head)
        sub = {"name": sub} if isinstance(sub, str) else dict(sub or {})
        sub[parts[1]] = value
        raw[head] = sub
    elif len(parts) == 1:
        raw[head] = value
    else:
        raise ConfigError(f"override {item!r}: {head} takes no sub-key {'.'.join(parts[1:])!r}")


def _parse_spec(raw: dict, path: str) -> SweepSpec:
    spec_file = SpecFile.build(raw)
    name = spec_file.name or Path(path).stem
    if "/" in name or not name.strip():
        raise ConfigError(f"name must be a non-empty name without '/', got {name!r}")
    scheduler, resources, tracking = spec_file.scheduler, spec_file.resources, spec_file.tracking
    if not spec_file.base.config:
        raise ConfigError("base.config must name the training config every trial starts from "
                          "(e.g. configs/embedded/tiny.yaml)")
    base_path = _find_base_config(spec_file.base.config, path)
    base_overrides = spec_file.base.overrides
    for key in base_overrides:
        _check_config_key(key, f"base.overrides.{key}")
        if key in _FORCED:
            raise ConfigError(f"base.overrides.{key}: set by the sweep to {_FORCED[key]} "
                              "(one report per epoch, after the evaluation that gives the metric)")
        if key in _PER_TRIAL:
            raise ConfigError(f"base.overrides.{key}: set per trial by the sweep")

    cfg = load_train_config(base_path)
    base = cfg.to_dict()
    for key, value in base_overrides.items():
        section, k = key.split(".", 1)
        base[section][k] = value
    base["train"].update({k.split(".", 1)[1]: v for k, v in _FORCED.items()})
    if scheduler.name == "asha" and scheduler.max_t is not None:
        base["train"]["epochs"] = scheduler.max_t
    for field_name, key in (("workers_per_trial", "num_workers"), ("cpus_per_worker", "cpus_per_worker"),
                            ("use_gpu", "use_gpu")):
        if getattr(resources, field_name) is not None:
            base["train"][key] = getattr(resources, field_name)
    experiment = tracking.experiment or base["tracking"]["experiment"]
    base["tracking"]["experiment"] = experiment
    base, notes = durable_output_paths(base, ray_job_working_dir())
    for note in notes:
        print(f"mvae-dist: {note}", flush=True)
    base = absolute_local_paths(base)
    try:
        base = RunConfig.from_dict(base).to_dict()
    except ConfigError as e:
        raise ConfigError(f"base ({spec_file.base.config} + overrides): {e}") from None
    if scheduler.name == "asha":
        scheduler = scheduler.replace(max_t=base["train"]["epochs"])  # checks grace_period <= max_t

    space_raw = spec_file.space
    if not isinstance(space_raw, dict) or not space_raw:
        raise ConfigError("space must map at least one config key (section.key) to a search kind, "
                          "e.g. objective.gamma: {uniform: [1.1, 5.0]}")
    space = tuple(_parse_dimension(str(k), v) for k, v in space_raw.items())

    spec = SweepSpec(path=path, name=name.strip(), base_config=base_path, base_overrides=dict(base_overrides),
                     base=base, space=space, metric=spec_file.metric, mode=spec_file.mode,
                     num_samples=spec_file.num_samples, max_concurrent_trials=spec_file.max_concurrent_trials,
                     scheduler=scheduler, resources=resources, seed=spec_file.seed, experiment=experiment,
                     run_name=tracking.run_name, tracking_uri=tracking.uri, output_dir=spec_file.output_dir,
                     verbose=spec_file.verbose)
    _validate_space(spec)
    return spec


def _find_base_config(name: str, spec_path: str) -> str:
    p = Path(name).expanduser()
    root = Path(spec_path).resolve().parent.parent
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, root / p]
    for c in candidates:
        if c.is_file():
            return str(c.resolve())
    packaged = resolve_config_path(name)  # a shipped config's name (configs/embedded/...)
    if packaged != name:
        return packaged
    where = "" if p.is_absolute() else f" (looked in the current directory, in {root} and in the package)"
    raise ConfigError(f"base.config: no config file {name!r}{where}")


def _check_config_key(key: str, where: str) -> tuple[str, str]:
    section, dot, name = key.partition(".")
    if not dot or section not in SECTIONS:
        raise ConfigError(f"{where}: unknown config key {key!r}; keys look like section.key with a "
                          f"section of {', '.join(SECTIONS)}")
    fields = list(SECTIONS[section].model_fields)
    if name not in fields:
        raise ConfigError(f"{where}: unknown config key {key!r}; known in {section}: {', '.join(fields)}")
    return section, name


def _parse_dimension(key: str, raw: Any) -> Dimension:
    where = f"space.{key}"
    _check_config_key(key, where)
    if key in _FORCED or key in _PER_TRIAL:
        raise ConfigError(f"{where}: {key} is set by the sweep and cannot be searched")
    if key in _NOT_SEARCHABLE:
        raise ConfigError(f"{where}: {key} cannot be searched ({_NOT_SEARCHABLE[key]})")
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(f"{where} must be one {{kind: arguments}} mapping with a kind of "
                          f"{', '.join(SEARCH_KINDS)}; got {raw!r}")
    (kind, args), = raw.items()
    if kind not in SEARCH_KINDS:
        raise ConfigError(f"{where}: unknown search kind {kind!r}; known: {', '.join(SEARCH_KINDS)}")
    if kind in _LIST_KINDS:
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: {kind} needs a non-empty list of values, got {args!r}")
        return Dimension(key, kind, tuple(args))
    n, integer, positive, exclusive = _RANGE_KINDS[kind]
    shape = "[lo, hi]" if n == 2 else "[lo, hi, q]"
    if not isinstance(args, list) or len(args) != n:
        raise ConfigError(f"{where}: {kind} needs {shape}, got {args!r}")
    for a in args:
        ok = isinstance(a, int) if integer else isinstance(a, (int, float))
        if isinstance(a, bool) or not ok:
            raise ConfigError(f"{where}: {kind} needs {'integer' if integer else 'number'} arguments "
                              f"{shape}, got {args!r}")
    lo, hi = args[0], args[1]
    if not lo < hi:
        raise ConfigError(f"{where}: {kind} needs lo < hi, got {args!r}")
    if positive and not lo > 0:
        raise ConfigError(f"{where}: {kind} needs lo > 0, got {args!r}")
    if n == 3 and not args[2] > 0:
        raise ConfigError(f"{where}: {kind} needs q > 0, got {args!r}")
    if integer and exclusive and hi - lo < 1:
        raise ConfigError(f"{where}: {kind} excludes hi, so it needs hi > lo, got {args!r}")
    return Dimension(key, kind, tuple(args))


def _validate_space(spec: SweepSpec) -> None:
    """Try every probe of each key alone, then the combinations of probes (up to a limit)."""
    import itertools

    for d in spec.space:
        for v in d.probes():
            try:
                spec.trial_config({d.key: v})
            except ConfigError as e:
                raise ConfigError(f"space.{d.key} = {v!r}: {e}") from None
    probes = [d.probes() for d in spec.space]
    if math.prod(len(p) for p in probes) > _MAX_PROBES:
        return
    for combo in itertools.product(*probes):
        params = dict(zip(spec.keys, combo))
        try:
            spec.trial_config(params)
        except ConfigError as e:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ConfigError(f"space: the trial {shown} is invalid: {e}") from None


def _plain_value(v: Any) -> Any:
    """numpy scalars (what ray.tune samples) -> Python numbers."""
    if type(v).__module__ == "numpy" and hasattr(v, "item"):
        return v.item()
    return v
