"""Ray Tune sweeps: a ``tune/*.yaml`` spec -> a Tuner of Ray Train trials -> best config, table, plots.

The only module that imports ``ray.tune``. ``mvae-dist tune SPEC [key=value ...]`` calls
``run_sweep``; ``load_sweep_spec`` parses and validates a spec without starting anything.

Spec (YAML; every key but ``base`` and ``space`` has a default)::

    name: gamma-n-k                    # names the parent MLflow run and the output folder
    base:                              # the training config every trial starts from
      config: configs/embedded/mmvae-ci.yaml
      overrides: {data.url: data/embedded, train.max_steps: 0}   # section.key: value
    space:                             # any config key, section.key: {kind: arguments}
      objective.gamma: {uniform: [1.1, 5.0]}
      objective.N: {choice: [1, 2, 5, 10]}
      objective.K: {choice: [1, 5, 10, 30]}
    metric: coherence_cross            # a key of the workers' per-epoch reports
    mode: max                          # max | min
    num_samples: 16                    # trials (a grid_search is repeated num_samples times)
    max_concurrent_trials: auto        # auto: as many as the cluster's CPUs hold at once
    scheduler: {name: asha, max_t: 10, grace_period: 1, reduction_factor: 2}   # or: fifo
    resources: {workers_per_trial: 2, cpus_per_worker: 0.99, use_gpu: false}
    seed: 0                            # of the search (trials keep train.seed of the config)
    tracking: {experiment: mvae-dist-sweeps, run_name: null, uri: null}
    output_dir: sweeps                 # results go to <output_dir>/<name>-<timestamp>/
    verbose: 1                         # Tune's progress output: 0 silent, 1 status, 2 more

Search kinds (as in ``ray.tune``): ``uniform: [lo, hi]``, ``quniform: [lo, hi, q]``,
``loguniform: [lo, hi]``, ``qloguniform: [lo, hi, q]``, ``randint: [lo, hi]`` (hi excluded),
``qrandint: [lo, hi, q]`` (hi included), ``lograndint: [lo, hi]`` (hi excluded),
``choice: [v, ...]``, ``grid_search: [v, ...]``. Every key must exist in ``mvae_dist.config``
and every value a trial can get is checked there first (the ends of ranges, each listed value,
and their combinations with each other and the base), so ``objective.gamma`` below or at 1 is a
ConfigError before anything starts.

Overrides on the command line (values parsed as YAML): ``num_samples=4``, ``metric=test_log_joint``,
``scheduler=fifo``, ``scheduler.max_t=3``, ``resources.workers_per_trial=1``,
``tracking.experiment=x``, ``base.config=PATH``, ``base.data.url=s3://bucket/embedded`` (any
``base.<section>.<key>``: a base override), ``space.objective.K="{choice: [1, 30]}"`` (``null``
removes a key). A relative ``base.config`` is looked up from the current directory, then from the
folder above the spec's (the project root for ``tune/*.yaml``); other relative local paths
(``data.url``, ``train.storage_path``, options files) are made absolute from the current directory,
since trials run elsewhere.

What the sweep owns: every trial reports once per epoch, after its evaluation, so each report
carries the metric (``train.checkpoint_every = 0``, ``train.eval_every = 1``); one Tune iteration
is one epoch and ASHA's ``max_t`` is the trials' ``train.epochs`` (``scheduler.max_t`` sets it;
default: the base config's); ``train.max_steps`` still caps a trial. ``resources`` sets
``train.num_workers`` / ``cpus_per_worker`` / ``use_gpu``; each trial's driver takes 0.01 CPU
besides its workers (with a whole CPU each trial's driver would hold the CPUs its Train workers
need, and on a small machine they would never start), so on a 2-CPU
machine use ``cpus_per_worker: 0.99``. ``train.name`` / ``tracking.run_name`` are per trial,
``train.storage_path`` holds the sweep's Tune directory ``<name>-<timestamp>/`` with the trials'
Ray Train runs in its ``trials/``.

MLflow: one parent run (params = the resolved spec) and one child run per trial (tag
``mlflow.parentRunId``; params = the trial's resolved config; tags ``tune_trial_id``, ``sweep``,
``sweep_run`` and ``tune_status``). The trial's Ray Train workers log into the child run (rank 0)
and end it FINISHED; a driver-side Tune callback tags every finished trial ``completed``
(FINISHED), ``early_stopped`` (stopped by the scheduler before its budget: KILLED) or ``error``
(FAILED). The parent run gets the artifacts ``best_config.yaml`` (the best trial's full resolved
TrainConfig), ``trials.csv``, ``trials.md``, ``plots/<metric>_vs_<key>.png``, ``spec.yaml`` and
``summary.json``, the same files as the local folder ``<output_dir>/<name>-<timestamp>/`` (written
to a temporary name, then renamed). The best trial is the one with the best LAST reported metric.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .config import (
    SECTIONS,
    TrainConfig,
    absolute_local_paths,
    applicable,
    durable_output_paths,
    load_storage_options,
    load_train_config,
    ray_job_working_dir,
    read_yaml_mapping,
    resolve_config_path,
)
from .errors import ConfigError, MvaeDistError, one_line

#: CPU share of each trial's driver (the function that fits the trial's TorchTrainer)
DRIVER_CPU = 0.01
#: MLflow tags of child runs
TAG_STATUS, TAG_TRIAL, TAG_SWEEP, TAG_SWEEP_RUN = "tune_status", "tune_trial_id", "sweep", "sweep_run"
TrialStatus = Literal["completed", "early_stopped", "error"]
_RUN_STATUS: dict[str, str] = {"completed": "FINISHED", "early_stopped": "KILLED", "error": "FAILED"}

SPEC_KEYS = ("name", "base", "space", "metric", "mode", "num_samples", "max_concurrent_trials",
             "scheduler", "resources", "seed", "tracking", "output_dir", "verbose")
_SUB_KEYS = {
    "base": ("config", "overrides"),
    "scheduler": ("name", "max_t", "grace_period", "reduction_factor"),
    "resources": ("workers_per_trial", "cpus_per_worker", "use_gpu"),
    "tracking": ("experiment", "run_name", "uri"),
}
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


@dataclass(frozen=True)
class SchedulerSpec:
    """``asha`` (AsyncHyperBand on training_iteration = epochs) or ``fifo`` (no early stopping)."""

    name: Literal["asha", "fifo"] = "asha"
    max_t: int | None = None
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class ResourcesSpec:
    """Per trial; None keeps the base config's value."""

    workers_per_trial: int | None = None
    cpus_per_worker: float | None = None
    use_gpu: bool | None = None


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec. ``base`` is the resolved base TrainConfig as a dict, with the
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
                     run_name: str | None = None, tracking_uri: str | None = None) -> TrainConfig:
        """The resolved TrainConfig of a trial with searched values ``params`` ({section.key: value})."""
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
        return TrainConfig.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec (what ``spec.yaml`` and the parent run's params hold)."""
        return {
            "name": self.name, "base": {"config": self.base_config, "overrides": dict(self.base_overrides)},
            "space": {d.key: d.to_dict() for d in self.space}, "metric": self.metric, "mode": self.mode,
            "num_samples": self.num_samples,
            "max_concurrent_trials": self.max_concurrent_trials if self.max_concurrent_trials else "auto",
            "scheduler": dataclasses.asdict(self.scheduler), "resources": dataclasses.asdict(self.resources),
            "seed": self.seed, "tracking": {"experiment": self.experiment, "run_name": self.run_name,
                                            "uri": self.tracking_uri},
            "output_dir": self.output_dir, "verbose": self.verbose,
        }


def load_sweep_spec(path: str, overrides: list[str] | None = None) -> SweepSpec:
    """Read, override and validate a sweep spec -> SweepSpec; ConfigError naming the bad key."""
    raw = read_yaml_mapping(path, "sweep spec", f"a mapping of keys ({', '.join(SPEC_KEYS)})")
    for item in overrides or []:
        _apply_override(raw, item)
    try:
        return _parse_spec(raw, path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"spec override {item!r} must look like key=value (e.g. num_samples=4)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
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
    elif head in _SUB_KEYS and len(parts) == 2:
        sub = raw.get(head)
        sub = {"name": sub} if isinstance(sub, str) else dict(sub or {})
        sub[parts[1]] = value
        raw[head] = sub
    elif len(parts) == 1:
        raw[head] = value
    else:
        raise ConfigError(f"override {item!r}: {head} takes no sub-key {'.'.join(parts[1:])!r}")


def _parse_spec(raw: dict, path: str) -> SweepSpec:
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"unknown spec key {unknown[0]!r}; known: {', '.join(SPEC_KEYS)}")
    for sec in ("scheduler", "resources", "tracking"):
        val = raw.get(sec)
        if isinstance(val, dict):
            bad = sorted(set(val) - set(_SUB_KEYS[sec]))
            if bad:
                raise ConfigError(f"unknown spec key {sec}.{bad[0]}; known: {', '.join(_SUB_KEYS[sec])}")
        elif val is not None and not (sec == "scheduler" and isinstance(val, str)):
            raise ConfigError(f"{sec} must be a mapping, got {val!r}")

    name = raw.get("name") or Path(path).stem
    if not isinstance(name, str) or "/" in name or not name.strip():
        raise ConfigError(f"name must be a non-empty name without '/', got {name!r}")
    metric = raw.get("metric", "test_log_joint")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"metric must be the name of a reported metric, got {metric!r}")
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}")
    num_samples = _int(raw.get("num_samples", 1), "num_samples", 1)
    mct = raw.get("max_concurrent_trials", "auto")
    max_concurrent = None if mct in (None, "auto") else _int(mct, "max_concurrent_trials", 1)
    seed = raw.get("seed", 0)
    seed = None if seed is None else _int(seed, "seed", 0)
    verbose = _int(raw.get("verbose", 1), "verbose", 0)
    if verbose > 3:
        raise ConfigError(f"verbose must be 0, 1, 2 or 3, got {verbose}")
    output_dir = raw.get("output_dir", "sweeps")
    if not isinstance(output_dir, str) or not output_dir:
        raise ConfigError(f"output_dir must be a directory, got {output_dir!r}")

    scheduler = _parse_scheduler(raw.get("scheduler", "asha"))
    resources = _parse_resources(raw.get("resources") or {})
    tracking = raw.get("tracking") or {}
    for k in ("experiment", "run_name", "uri"):
        if tracking.get(k) is not None and (not isinstance(tracking[k], str) or not tracking[k]):
            raise ConfigError(f"tracking.{k} must be a non-empty string, got {tracking[k]!r}")

    base_raw = raw.get("base")
    if isinstance(base_raw, str):
        base_raw = {"config": base_raw}
    if not isinstance(base_raw, dict) or not base_raw.get("config"):
        raise ConfigError("base.config must name the training config every trial starts from "
                          "(e.g. configs/embedded/tiny.yaml)")
    bad = sorted(set(base_raw) - {"config", "overrides"})
    if bad:
        raise ConfigError(f"unknown spec key base.{bad[0]}; known: config, overrides")
    base_path = _find_base_config(str(base_raw["config"]), path)
    base_overrides = base_raw.get("overrides") or {}
    if not isinstance(base_overrides, dict):
        raise ConfigError(f"base.overrides must be a mapping of section.key: value, got {base_overrides!r}")
    for key in base_overrides:
        _check_config_key(str(key), f"base.overrides.{key}")
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
    experiment = tracking.get("experiment") or base["tracking"]["experiment"]
    base["tracking"]["experiment"] = experiment
    base, notes = durable_output_paths(base, ray_job_working_dir())
    for note in notes:
        print(f"mvae-dist: {note}", flush=True)
    base = absolute_local_paths(base)
    try:
        base = TrainConfig.from_dict(base).to_dict()
    except ConfigError as e:
        raise ConfigError(f"base ({base_raw['config']} + overrides): {e}") from None
    if scheduler.name == "asha":
        scheduler = dataclasses.replace(scheduler, max_t=base["train"]["epochs"])
        if scheduler.grace_period > scheduler.max_t:
            raise ConfigError(f"scheduler.grace_period must be <= max_t {scheduler.max_t}, "
                              f"got {scheduler.grace_period}")

    space_raw = raw.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise ConfigError("space must map at least one config key (section.key) to a search kind, "
                          "e.g. objective.gamma: {uniform: [1.1, 5.0]}")
    space = tuple(_parse_dimension(str(k), v) for k, v in space_raw.items())

    spec = SweepSpec(path=path, name=name.strip(), base_config=base_path, base_overrides=dict(base_overrides),
                     base=base, space=space, metric=metric, mode=mode, num_samples=num_samples,
                     max_concurrent_trials=max_concurrent, scheduler=scheduler, resources=resources,
                     seed=seed, experiment=experiment, run_name=tracking.get("run_name"),
                     tracking_uri=tracking.get("uri"), output_dir=output_dir, verbose=verbose)
    _validate_space(spec)
    return spec


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return value


