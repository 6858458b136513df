"""Tracker against a real sqlite MLflow store (shared by the session) and a real mlflow server."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mvae_dist.eval.images import joint_generation_grid
from mvae_dist.models import build_model
from mvae_dist.tracking import (
    NONFINITE_METRIC,
    Tracker,
    default_artifact_root,
    default_tracking_uri,
    find_runs,
    flatten_params,
    load_run_mlflow_model,
    ui_command,
)

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

MODEL = {"name": "mmvae", "modalities": ["mnist", "svhn"], "latent_dim": 4, "hidden": 16}
SECRET = "hunter2-AKIAEXAMPLE"
CONFIG = {
    "model": MODEL,
    "objective": {"name": "contrastive", "gamma": 2.0, "N": 5, "K": 30, "estimator": "iwae"},
    "data": {
        "url": "s3://bucket/embedded",
        "batch_size": 128,
        "storage_options": {"key": SECRET, "secret": SECRET, "client_kwargs": {"endpoint_url": "x"}},
        "storage_options_file": "/etc/s3.yaml",
    },
    "tracking": {"uri": f"postgresql://mlflow:{SECRET}@db:5432/mlflow", "token": SECRET,
                 "password": SECRET, "aws_access_key_id": SECRET, "experiment": "e"},
    "train": {"seed": 0, "lr": 1e-3, "extra": {}, "tags": None},
}


@pytest.fixture
def tracker(mlflow_sqlite_uri):
    """A Tracker on the session's sqlite store, in an experiment of its own."""
    t = Tracker(mlflow_sqlite_uri, experiment=f"test-{uuid.uuid4().hex[:8]}")
    yield t
    t.end()


def client(t: Tracker) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=t.tracking_uri)


def download(t: Tracker, run_id: str, path: str, tmp_path: Path) -> Path:
    return Path(client(t).download_artifacts(run_id, path, str(tmp_path / uuid.uuid4().hex)))


def test_params_flattened_and_credentials_absent(tracker, tmp_path):
    run_id = tracker.start("params", CONFIG, tags={"kind": "test"})
    run = client(tracker).get_run(run_id)
    p = run.data.params
    assert p["model.name"] == "mmvae" and p["model.latent_dim"] == "4"
    assert json.loads(p["model.modalities"]) == ["mnist", "svhn"]
    assert p["objective.gamma"] == "2.0" and p["data.url"] == "s3://bucket/embedded"
    assert p["tracking.uri"] == "postgresql://***@db:5432/mlflow"
    assert p["train.extra"] == "{}" and p["train.tags"] == "None"
    assert run.data.tags["kind"] == "test" and run.info.run_name == "params"
    for key in p:
        parts = key.lower().split(".")
        bad = ("storage_options", "secret", "token", "password")
        assert not any(s in part for part in parts for s in bad)
        assert "key" not in parts and not any(part.endswith("_key_id") for part in parts)
    logged = json.dumps([p, run.data.tags]) + download(tracker, run_id, "config.yaml", tmp_path).read_text()
    assert SECRET not in logged
    saved = yaml.safe_load(download(tracker, run_id, "config.yaml", tmp_path).read_text())
    assert saved["model"] == MODEL and "storage_options" not in saved["data"]


def test_flatten_params_accepts_dataclasses():
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Inner:
        K: int = 30
        api_token: str = SECRET

    @dataclass(frozen=True)
    class Outer:
        inner: Inner = field(default_factory=Inner)
        modalities: tuple[str, ...] = ("mnist", "svhn")

    assert flatten_params(Outer()) == {"inner.K": "30", "modalities": '["mnist", "svhn"]'}


