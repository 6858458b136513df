"""Sweeps: spec parsing and validation (fast, no Ray), then the tiny spec on a real local Ray
cluster against a sqlite MLflow store (slow)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from mvae_dist.config import load_train_config
from mvae_dist.errors import ConfigError
from mvae_dist.launch.cli import main
from mvae_dist.launch.sweep import SEARCH_KINDS, load_sweep_spec

ROOT = Path(__file__).parents[2]
TINY = str(ROOT / "tune" / "tiny.yaml")
GAMMA_N_K = str(ROOT / "tune" / "gamma_n_k.yaml")


def _error(capsys, *args: str) -> str:
    """Run ``mvae-dist tune TINY args`` -> its one error line (asserting exit 1 and one line)."""
    assert main(["tune", *args]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mvae-dist: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------ fast
def test_shipped_specs_parse():
    spec = load_sweep_spec(GAMMA_N_K)
    assert spec.keys == ["objective.gamma", "objective.N", "objective.K"]
    gamma, n, k = spec.space
    assert (gamma.kind, gamma.args) == ("uniform", (1.1, 5.0))
    assert n.args == (1, 2, 5, 10) and k.args == (1, 5, 10, 30)
    assert (spec.metric, spec.mode, spec.scheduler.name) == ("coherence_cross", "max", "asha")
    assert spec.base["model"]["name"] == "mmvae" and spec.base["train"]["epochs"] == spec.scheduler.max_t

    tiny = load_sweep_spec(TINY)
    assert tiny.num_samples >= 3 and tiny.metric == "test_log_joint"
    assert tiny.base["train"]["num_workers"] == 1 and tiny.base["train"]["max_steps"] > 0
    # the sweep's own settings: one report per epoch, after the evaluation that gives the metric
    assert tiny.base["train"]["checkpoint_every"] == 0 and tiny.base["train"]["eval_every"] == 1
    assert Path(tiny.base["data"]["url"]).is_absolute()


def test_overrides_on_the_command_line():
    spec = load_sweep_spec(TINY, ["num_samples=5", "scheduler=fifo", "base.data.url=/data/x",
                                  "base.optim.lr=0.01", "space.objective.K=null",
                                  "space.optim.lr={loguniform: [1.0e-4, 1.0e-2]}",
                                  "resources.workers_per_trial=2", "tracking.experiment=other"])
    assert spec.num_samples == 5 and spec.scheduler.name == "fifo"
    assert spec.base["data"]["url"] == "/data/x" and spec.base["optim"]["lr"] == 0.01
    assert spec.keys == ["objective.gamma", "objective.N", "optim.lr"]
    assert spec.space[-1].log_scale and spec.base["train"]["num_workers"] == 2
    assert spec.experiment == "other" and spec.base["tracking"]["experiment"] == "other"
    # a trial's config: searched values over the base, numpy numbers (what Tune samples) included
    import numpy as np

    cfg = spec.trial_config({"objective.gamma": np.float64(2.5), "objective.N": np.int64(4),
                             "optim.lr": 3e-3}, name="t1")
    assert (cfg.objective.gamma, cfg.objective.N, cfg.optim.lr, cfg.train.name) == (2.5, 4, 3e-3, "t1")
    assert type(cfg.objective.N) is int


def test_every_search_kind_becomes_a_tune_sampler():
    pytest.importorskip("ray.tune")
    spec = load_sweep_spec(TINY, [
        "space.optim.lr={loguniform: [1.0e-4, 1.0e-2]}", "space.optim.grad_clip={quniform: [0.0, 2.0, 0.5]}",
        "space.optim.weight_decay={qloguniform: [1.0e-6, 1.0e-3, 1.0e-6]}",
        "space.model.latent_dim={randint: [4, 9]}", "space.model.hidden={qrandint: [64, 256, 64]}",
        "space.train.eval_K={lograndint: [1, 8]}", "space.objective.estimator={grid_search: [iwae, cubo]}",
        "space.model.name={choice: [mmvae, jmvae]}",
    ])
    assert {d.kind for d in spec.space} == set(SEARCH_KINDS)
    for d in spec.space:
        assert d.to_tune() is not None


@pytest.mark.parametrize("override, message", [
    ("space.objective.gama={uniform: [1.5, 3.0]}",
     "space.objective.gama: unknown config key 'objective.gama'; known in objective:"),
    ("space.optimizer.lr={uniform: [0.1, 0.2]}", "space.optimizer.lr: unknown config key 'optimizer.lr'"),
    ("space.objective.gamma={uniform: [0.5, 3.0]}",
     "space.objective.gamma = 0.5: objective.gamma must be > 1, got 0.5"),
    ("space.objective.gamma={uniform: [1.0, 3.0]}", "objective.gamma must be > 1, got 1.0"),
    ("space.objective.gamma={choice: [2, 1]}",
     "space.objective.gamma = 1: objective.gamma must be > 1, got 1"),
    ("space.objective.K={normal: [1, 2]}", "space.objective.K: unknown search kind 'normal'; known: choice,"),
    ("space.objective.K=[1, 2]", "space.objective.K must be one {kind: arguments} mapping"),
    ("space.objective.K={randint: [1, 2.5]}", "space.objective.K: randint needs integer arguments"),
    ("space.objective.gamma={uniform: [3, 2]}", "space.objective.gamma: uniform needs lo < hi"),
    ("space.optim.lr={loguniform: [0, 1]}", "space.optim.lr: loguniform needs lo > 0"),
    ("space.objective.K={choice: []}", "space.objective.K: choice needs a non-empty list"),
    ("space.objective.estimator={choice: [iwae, nope]}",
     "objective.estimator must be one of iwae, cubo, elbo, got 'nope'"),
    ("space.train.checkpoint_every={choice: [0, 5]}",
     "space.train.checkpoint_every: train.checkpoint_every is set by the sweep"),
    ("space.train.epochs={choice: [1, 2]}", "space.train.epochs: train.epochs cannot be searched"),
    ("base.config=configs/embedded/nope.yaml", "base.config: no config file 'configs/embedded/nope.yaml'"),
    ("base.objective.gamma=0.9", "objective.gamma must be > 1, got 0.9"),
    ("base.objective.gamm=2", "base.overrides.objective.gamm: unknown config key 'objective.gamm'"),
    ("base.train.checkpoint_every=5", "base.overrides.train.checkpoint_every: set by the sweep to 0"),
    ("num_sample=3", "unknown spec key 'num_sample'"),
    ("num_samples=0", "num_samples must be >= 1, got 0"),
    ("mode=maximum", "mode must be one of max, min, got 'maximum'"),
    ("scheduler=hyperband", "scheduler.name must be one of asha, fifo, got 'hyperband'"),
    ("scheduler.grace_period=5", "scheduler.grace_period must be <= scheduler.max_t 3, got 5"),
    ("scheduler.reduction_factor=1", "scheduler.reduction_factor must be > 1, got 1"),
    ("resources.cpus_per_worker=0", "resources.cpus_per_worker must be > 0, got 0"),
    ("resources.gpus=1", "unknown spec key resources.gpus"),
    ("num_samples", "spec override 'num_samples' must look like key=value"),
])
def test_bad_specs_give_one_line_naming_the_key(capsys, override, message):
    line = _error(capsys, TINY, override)
    assert message in line, line


def test_a_bad_combination_of_searched_values_is_named(capsys):
    # each value is fine with the base (batch 16, N 2); N=8 with batch 4 is not (N < global batch)
    line = _error(capsys, TINY, "space.data.batch_size={choice: [16, 4]}",
                  "space.objective.N={choice: [2, 8]}")
    assert "space: the trial" in line and "objective.N=8" in line and "data.batch_size=4" in line, line
    assert "objective.N must be < the global batch 4, got 8" in line


def test_missing_or_broken_spec_files(capsys, tmp_path):
    assert "cannot read sweep spec" in _error(capsys, str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert "is not valid YAML" in _error(capsys, str(bad))
    no_base = tmp_path / "no_base.yaml"
    no_base.write_text("space: {objective.gamma: {uniform: [1.5, 3.0]}}\n")
    assert "base.config must name the training config" in _error(capsys, str(no_base))
    no_space = tmp_path / "no_space.yaml"
    no_space.write_text(f"base: {ROOT / 'configs' / 'embedded' / 'tiny.yaml'}\n")
    assert "space must map at least one config key" in _error(capsys, str(no_space))


def test_direct_calls_raise_config_error():
    with pytest.raises(ConfigError, match=r"tiny.yaml: space.objective.gamma = 0.9: objective.gamma must"):
        load_sweep_spec(TINY, ["space.objective.gamma={uniform: [0.9, 2.0]}"])


def test_a_trial_its_workers_finished_is_completed_even_if_the_stop_came_after(tmp_path):
    """The scheduler's stop can reach a trial whose workers already trained every epoch and ended
    its run FINISHED (its last report was still in flight): the child run and the record say
    "completed", and a run still RUNNING when stopped ends KILLED, tagged "early_stopped"."""
    from mvae_dist.launch.sweep.trial import TAG_STATUS, _finish_child, _Plan
    from mvae_dist.tracking import Tracker, get_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = load_sweep_spec(TINY, ["tracking.experiment=race", f"base.train.storage_path={tmp_path}/runs"])
    parent = Tracker(uri, "race")
    parent_id = parent.start("sweep")
    plan = _Plan(spec, "sweep-1", str(tmp_path / "trials"), uri, parent_id)
    ids = {}
    for trial_id, worker_end in (("t1", "FINISHED"), ("t2", None)):
        t = Tracker(uri, "race")
        ids[trial_id] = t.start(f"tiny-{trial_id}", parent_run_id=parent_id,
                                tags={**plan.tags(trial_id), TAG_STATUS: "running"})
        if worker_end:
            t.end(worker_end)
    params = {"objective.gamma": 2.0}
    assert _finish_child(plan, "t1", params, "early_stopped", 2, None) == (ids["t1"], "completed")
    assert _finish_child(plan, "t2", params, "early_stopped", 1, None) == (ids["t2"], "early_stopped")
    runs = {k: get_run(v, uri) for k, v in ids.items()}
    assert (runs["t1"].status, runs["t1"].tags[TAG_STATUS]) == ("FINISHED", "completed")
    assert (runs["t2"].status, runs["t2"].tags[TAG_STATUS]) == ("KILLED", "early_stopped")


# ------------------------------------------------------------------------------ slow
def _client(uri):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


@pytest.mark.slow
def test_tiny_sweep_end_to_end(ray_cluster, sweep_data, tmp_path, capsys):
    from mvae_dist.tracking import find_runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "sweeps"
    # two trials (the spec's three less one: each trial is a Ray Train start, ~30 core-seconds):
    # both run at once on the 2 CPUs, and ASHA's first rung compares them
    code = main(["tune", TINY, f"base.data.url={sweep_data}", f"base.train.storage_path={tmp_path}/runs",
                 f"output_dir={out}", "tracking.experiment=sweep-test", "verbose=0", "num_samples=2",
                 "--tracking-uri", uri])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "best config:" in printed and "mlflow ui --backend-store-uri" in printed

    # the parent run: best config, trial table and one plot per searched key
    parents = [r for r in find_runs("sweep-test", tracking_uri=uri) if r.parent_run_id is None]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.status == "FINISHED" and parent.run_id in printed
    client = _client(uri)
    arts = {a.path for a in client.list_artifacts(parent.run_id)}
    assert {"best_config.yaml", "trials.csv", "trials.md", "spec.yaml", "summary.json", "plots"} <= arts
    plots = {a.path for a in client.list_artifacts(parent.run_id, "plots")}
    assert plots == {f"plots/test_log_joint_vs_objective.{k}.png" for k in ("gamma", "N", "K")}

    # the child runs: one per trial, nested, terminal, tagged with how they ended
    children = find_runs("sweep-test", f"tags.mlflow.parentRunId = '{parent.run_id}'", tracking_uri=uri)
    assert len(children) == 2
    assert all(c.status in ("FINISHED", "KILLED", "FAILED") for c in children), [c.status for c in children]
    expected = {"completed": "FINISHED", "early_stopped": "KILLED", "error": "FAILED"}
    for c in children:
        assert expected[c.tags["tune_status"]] == c.status, (c.tags, c.status)
        if c.tags["tune_status"] == "early_stopped":
            assert int(c.tags["tune_iterations"]) < 3
    assert any(c.tags["tune_status"] == "completed" for c in children)
    searched = {tuple(c.params[f"objective.{k}"] for k in ("gamma", "N", "K")) for c in children}
    assert len(searched) == len(children)
    assert all(c.params["train.checkpoint_every"] == "0" for c in children)

    # the table lists every trial with its status; the best is the best last value
    local = Path(parent.tags["output_dir"])
    assert local.parent == out and not [p for p in out.iterdir() if p.name.startswith(".")]
    rows = list(csv.DictReader((local / "trials.csv").open()))
    by_run = {c.run_id: c for c in children}
    assert {r["run_id"] for r in rows} == set(by_run)
    for r in rows:
        assert r["status"] == by_run[r["run_id"]].tags["tune_status"]
    values = [float(r["test_log_joint"]) for r in rows if r["test_log_joint"]]
    assert math.isclose(parent.metrics["best_test_log_joint"], max(values))
    assert {p.name for p in (local / "plots").iterdir()} == {Path(p).name for p in plots}

    # the best config loads as a training config and holds the best child's searched values
    best = by_run[parent.tags["best_run_id"]]
    for cfg_path in (local / "best_config.yaml",
                     Path(client.download_artifacts(parent.run_id, "best_config.yaml", str(tmp_path)))):
        cfg = load_train_config(str(cfg_path))
        assert cfg.objective.gamma == float(best.params["objective.gamma"])
        assert cfg.objective.N == int(best.params["objective.N"])
        assert cfg.objective.K == int(best.params["objective.K"])
    assert json.loads((local / "summary.json").read_text())["best"]["run_id"] == best.run_id


@pytest.mark.slow
def test_failed_trials_are_tagged_error_with_their_reason(ray_cluster, sweep_data, tmp_path, capsys):
    """A trial whose workers give up on non-finite losses (lr 1e30) fails alone: its child run
    ends FAILED tagged error with the worker's reason, and the sweep says no trial reported.
    (One trial: a second, failing the same way, cost ~20 s of the suite and showed nothing new.)"""
    from mvae_dist.tracking import find_runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    line = _error(capsys, TINY, f"base.data.url={sweep_data}", f"base.train.storage_path={tmp_path}/runs",
                  f"output_dir={tmp_path}/sweeps", "tracking.experiment=sweep-fail", "verbose=0",
                  "num_samples=1", "base.optim.lr=1.0e30", "base.train.max_nonfinite=0",
                  "--tracking-uri", uri)
    assert "no trial of sweep" in line and "first error: stopped after 1 non-finite losses" in line, line
    runs = find_runs("sweep-fail", tracking_uri=uri)
    parents = [r for r in runs if r.parent_run_id is None]
    children = [r for r in runs if r.parent_run_id is not None]
    assert len(parents) == 1 and parents[0].status == "FAILED"
    assert len(children) == 1
    for c in children:
        assert (c.status, c.tags["tune_status"]) == ("FAILED", "error"), (c.status, c.tags)
        assert c.tags["tune_error"].startswith("stopped after 1 non-finite losses"), c.tags["tune_error"]


def test_a_missing_data_set_is_refused_before_ray_starts(tmp_path, capsys):
    line = _error(capsys, TINY, f"base.data.url={tmp_path}/nowhere", f"output_dir={tmp_path}/sweeps",
                  "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert line == f"mvae-dist: error: manifest.json not found: {tmp_path}/nowhere/manifest.json", line
    assert not (tmp_path / "sweeps").exists()


def test_a_coherence_metric_without_classifiers_is_refused_before_ray_starts(sweep_data, tmp_path, capsys,
                                                                           monkeypatch):
    import mvae_dist.launch.sweep.run as sweep

    monkeypatch.setattr(sweep, "_start_ray", lambda *a: pytest.fail("Ray must not start"))
    line = _error(capsys, TINY, "metric=coherence_cross", f"base.data.url={sweep_data}",
                  f"output_dir={tmp_path}/sweeps", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert "classifiers" in line and "mvae-dist classifiers train" in line, line
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow
def test_a_trial_larger_than_the_cluster_is_refused(ray_cluster, sweep_data, capsys, tmp_path):
    line = _error(capsys, TINY, "resources.cpus_per_worker=2", f"output_dir={tmp_path}",
                  f"base.data.url={sweep_data}",
                  "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert "resources: a trial needs 2.01 CPUs" in line and "lower resources.cpus_per_worker" in line, line