def _parse_scheduler(raw: Any) -> SchedulerSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    name = raw.get("name", "asha")
    if name not in ("asha", "fifo"):
        raise ConfigError(f"scheduler.name must be 'asha' or 'fifo', got {name!r}")
    if name == "fifo":
        extra = sorted(k for k in raw if k != "name" and raw[k] is not None)
        if extra:
            raise ConfigError(f"scheduler.{extra[0]} applies to asha only (scheduler.name is fifo)")
        return SchedulerSpec(name="fifo")
    max_t = raw.get("max_t")
    max_t = None if max_t is None else _int(max_t, "scheduler.max_t", 1)
    grace = _int(raw.get("grace_period", 1), "scheduler.grace_period", 1)
    rf = _number(raw.get("reduction_factor", 2), "scheduler.reduction_factor")
    if not rf > 1:
        raise ConfigError(f"scheduler.reduction_factor must be > 1, got {rf}")
    if max_t is not None and grace > max_t:
        raise ConfigError(f"scheduler.grace_period must be <= scheduler.max_t {max_t}, got {grace}")
    return SchedulerSpec("asha", max_t, grace, float(rf))


def _parse_resources(raw: dict) -> ResourcesSpec:
    workers = raw.get("workers_per_trial")
    workers = None if workers is None else _int(workers, "resources.workers_per_trial", 1)
    cpus = raw.get("cpus_per_worker")
    if cpus is not None and not _number(cpus, "resources.cpus_per_worker") > 0:
        raise ConfigError(f"resources.cpus_per_worker must be > 0, got {cpus}")
    gpu = raw.get("use_gpu")
    if gpu is not None and not isinstance(gpu, bool):
        raise ConfigError(f"resources.use_gpu must be true or false, got {gpu!r}")
    return ResourcesSpec(workers, None if cpus is None else float(cpus), gpu)


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
    fields = [f.name for f in dataclasses.fields(SECTIONS[section])]
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