def test_metrics_with_steps_and_nonfinite_counted(tracker):
    run_id = tracker.start("metrics", {"a": 1})
    for step in range(3):
        values = {"loss": torch.tensor(1.0 / (step + 1)), "iwae": np.float32(-step),
                  "cubo": math.nan if step else 1.0, "grad": math.inf if step == 2 else 0.5}
        dropped = tracker.log_metrics(values, step=step)
        assert dropped == [0, 1, 2][step]
    c = client(tracker)
    loss = c.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert [m.step for m in c.get_metric_history(run_id, "cubo")] == [0]  # NaNs dropped
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, NONFINITE_METRIC)] == [(1, 1.0), (2, 3.0)]
    with pytest.raises(TypeError, match="metric 'bad' must be a number"):
        tracker.log_metrics({"bad": "x"}, step=3)


def test_image_artifact_is_png(tracker, tmp_path):
    model = build_model(MODEL)
    img = joint_generation_grid(model, n=4)
    run_id = tracker.start("images", {})
    assert tracker.log_image(img, "images/step_000010/joint_generation") == \
        "images/step_000010/joint_generation.png"
    local = download(tracker, run_id, "images/step_000010/joint_generation.png", tmp_path)
    with Image.open(local) as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), img)
    tracker.log_dict({"acc": [0.5, 0.6]}, "eval/table.json")
    tracker.log_text("hello", "notes/readme.txt")
    table = download(tracker, run_id, "eval/table.json", tmp_path)
    assert json.loads(table.read_text()) == {"acc": [0.5, 0.6]}
    assert download(tracker, run_id, "notes/readme.txt", tmp_path).read_text() == "hello"


def test_nested_child_run(tracker):
    parent = tracker.start("sweep", {"sweep": "gamma"})
    child_tracker = Tracker(tracker.tracking_uri, experiment=tracker.experiment)
    with child_tracker as ct:
        child = ct.start("trial-0", {"objective": {"gamma": 2.0}}, parent_run_id=parent)
    tracker.end()
    uri = tracker.tracking_uri
    runs = find_runs(tracker.experiment, f"tags.mlflow.parentRunId = '{parent}'", tracking_uri=uri)
    assert [r.run_id for r in runs] == [child]
    assert runs[0].parent_run_id == parent and runs[0].status == "FINISHED"
    assert runs[0].params == {"objective.gamma": "2.0"}
    assert {r.run_id for r in find_runs(tracker.experiment, tracking_uri=uri)} == {parent, child}
    assert find_runs("no-such-experiment", tracking_uri=uri) == []


def test_resume_continues_the_same_run(tracker, tmp_path):
    run_id = tracker.start("resumable", CONFIG)
    tracker.log_metrics({"loss": 3.0, "bad": math.nan}, step=0)
    tracker.log_checkpoint_uri("file:///ckpt/step_100", step=100)
    tracker.log_checkpoint_uri("file:///ckpt/step_100", step=100)  # a repeated report: one entry
    # The worker dies without end(); a fresh process resumes the run by id.
    again = Tracker(tracker.tracking_uri, experiment=tracker.experiment)
    changed = {**CONFIG, "train": {**CONFIG["train"], "lr": 5e-4, "new_option": 1}}
    with pytest.warns(UserWarning, match="train.lr"):
        assert again.start("resumable", changed, run_id=run_id) == run_id
    assert client(tracker).get_run(run_id).info.status == "RUNNING"
    again.log_metrics({"loss": 2.0, "bad": math.inf}, step=200)
    again.log_checkpoint_uri("s3://bucket/ckpt/step_200", step=200)
    assert [e["step"] for e in again.checkpoints()] == [100, 200]
    again.end()
    tracker.run_id = None  # the first tracker's process is gone
    c = client(tracker)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "loss")] == [(0, 3.0), (200, 2.0)]
    assert run.data.metrics[NONFINITE_METRIC] == 2.0  # the count continues across the resume
    assert run.data.params["train.lr"] == "0.001" and run.data.params["train.new_option"] == "1"
    assert run.data.tags["resume_count"] == "1"
    assert run.data.tags["last_checkpoint"] == "s3://bucket/ckpt/step_200"
    assert run.data.tags["last_checkpoint_step"] == "200"
    entries = json.loads(download(tracker, run_id, "checkpoints.json", tmp_path).read_text())["checkpoints"]
    assert [(e["step"], e["uri"]) for e in entries] == [(100, "file:///ckpt/step_100"),
                                                         (200, "s3://bucket/ckpt/step_200")]
    changes = json.loads(download(tracker, run_id, "resume/params_changed_1.json", tmp_path).read_text())
    assert changes == {"train.lr": {"logged": "0.001", "now": "0.0005"}}
    assert len(find_runs(tracker.experiment, tracking_uri=tracker.tracking_uri)) == 1


