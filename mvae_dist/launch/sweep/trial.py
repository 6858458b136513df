"""One sweep trial: its Ray Train run under Tune, and its MLflow child run (opened, tagged, closed)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config import (
    RunConfig,
    applicable,
    load_storage_options,
)
from ...errors import ConfigError, one_line
from .results import TrialRecord
from .spec import (
    _RUN_STATUS,
    _TUNE_KEYS,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_SWEEP_RUN,
    TAG_TRIAL,
    SweepSpec,
    TrialStatus,
    _plain_value,
)


# ----------------------------------------------------------------------------- trial
@dataclass(frozen=True)
class _Plan:
    """What each trial needs (sent to the trial actors once, via tune.with_parameters)."""

    spec: SweepSpec
    sweep_run: str
    trials_root: str
    tracking_uri: str
    parent_run_id: str

    def config(self, params: Mapping[str, Any], trial_id: str) -> RunConfig:
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

    from ...tracking import Tracker
    from ...train.driver import TrainingError, build_trainer, failure_reason, finish_fit, run_storage

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
    from ...tracking import Tracker

    t = Tracker(tracking_uri, experiment)
    t.attach(run_id)
    return t


def _finish_child(plan: _Plan, trial_id: str, params: Mapping[str, Any], status: TrialStatus,
                  iterations: int, error: str | None) -> tuple[str, TrialStatus]:
    """Tag the trial's child run and end it with the status's MLflow status (a run the workers
    already ended keeps theirs) -> (its run id, the status). A trial that failed before opening
    its run gets one, FAILED, so that every trial has a child run. A run its workers ended
    FINISHED trained its whole budget: when the scheduler's stop reached the trial after that
    (its last report still in flight), the status is "completed", not "early_stopped"."""
    from ...tracking import Tracker, find_runs

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
        return run_id, status
    run = runs[0]
    if run.status == "FINISHED" and status == "early_stopped":
        status = "completed"
        tags[TAG_STATUS] = status
    t = _attach(plan.tracking_uri, spec.experiment, run.run_id)
    t.set_tags(tags)
    if run.status == "RUNNING":
        t.end(_RUN_STATUS[status])
    return run.run_id, status


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
                rec.run_id, rec.status = _finish_child(self.plan, trial.trial_id, params, status, iterations,
                                                       error)
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