# ----------------------------------------------------------------------------- results
@dataclass
class TrialRecord:
    """One trial: its searched values, last reported metrics and how it ended."""

    trial_id: str
    status: TrialStatus
    params: dict[str, Any]
    metrics: dict[str, float | int]
    iterations: int
    run_id: str | None = None
    error: str | None = None

    def value(self, metric: str) -> float | None:
        v = self.metrics.get(metric)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


@dataclass
class SweepResult:
    """What ``run_sweep`` returns; ``lines()`` is what the CLI prints."""

    name: str
    sweep_run: str
    metric: str
    mode: str
    keys: list[str]
    trials: list[TrialRecord]
    best: TrialRecord | None
    parent_run_id: str
    tracking_uri: str
    experiment: str
    output_dir: str
    elapsed_s: float
    files: dict[str, str] = field(default_factory=dict)

    @property
    def best_config_path(self) -> str:
        return self.files["best_config"]

    def lines(self, max_rows: int = 10) -> list[str]:
        from .tracking import ui_command

        counts = {s: sum(t.status == s for t in self.trials) for s in _RUN_STATUS}
        out = [f"sweep {self.sweep_run}: {len(self.trials)} trials ({counts['completed']} completed, "
               f"{counts['early_stopped']} early stopped, {counts['error']} failed) in "
               f"{self.elapsed_s:.0f} s; metric {self.metric} ({self.mode})"]
        table = _markdown(_rows(self, short=True))
        out += table[: max_rows + 2]
        if len(table) > max_rows + 2:
            out.append(f"... {len(table) - max_rows - 2} more rows in {self.files['trials_md']}")
        if self.best is not None:
            shown = ", ".join(f"{k} = {_fmt(self.best.params.get(k))}" for k in self.keys)
            out.append(f"best trial {self.best.trial_id}: {self.metric} = "
                       f"{_fmt(self.best.value(self.metric))} ({shown})")
            out.append(f"best config: {self.best_config_path}")
        out.append(f"trials table and plots: {self.output_dir}")
        out.append(f"MLflow parent run {self.parent_run_id} (experiment {self.experiment}) at "
                   f"{self.tracking_uri}; open the UI with:")
        out.append(f"  {ui_command(self.tracking_uri)}")
        return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _ranked(trials: list[TrialRecord], metric: str, mode: str) -> list[TrialRecord]:
    sign = -1.0 if mode == "max" else 1.0
    return sorted(trials, key=lambda t: (t.value(metric) is None,
                                         sign * (t.value(metric) or 0.0), t.trial_id))


