"""Training on a real local Ray cluster: end to end, worker failure and resume, --resume, NaNs."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from mvae_dist.config import load_train_config
from mvae_dist.launch.cli import main

pytestmark = pytest.mark.slow
TINY = str(Path(__file__).parents[2] / "configs" / "embedded" / "tiny.yaml")


def _cfg(tmp_path, tiny_data, *extra, tracking_uri=None):
    uri = tracking_uri or f"sqlite:///{tmp_path}/mlflow.db"
    return load_train_config(TINY, [f"data.url={tiny_data}", f"train.storage_path={tmp_path}/runs",
                                    f"tracking.tracking_uri={uri}", *extra])


def _client(uri):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def test_train_end_to_end_checkpoints_and_mlflow_then_resume(ray_cluster, tiny_data, tmp_path, mlflow_server,
                                                             capsys):
    """Two workers logging to a real MLflow server; bf16 with channels-last weights (their
    checkpoint resumes); every checkpoint reaches the run as Ray persists it; the same name is
    refused without --resume and continued with it from the CLI in the same run.

    (A worker killed mid-run that resumes from the newest complete checkpoint: the lost-node case
    of tests/train/test_multinode.py, on two nodes.)"""
    from mvae_dist.train.checkpoint import read_config
    from mvae_dist.train.driver import fit

    opts = ["train.precision=bf16", "train.channels_last=true", "train.checkpoint_every=2"]
    cfg = _cfg(tmp_path, tiny_data, *opts, tracking_uri=mlflow_server)
    res = fit(cfg)
    assert res.metrics["step"] == 6 and res.metrics["nonfinite_steps"] == 0
    assert res.checkpoint and (Path(res.checkpoint) / "state.pt").exists()
    assert read_config(res.checkpoint)["objective"]["gamma"] == 2.0
    client = _client(mlflow_server)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["objective.N"] == "2" and run.data.params["model.name"] == "mmvae"
    history = client.get_metric_history(res.run_id, "loss")
    assert [m.step for m in history] == [2, 4, 6]
    assert "eval/log_joint" in run.data.metrics and "pairs_per_s" in run.data.metrics
    # each value once: no copies of the likelihood, no zero _std twins (one seed), no classifier accuracy
    assert not [k for k in run.data.metrics if "test_log_joint" in k or k.endswith("_std")
                or "classifier_acc" in k], sorted(run.data.metrics)
    assert "objective.gamma" in run.data.params  # a contrastive run (tiny.yaml)
    arts = {a.path for a in client.list_artifacts(res.run_id, "images")}
    assert any(p.endswith(".png") and "cross" in p for p in arts)
    # every checkpoint Ray persisted reached the run as it was written (the controller's callback),
    # one per step: the run's last step (6, also an end of epoch) is not checkpointed twice
    with tempfile.TemporaryDirectory() as d:
        logged = json.loads(Path(client.download_artifacts(res.run_id, "checkpoints.json", d)).read_text())
    steps = [e["step"] for e in logged["checkpoints"]]
    assert steps == [2, 4, 6], logged
    assert run.data.tags["last_checkpoint"] == logged["checkpoints"][-1]["uri"] == res.checkpoint, logged
    (out,) = run.outputs.model_outputs  # the run's MLflow model, with the last step's evaluation
    lm = client.get_logged_model(out.model_id)
    assert lm.name == "model" and lm.source_run_id == res.run_id and out.step == 6
    assert "eval/log_joint" in {m.key for m in lm.metrics}
    from mvae_dist.trained import load_trained

    trained = load_trained(run_id=res.run_id, tracking_uri=mlflow_server)  # the logged model
    assert trained.step == 6 and trained.source == f"runs:/{res.run_id}/model"

    # no Ray Data actor is started for a trainer without Ray Datasets (driver._trainer_class)
    from ray.util.state import list_actors

    gcs = ray_cluster.get_runtime_context().gcs_address  # not ray_current_cluster: another may run beside
    classes = {a.class_name for a in list_actors(address=gcs, limit=10_000, raise_on_missing_output=False)}
    assert "RayTrainWorker" in classes and "DatasetManager" not in classes, classes

    # the same name again without --resume is refused: nothing is overwritten
    with pytest.raises(Exception, match="already exists"):
        fit(cfg)

    # continued from the CLI: the same run, from step 6, one resume counted
    args = ["--config", TINY, f"data.url={tiny_data}", f"train.storage_path={tmp_path}/runs",
            f"tracking.tracking_uri={mlflow_server}", *opts]
    capsys.readouterr()
    assert main(["train", *args, "train.max_steps=8", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "'step': 8" in out, out
    assert f"MLflow run {res.run_id}" in out, out
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["resumed_from_step"] == 6
    assert run.data.tags["resume_count"] == "1"  # one --resume; the worker groups' reopening is not counted
    assert (run.data.params["train.precision"], run.data.params["train.channels_last"]) == ("bf16", "True")


def test_nonfinite_losses_stop_the_run_with_a_clear_error(ray_cluster, tiny_data, tmp_path, capsys):
    args = ["--config", TINY, f"data.url={tiny_data}", f"train.storage_path={tmp_path}/runs",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "train.name=nan",
            "optim.lr=1e12", "train.max_nonfinite=1", "train.max_steps=20", "train.eval_every=0",
            "train.checkpoint_every=0"]
    assert main(["train", *args]) == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mvae-dist: error:")]
    assert len(errors) == 1 and "non-finite losses (train.max_nonfinite = 1)" in errors[0], errors
    # no checkpoint of the diverged state is written: with no periodic ones, none exists at all
    assert "last good checkpoint: none" in errors[0], errors
    assert not list((tmp_path / "runs" / "nan").glob("checkpoint_*"))


def test_bench_train_reports_throughput(ray_cluster, tiny_data, capsys):
    assert main(["bench", "train", "--data", tiny_data, "--workers", "2", "--steps", "4",
                 "--config", TINY, "--threads", "1"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["bench"] == "train" and rec["workers"] == 2 and rec["batch_size_per_worker"] == 16
    assert rec["pairs_per_s"] > 0 and rec["s_per_step"] > 0