def test_log_model_round_trip(tracker):
    torch.manual_seed(0)
    model = build_model(MODEL)
    run_id = tracker.start("model", CONFIG)
    tracker.log_model(model, CONFIG)
    loaded, config = load_run_mlflow_model(run_id, tracking_uri=tracker.tracking_uri)
    assert config["model"] == MODEL and "storage_options" not in config["data"]
    assert SECRET not in json.dumps(config)
    assert type(loaded) is type(model) and not loaded.training
    model.eval()
    xs = [torch.rand(3, 1, 28, 28), torch.rand(3, 3, 32, 32)]
    eps = model.draw_eps(2, 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model.prepare(xs, 2, eps), loaded.prepare(xs, 2, eps)
        assert torch.equal(a.log_w, b.log_w)
        for m in range(2):
            assert torch.equal(model.modalities[m].decode(a.z[0])[0], loaded.modalities[m].decode(a.z[0])[0])


def test_context_manager_marks_failed_and_errors(tracker):
    with pytest.raises(RuntimeError, match="boom"), tracker as t:
        run_id = t.start("failing", {})
        raise RuntimeError("boom")
    assert client(tracker).get_run(run_id).info.status == "FAILED"
    with pytest.raises(RuntimeError, match="call Tracker.start"):
        tracker.log_metrics({"x": 1}, step=0)
    with pytest.raises(ValueError, match="status must be"):
        tracker.end("DONE")


def test_defaults_and_ui_command(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = default_tracking_uri()
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert default_artifact_root(uri) == f"file://{tmp_path.resolve()}/mlartifacts"
    assert ui_command(uri, port=5001) == (
        f"mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db "
        f"--default-artifact-root file://{tmp_path.resolve()}/mlartifacts --port 5001"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri() == "http://127.0.0.1:5000"
    assert default_artifact_root("http://127.0.0.1:5000") is None
    assert ui_command() == "python -m webbrowser -t http://127.0.0.1:5000"


def test_a_late_report_of_an_older_checkpoint_moves_no_tag(tracker):
    """Ray Train's controller can report a checkpoint after the stopping driver named a newer one:
    the entry goes in its place, the tags keep naming the newer one."""
    tracker.start("late", CONFIG)
    root = "s3://b/runs/late/checkpoint_2026-12-07_23-33-"
    tracker.log_checkpoint_uri(f"{root}52.1", step=10, newer_only=True)
    tracker.log_checkpoint_uri(f"{root}54.7", step=30)  # the driver, on its way out
    tracker.log_checkpoint_uri(f"{root}53.6", step=20, newer_only=True)  # the controller, late
    assert [e["step"] for e in tracker.checkpoints()] == [10, 20, 30]
    tags = client(tracker).get_run(tracker.run_id).data.tags
    assert tags["last_checkpoint"] == f"{root}54.7" and tags["last_checkpoint_step"] == "30"
    tracker.log_checkpoint_uri(f"{root}55.0", step=40, newer_only=True)  # in order: moves them
    assert client(tracker).get_run(tracker.run_id).data.tags["last_checkpoint"] == f"{root}55.0"
    tracker.log_checkpoint_uri(f"{root}53.6", step=20)  # without newer_only: as ever, the last said
    assert client(tracker).get_run(tracker.run_id).data.tags["last_checkpoint"] == f"{root}53.6"


@pytest.mark.slow
def test_tracker_against_a_real_mlflow_server(mlflow_server, tmp_path):
    with Tracker(tracking_uri=mlflow_server, experiment="server-test") as t:
        run_id = t.start("on-server", CONFIG)
        t.log_metrics({"loss": 1.5}, step=7)
        t.log_image(np.full((8, 8, 3), 200, np.uint8), "images/grid.png")
        t.log_checkpoint_uri("file:///ckpt/1", step=1)
    c = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "mmvae" and SECRET not in json.dumps(run.data.params)
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "loss")] == [(7, 1.5)]
    assert run.data.tags["last_checkpoint"] == "file:///ckpt/1"
    names = {a.path for a in c.list_artifacts(run_id, "images")}
    assert names == {"images/grid.png"}
    assert [r.run_id for r in find_runs("server-test", tracking_uri=mlflow_server)] == [run_id]
    # the UI opens it as a model-training experiment, not in MLflow 3's GenAI view
    assert c.get_experiment_by_name("server-test").tags["mlflow.experimentKind"] == "custom_model_development"


def test_experiments_are_model_training_experiments_and_a_kind_set_stays(mlflow_sqlite_uri):
    name = f"kind-{uuid.uuid4().hex[:8]}"
    c = mlflow.MlflowClient(tracking_uri=mlflow_sqlite_uri)
    Tracker(mlflow_sqlite_uri, experiment=name)
    assert c.get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"
    old = c.create_experiment(f"{name}-plain")  # made by plain MLflow (or before the tag): tagged on use
    Tracker(mlflow_sqlite_uri, experiment=f"{name}-plain")
    assert c.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    c.create_experiment(f"{name}-genai", tags={"mlflow.experimentKind": "genai_development"})
    Tracker(mlflow_sqlite_uri, experiment=f"{name}-genai")  # the user's choice is kept
    assert c.get_experiment_by_name(f"{name}-genai").tags["mlflow.experimentKind"] == "genai_development"


def test_resume_a_stopped_run_without_checkpoints(tracker):
    run_id = tracker.start("stopped", {"a": 1})
    tracker.end("FAILED")
    again = Tracker(tracker.tracking_uri, experiment=tracker.experiment)
    assert again.start(None, {"a": 1}, run_id=run_id) == run_id
    run = client(tracker).get_run(run_id)
    assert run.info.status == "RUNNING" and run.info.run_name == "stopped"
    assert again.checkpoints() == []
    again.end("KILLED")
    assert client(tracker).get_run(run_id).info.status == "KILLED"
    with pytest.raises(mlflow.exceptions.MlflowException):
        Tracker(tracker.tracking_uri, experiment=tracker.experiment).start("x", {}, run_id="0" * 32)


def test_continuing_a_run_is_not_a_resume(tracker):
    """A Ray Train worker group continuing the driver's run (and an evaluation of a finished run)
    reopens it RUNNING without counting a resume; only ``start(run_id=)`` counts."""
    run_id = tracker.start("fresh", {"a": 1})
    tracker.end("FINISHED")
    worker = Tracker(tracker.tracking_uri, tracker.experiment)
    assert worker.continue_run(run_id) == run_id
    assert client(tracker).get_run(run_id).info.status == "RUNNING"
    worker.log_metrics({"loss": 1.0}, step=1)
    worker.end("FINISHED")
    assert "resume_count" not in client(tracker).get_run(run_id).data.tags
    driver = Tracker(tracker.tracking_uri, tracker.experiment)
    driver.start("fresh", {"a": 1}, run_id=run_id)
    driver.end("FINISHED")
    assert client(tracker).get_run(run_id).data.tags["resume_count"] == "1"


def test_two_first_runs_on_one_fresh_sqlite_store_both_get_through(tmp_path):
    """Two processes touching a store that does not exist yet would migrate it at the same moment
    (without ``serialized`` one of the two fails, 3 times out of 3 here, "table _alembic_tmp_...
    already exists")."""
    import subprocess
    import sys

    code = ("import sys\nfrom mvae_dist.tracking import find_runs, serialized\n"
            "serialized(sys.argv[1], lambda: find_runs('e', tracking_uri=sys.argv[1]))\n")
    uri = f"sqlite:///{tmp_path / 'fresh' / 'store.db'}"
    (tmp_path / "fresh").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