def _metric_columns(result: SweepResult) -> list[str]:
    names = sorted({k for t in result.trials for k in t.metrics} - {result.metric})
    return [result.metric, *names]


def _rows(result: SweepResult, short: bool = False) -> list[dict[str, Any]]:
    """Trial table rows, best first. short: the metric, epoch and step only."""
    metrics = [result.metric, "epoch", "step"] if short else _metric_columns(result)
    rows = []
    for t in _ranked(result.trials, result.metric, result.mode):
        row: dict[str, Any] = {"trial": t.trial_id, "status": t.status, "iterations": t.iterations}
        row.update({k: t.params.get(k) for k in result.keys})
        row.update({m: t.metrics.get(m) for m in metrics})
        if not short:
            row["run_id"] = t.run_id
            row["error"] = t.error
        rows.append(row)
    return rows


def _markdown(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(no trials)"]
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(_fmt(r.get(c)).replace("|", "/") for c in cols) + " |" for r in rows]
    return out


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def _plot(result: SweepResult, key: str, log_scale: bool) -> Any:
    """uint8 [H, W, 3] image: the metric of every trial against its value of ``key``."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = [(t.params.get(key), t.value(result.metric), t.status) for t in result.trials]
    points = [p for p in points if p[1] is not None]
    numeric = all(isinstance(p[0], (int, float)) and not isinstance(p[0], bool) for p in points)
    labels: list[str] = []
    if not numeric:
        labels = sorted({str(p[0]) for p in points})
        points = [(labels.index(str(x)), y, s) for x, y, s in points]
    styles = {"completed": ("o", "tab:blue"), "early_stopped": ("x", "tab:orange"), "error": ("s", "tab:red")}
    for status, (marker, color) in styles.items():
        xs = [x for x, _, s in points if s == status]
        ys = [y for _, y, s in points if s == status]
        if xs:
            ax.scatter(xs, ys, marker=marker, color=color, label=status.replace("_", " "))
    if result.best is not None and result.best.value(result.metric) is not None:
        bx = result.best.params.get(key)
        bx = labels.index(str(bx)) if labels else bx
        ax.scatter([bx], [result.best.value(result.metric)], s=160, facecolors="none",
                   edgecolors="black", label="best")
    if labels:
        ax.set_xticks(range(len(labels)), labels)
    elif log_scale:
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(f"{result.metric} (last report)")
    ax.set_title(f"{result.sweep_run}: {result.metric} vs {key}", fontsize=9)
    if points:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ----------------------------------------------------------------------------- trial
@dataclass(frozen=True)
class _Plan:
    """What each trial needs (sent to the trial actors once, via tune.with_parameters)."""

    spec: SweepSpec
    sweep_run: str
    trials_root: str
    tracking_uri: str
    parent_run_id: str

    def config(self, params: Mapping[str, Any], trial_id: str) -> TrainConfig:
        return self.spec.trial_config(params, name=trial_id, storage_path=self.trials_root,
                                      run_name=f"{self.spec.name}-{trial_id}", tracking_uri=self.tracking_uri)

    def tags(self, trial_id: str) -> dict[str, str]:
        return {TAG_TRIAL: trial_id, TAG_SWEEP: self.spec.name, TAG_SWEEP_RUN: self.sweep_run}


def _run_trial(params: dict[str, Any], plan: _Plan) -> None:
    """Tune function trainable: one trial = one child MLflow run + one Ray Train run.

    Its TorchTrainer's TuneReportCallback turns every worker report (one per epoch) into a Tune
    iteration. Code after ``trainer.fit()`` does not run when the scheduler stops the trial: the
    driver-side ``_TrialCallback`` finishes the child run then.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .tracking import Tracker
    from .train.driver import TrainingError, build_trainer, failure_reason, finish_fit, run_storage

    trial_id = tune.get_context().get_trial_id()
    cfg = plan.config(params, trial_id)
    tracker = Tracker(plan.tracking_uri, cfg.tracking.experiment)
    options = load_storage_options(cfg.train.storage_options_file, "train.storage_options_file")
    storage = run_storage(cfg.train.storage_path, cfg.train.name, options)
    run_id = tracker.start(cfg.tracking.run_name, params=applicable(cfg.to_dict()),
                           parent_run_id=plan.parent_run_id,
                           tags={**plan.tags(trial_id), TAG_STATUS: "running", "ray_run_path": storage.url,
                                 "model": cfg.model.name, "objective": cfg.objective.name})
    class _EpochReports(TuneReportCallback):
        """Forwards each epoch's report to Tune, but not a worker's give-up report on non-finite
        losses: it has no metrics (Tune would stop the whole sweep over the missing metric);
        finish_fit turns it into this trial's error instead."""

        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            if metrics and metrics[0].get("aborted_nonfinite"):
                return
            super().after_report(run_context, metrics, checkpoint)

    trainer = build_trainer(cfg, run_id=run_id, tracking_uri=plan.tracking_uri, storage=storage,
                            callbacks=[_EpochReports()])
    try:
        result = trainer.fit()
    except Exception as e:
        # The driver's _TrialCallback alone tags and ends the child run: when the scheduler stops a
        # trial, fit() may raise here as its actor is torn down, after the driver recorded
        # early_stopped, and a write from here would turn that into a false "error".
        raise TrainingError(f"trial {trial_id} failed: {failure_reason(e)}") from e
    finish_fit(cfg, result, tracker, storage)


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


