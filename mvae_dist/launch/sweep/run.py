"""``run_sweep``: a sweep on Ray Tune, end to end (spec -> trials -> results -> MLflow parent run)."""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from ...config import (
    RunConfig,
    load_storage_options,
)
from ...data import open_manifest
from ...errors import ConfigError
from ...eval.evaluation import load_eval_classifiers
from ...eval.images import save_png
from ...tracking import Tracker, default_tracking_uri, find_runs, redact_config
from ...train.driver import run_storage
from .results import SweepResult, TrialRecord, _csv_text, _markdown, _plot, _ranked, _rows
from .spec import (
    _RUN_STATUS,
    DRIVER_CPU,
    SEARCH_KINDS,
    SPEC_KEYS,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_SWEEP_RUN,
    Dimension,
    ResourcesSpec,
    SchedulerSpec,
    SweepError,
    SweepSpec,
    _plain_value,
    load_sweep_spec,
)
from .trial import _attach, _callback_class, _Plan, _run_trial, _short_error, _trial_dirname


# ----------------------------------------------------------------------------- sweep
def run_sweep(spec_path: str, overrides: list[str] | None = None, *, tracking_uri: str | None = None,
              ray_address: str | None = None) -> SweepResult:
    """Run the sweep of ``spec_path`` (+ ``key=value`` overrides) on Ray Tune -> SweepResult.

    tracking_uri: MLflow (else the spec's tracking.uri, the base config's, $MLFLOW_TRACKING_URI,
    sqlite in the cwd); ray_address: a Ray cluster (else the running one, or a local one).
    ConfigError for a bad spec; SweepError when Tune fails or no trial reports the metric.
    """

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

    cfg = RunConfig.from_dict(spec.base)
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