def _short_error(exc: Any) -> str:
    cause = getattr(exc, "cause", None) or exc
    return one_line(cause, last=one_line(cause).startswith("Traceback"))[:500]


def _trial_error(trial: Any) -> str:
    """The trial's error in one line. Tune writes it to the trial's local folder before calling
    on_trial_error and syncs it to storage later, so the local copy is read first."""
    import cloudpickle

    try:
        local = trial.pickled_error_file
        if local and os.path.exists(local):
            with open(local, "rb") as f:
                return _short_error(cloudpickle.load(f))
        exc = trial.get_pickled_error() or trial.get_error()
        return _short_error(exc) if exc else "trial failed"
    except Exception:  # an unreadable error file: the status is what matters
        return "trial failed"


def _attach(tracking_uri: str, experiment: str, run_id: str) -> Any:
    """A Tracker bound to an existing run, without resuming it (no RUNNING, no resume_count)."""
    from .tracking import Tracker

    t = Tracker(tracking_uri, experiment)
    t.attach(run_id)
    return t


def _finish_child(plan: _Plan, trial_id: str, params: Mapping[str, Any], status: TrialStatus,
                  iterations: int, error: str | None) -> str:
    """Tag the trial's child run and end it with the status's MLflow status (a run the workers
    already ended keeps theirs) -> its run id. A trial that failed before opening its run gets
    one, FAILED, so that every trial has a child run."""
    from .tracking import Tracker, find_runs

    spec = plan.spec
    runs = find_runs(spec.experiment, f"tags.{TAG_SWEEP_RUN} = '{plan.sweep_run}' AND "
                     f"tags.{TAG_TRIAL} = '{trial_id}'", tracking_uri=plan.tracking_uri)
    tags = {TAG_STATUS: status, "tune_iterations": iterations}
    if error:
        tags["tune_error"] = error[:4000]
    if not runs:
        t = Tracker(plan.tracking_uri, spec.experiment)
        try:
            cfg: Any = plan.config(params, trial_id).to_dict()
        except ConfigError:
            cfg = {"space": {k: _plain_value(v) for k, v in params.items()}}
        run_id = t.start(f"{spec.name}-{trial_id}", params=cfg, parent_run_id=plan.parent_run_id,
                         tags={**plan.tags(trial_id), **tags})
        t.end("FAILED" if status == "error" else _RUN_STATUS[status])
        return run_id
    run = runs[0]
    t = _attach(plan.tracking_uri, spec.experiment, run.run_id)
    t.set_tags(tags)
    if run.status == "RUNNING":
        t.end(_RUN_STATUS[status])
    return run.run_id


def _callback_class() -> type:
    from ray.tune import Callback

    class _TrialCallback(Callback):
        """Driver side: records each finished trial and finishes its child MLflow run."""

        def __init__(self, plan: _Plan) -> None:
            self.plan = plan
            self.records: dict[str, TrialRecord] = {}

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._finish(trial, None)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            error = _trial_error(trial)
            self._finish(trial, error)

        def _finish(self, trial: Any, error: str | None) -> None:
            last = dict(trial.last_result or {})
            params = {k: _plain_value(v) for k, v in (trial.config or {}).items()}
            iterations = int(last.get("training_iteration", 0) or 0)
            status: TrialStatus = "error" if error else (
                "completed" if self._reached_budget(params, trial.trial_id, last) else "early_stopped")
            metrics = {k: v if isinstance(v, int) else float(v) for k, v in last.items()
                       if k not in _TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
            rec = TrialRecord(trial.trial_id, status, params, metrics, iterations, error=error)
            try:
                rec.run_id = _finish_child(self.plan, trial.trial_id, params, status, iterations, error)
            except Exception as e:  # never break the sweep over bookkeeping
                warnings.warn(f"could not finish the MLflow run of trial {trial.trial_id}: {e}", stacklevel=2)
            self.records[trial.trial_id] = rec

        def _reached_budget(self, params: dict, trial_id: str, last: dict) -> bool:
            """The trial's last report is its final one: every epoch done, or train.max_steps hit."""
            try:
                cfg = self.plan.config(params, trial_id)
            except ConfigError:
                return False
            if int(last.get("epoch", 0) or 0) >= cfg.train.epochs:
                return True
            return bool(cfg.train.max_steps) and int(last.get("step", 0) or 0) >= cfg.train.max_steps

        def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment state
            return {"plan": self.plan, "records": self.records}

    return _TrialCallback


# ----------------------------------------------------------------------------- sweep
def run_sweep(spec_path: str, overrides: list[str] | None = None, *, tracking_uri: str | None = None,
              ray_address: str | None = None) -> SweepResult:
    """Run the sweep of ``spec_path`` (+ ``key=value`` overrides) on Ray Tune -> SweepResult.

    tracking_uri: MLflow (else the spec's tracking.uri, the base config's, $MLFLOW_TRACKING_URI,
    sqlite in the cwd); ray_address: a Ray cluster (else the running one, or a local one).
    ConfigError for a bad spec; SweepError when Tune fails or no trial reports the metric.
    """
    from .tracking import Tracker, default_tracking_uri
    from .train.driver import run_storage

    t0 = time.time()
    spec = load_sweep_spec(spec_path, overrides)
    uri = tracking_uri or spec.tracking_uri or spec.base["tracking"]["tracking_uri"] or default_tracking_uri()
    options = load_storage_options(spec.base["train"]["storage_options_file"], "train.storage_options_file")
    out_root = Path(spec.output_dir).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sweep_run, n = f"{spec.name}-{stamp}", 1
    storage = run_storage(spec.base["train"]["storage_path"], sweep_run, options)
    while storage.exists() or (out_root / sweep_run).exists():
        n += 1
        sweep_run = f"{spec.name}-{stamp}-{n}"
        storage = run_storage(spec.base["train"]["storage_path"], sweep_run, options)

    from .data import open_manifest

    data = spec.base["data"]  # every trial reads it: a missing data set is one error, here and now
    data_options = load_storage_options(data["storage_options_file"], "data.storage_options_file")
    open_manifest(data["url"], data_options)
    _check_metric_inputs(spec, data_options)
    parent = Tracker(uri, spec.experiment)  # an unreachable tracking server: one line, before Ray
    max_concurrent = _start_ray(spec, ray_address)
    parent_id = parent.start(spec.run_name or sweep_run, params=spec.to_dict(),
                             tags={TAG_SWEEP: spec.name, TAG_SWEEP_RUN: sweep_run, "sweep_spec": spec.path,
                                   "ray_run_path": storage.url, "metric": spec.metric, "mode": spec.mode})
    plan = _Plan(spec, sweep_run, f"{storage.url}/trials", uri, parent_id)
    try:
        records = _tune(plan, storage, max_concurrent)
        result = _summarize(plan, records, parent, out_root, t0)
    except KeyboardInterrupt:
        _close_children(plan, "KILLED")
        parent.end("KILLED")
        raise
    except BaseException:
        _close_children(plan, "FAILED")
        parent.end("FAILED")
        raise
    _close_children(plan, None)
    if result.best is None:
        parent.end("FAILED")
        errors = [t.error for t in result.trials if t.error]
        why = f"; first error: {errors[0]}" if errors else ""
        raise SweepError(f"no trial of sweep {sweep_run} reported the metric {spec.metric!r} "
                         f"({len(result.trials)} trials{why}); table: {result.files['trials_md']}")
    parent.end("FINISHED")
    return result


def _check_metric_inputs(spec: SweepSpec, data_options: dict | None) -> None:
    """A coherence metric needs digit classifiers: without them no trial could report it, so the
    sweep is refused before Ray starts (DataError naming the command that trains them)."""
    if not spec.metric.startswith("coherence"):
        return
    from .config import TrainConfig
    from .eval.evaluation import load_eval_classifiers

    cfg = TrainConfig.from_dict(spec.base)
    if cfg.eval.classifiers == "none":
        raise ConfigError(f"metric {spec.metric!r} needs digit classifiers, "
                          "but base.eval.classifiers is 'none'")
    load_eval_classifiers(cfg, data_options, required=True)


def _start_ray(spec: SweepSpec, ray_address: str | None) -> int:
    """Connect to / start Ray -> max concurrent trials (the spec's, or as many as the CPUs hold)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address, log_to_driver=True)
    train = spec.base["train"]
    per_trial = train["num_workers"] * train["cpus_per_worker"] + DRIVER_CPU
    total = float(ray.cluster_resources().get("CPU", 0.0))
    local = ray_address is None and not os.environ.get("RAY_ADDRESS")
    if local and per_trial > total + 1e-9:
        raise ConfigError(
            f"resources: a trial needs {per_trial:g} CPUs (workers_per_trial {train['num_workers']} x "
            f"cpus_per_worker {train['cpus_per_worker']:g} + {DRIVER_CPU} for its driver) but Ray has "
            f"{total:g}; lower resources.cpus_per_worker "
            f"(e.g. {(total - DRIVER_CPU) / train['num_workers']:.2f})"
        )
    if spec.max_concurrent_trials:
        return spec.max_concurrent_trials
    return max(1, int(total // per_trial + 1e-9)) if total else 1


def _tune(plan: _Plan, storage: Any, max_concurrent: int) -> list[TrialRecord]:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    spec = plan.spec
    if spec.scheduler.name == "asha":
        scheduler: Any = ASHAScheduler(max_t=spec.scheduler.max_t, grace_period=spec.scheduler.grace_period,
                                       reduction_factor=spec.scheduler.reduction_factor,
                                       stop_last_trials=False)  # the last epoch ends by itself (model logged)
    else:
        scheduler = FIFOScheduler()
    callback = _callback_class()(plan)
    trainable = tune.with_resources(tune.with_parameters(_run_trial, plan=plan), {"cpu": DRIVER_CPU})
    # BasicVariantGenerator is no Searcher: Tune ignores TuneConfig.max_concurrent_trials with it
    search = BasicVariantGenerator(max_concurrent=max_concurrent, random_state=spec.seed)
    tuner = tune.Tuner(
        trainable,
        param_space={d.key: d.to_tune() for d in spec.space},
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                                    scheduler=scheduler, search_alg=search,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=plan.sweep_run, storage_path=storage.ray_path,
                                  storage_filesystem=storage.ray_filesystem, callbacks=[callback],
                                  verbose=spec.verbose, failure_config=tune.FailureConfig(max_failures=0)),
    )
    try:
        grid = tuner.fit()
    except Exception as e:
        text = str(e)
        if "did not include the specified metric" in text:
            raise SweepError(f"the trials' reports do not include the metric {spec.metric!r} "
                             "(spec key metric; the workers report test_log_joint, epoch_loss, ...)") from e
        raise SweepError(f"the Tune run {plan.sweep_run} failed: {_short_error(e)}") from e
    records = dict(callback.records)
    for r in grid:  # trials the callback never saw (none expected): keep them in the table
        tid = (r.metrics or {}).get("trial_id")
        if tid and tid not in records:
            params = {k: _plain_value(v) for k, v in (r.config or {}).items()}
            records[tid] = TrialRecord(tid, "error" if r.error else "completed", params,
                                       {}, int((r.metrics or {}).get("training_iteration", 0)),
                                       error=_short_error(r.error) if r.error else None)
    return sorted(records.values(), key=lambda t: t.trial_id)


def _close_children(plan: _Plan, status: str | None) -> None:
    """End every child run still RUNNING: with ``status``, or (None) as its trial's record says;
    tag the runs its workers ended while Tune never reported the trial's end by their status."""
    from .tracking import find_runs

    try:
        runs = find_runs(plan.spec.experiment, f"tags.mlflow.parentRunId = '{plan.parent_run_id}'",
                         tracking_uri=plan.tracking_uri)
        for run in runs:
            tune_status = run.tags.get(TAG_STATUS, "running")
            running = run.status == "RUNNING"
            if not running and tune_status in _RUN_STATUS:
                continue  # ended and tagged
            # still running, or ended by its workers while Tune never reported the trial's end
            end = (status or _RUN_STATUS.get(tune_status, "FAILED")) if running else run.status
            t = _attach(plan.tracking_uri, plan.spec.experiment, run.run_id)
            if tune_status not in _RUN_STATUS:
                t.set_tags({TAG_STATUS: {"FAILED": "error", "FINISHED": "completed"}.get(end, "killed")})
            if running:
                t.end(end)
    except Exception as e:  # cleanup must not hide the sweep's own error
        warnings.warn(f"could not close the sweep's child runs: {e}", stacklevel=2)


def _summarize(plan: _Plan, records: list[TrialRecord], parent: Any, out_root: Path,
               t0: float) -> SweepResult:
    """Best trial, table, plots -> the local folder (atomically) and the parent run's artifacts."""
    from .eval.images import save_png
    from .tracking import redact_config

    spec = plan.spec
    ranked = _ranked(records, spec.metric, spec.mode)
    best = ranked[0] if ranked and ranked[0].value(spec.metric) is not None else None
    final = out_root / plan.sweep_run
    result = SweepResult(spec.name, plan.sweep_run, spec.metric, spec.mode, spec.keys, records, best,
                         plan.parent_run_id, plan.tracking_uri, spec.experiment, str(final),
                         time.time() - t0)
    rows = _rows(result)
    texts: dict[str, str] = {
        "trials.csv": _csv_text(rows),
        "trials.md": "\n".join(_markdown(rows)) + "\n",
        "spec.yaml": yaml.safe_dump(redact_config(spec.to_dict()), sort_keys=False),
    }
    summary: dict[str, Any] = {
        "sweep": spec.name, "sweep_run": plan.sweep_run, "metric": spec.metric, "mode": spec.mode,
        "parent_run_id": plan.parent_run_id, "tracking_uri": plan.tracking_uri,
        "experiment": spec.experiment, "trials": len(records),
        "status_counts": {s: sum(t.status == s for t in records) for s in _RUN_STATUS},
        "best": None,
    }
    if best is not None:
        cfg = redact_config(plan.config(best.params, best.trial_id).to_dict())
        head = (f"# Best trial {best.trial_id} of sweep {plan.sweep_run}: {spec.metric} = "
                f"{best.value(spec.metric)!r} ({spec.mode}); MLflow run {best.run_id}.\n"
                f"# Retrain: mvae-dist train --config <this file> train.name=<a new name>\n")
        texts["best_config.yaml"] = head + yaml.safe_dump(cfg, sort_keys=False)
        summary["best"] = {"trial_id": best.trial_id, "run_id": best.run_id, "value": best.value(spec.metric),
                           "params": best.params}
    texts["summary.json"] = json.dumps(summary, indent=2, default=str) + "\n"
    images = {f"plots/{_slug(spec.metric)}_vs_{_slug(d.key)}.png": _plot(result, d.key, d.log_scale)
              for d in spec.space}

    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".{plan.sweep_run}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for name, text in texts.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        for name, img in images.items():
            save_png(img, tmp / name)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.files = {"trials_csv": str(final / "trials.csv"), "trials_md": str(final / "trials.md"),
                    "summary": str(final / "summary.json"), "plots": str(final / "plots")}
    if best is not None:
        result.files["best_config"] = str(final / "best_config.yaml")

    for name, text in texts.items():
        parent.log_text(text, name)
    for name, img in images.items():
        parent.log_image(img, name)
    counts = {f"trials_{s}": c for s, c in summary["status_counts"].items()}
    best_value = {f"best_{spec.metric}": best.value(spec.metric)} if best else {}
    parent.log_metrics({"trials": len(records), **counts, **best_value}, step=0)
    tags = {"output_dir": str(final)}
    if best is not None:
        tags.update({"best_trial_id": best.trial_id, "best_run_id": best.run_id or ""})
    parent.set_tags(tags)
    return result


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


__all__ = [
    "DRIVER_CPU", "SEARCH_KINDS", "SPEC_KEYS", "Dimension", "ResourcesSpec", "SchedulerSpec", "SweepError",
    "SweepResult", "SweepSpec", "TrialRecord", "load_sweep_spec", "run_sweep",
]
