"""Training on a real local Ray cluster: end to end, worker failure and resume, --resume, NaNs."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
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


def test_train_end_to_end_checkpoints_and_mlflow(ray_cluster, tiny_data, tmp_path):
    from mvae_dist.train.checkpoint import read_config
    from mvae_dist.train.driver import fit

    cfg = _cfg(tmp_path, tiny_data)
    res = fit(cfg)
    assert res.metrics["step"] == 6 and res.metrics["nonfinite_steps"] == 0
    assert res.checkpoint and (Path(res.checkpoint) / "state.pt").exists()
    assert read_config(res.checkpoint)["objective"]["gamma"] == 2.0
    run = _client(res.tracking_uri).get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["objective.N"] == "2" and run.data.params["model.name"] == "mmvae"
    history = _client(res.tracking_uri).get_metric_history(res.run_id, "loss")
    assert [m.step for m in history] == [2, 4, 6]
    assert "eval/log_joint" in run.data.metrics and "pairs_per_s" in run.data.metrics
    # each value once: no copies of the likelihood, no zero _std twins (one seed), no classifier accuracy
    assert not [k for k in run.data.metrics if "test_log_joint" in k or k.endswith("_std")
                or "classifier_acc" in k], sorted(run.data.metrics)
    assert "objective.gamma" in run.data.params  # a contrastive run (tiny.yaml)
    arts = {a.path for a in _client(res.tracking_uri).list_artifacts(res.run_id, "images")}
    assert any(p.endswith(".png") and "cross" in p for p in arts)
    (out,) = run.outputs.model_outputs  # the run's MLflow model, with the last step's evaluation
    lm = _client(res.tracking_uri).get_logged_model(out.model_id)
    assert lm.name == "model" and lm.source_run_id == res.run_id and out.step == 6
    assert "eval/log_joint" in {m.key for m in lm.metrics}
    from mvae_dist.trained import load_trained

    trained = load_trained(run_id=res.run_id, tracking_uri=res.tracking_uri)  # the logged model
    assert trained.step == 6 and trained.source == f"runs:/{res.run_id}/model"

    # no Ray Data actor is started for a trainer without Ray Datasets (driver._trainer_class)
    from ray.util.state import list_actors

    gcs = ray_cluster.get_runtime_context().gcs_address  # not ray_current_cluster: another may run beside
    classes = {a.class_name for a in list_actors(address=gcs, limit=10_000, raise_on_missing_output=False)}
    assert "RayTrainWorker" in classes and "DatasetManager" not in classes, classes

    # the same name again without --resume is refused: nothing is overwritten
    with pytest.raises(Exception, match="already exists"):
        fit(cfg)


def test_killed_worker_resumes_from_checkpoint(ray_cluster, tiny_data, tmp_path, mlflow_server):
    from mvae_dist.train.driver import fit

    cfg = _cfg(tmp_path, tiny_data, "train.max_steps=24", "train.checkpoint_every=4",
               "train.name=killed", "train.max_failures=1", "train.eval_every=0",
               tracking_uri=mlflow_server)
    debug = tmp_path / "debug"
    killed: dict = {}

    def killer():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            try:
                info = json.loads((debug / "rank1.json").read_text())
            except (OSError, ValueError):
                time.sleep(0.2)
                continue
            if info["step"] >= 10 and info["resumed_from"] is None:
                os.kill(info["pid"], signal.SIGKILL)
                killed.update(info)
            time.sleep(0.1)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = fit(cfg, debug_dir=str(debug))
    t.join(timeout=1)
    assert killed, "the killer never saw rank 1 reach step 10"
    assert res.metrics["step"] == 24
    final = json.loads((debug / "rank0.json").read_text())
    # resumed from the newest complete checkpoint (never from zero): 4 or 8, which Ray committed,
    # or 12, which rank 0 wrote whole while rank 1 was being killed (Ray never commits that one)
    assert final["resumed_from"] in (4, 8, 12) and final["step"] == 24
    run = _client(mlflow_server).get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["resumed_from_step"] == final["resumed_from"]
    # every checkpoint Ray persisted reached the run as it was written (the controller's callback),
    # one per step: the run's last step (24, also an end of epoch) is not checkpointed twice
    with tempfile.TemporaryDirectory() as d:
        got = _client(mlflow_server).download_artifacts(run.info.run_id, "checkpoints.json", d)
        logged = json.loads(Path(got).read_text())["checkpoints"]
    steps = [e["step"] for e in logged]
    assert steps == sorted(set(steps)) and steps[-1] == 24 and all(s % 4 == 0 for s in steps), logged
    assert len(steps) >= 4 and run.data.tags["last_checkpoint"] == logged[-1]["uri"] == res.checkpoint, logged


def test_cli_resume_continues_a_stopped_run(ray_cluster, tiny_data, tmp_path, capsys):
    args = ["--config", TINY, f"data.url={tiny_data}", f"train.storage_path={tmp_path}/runs",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "train.name=resumable",
            "train.eval_every=0", "train.num_workers=1",  # resuming on 2 ranks: the killed-worker test
            "train.precision=bf16", "train.channels_last=true"]  # a channels-last checkpoint resumes
    assert main(["train", *args, "train.max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert "'step': 3" in out and "mlflow ui" in out
    assert main(["train", *args, "train.max_steps=6", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "'step': 6" in out
    run_id = out.split("MLflow run ", 1)[1].split()[0]
    tags = _client(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id).data.tags
    assert tags["resume_count"] == "1"  # one --resume; the worker groups' reopening is not counted
    params = _client(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id).data.params
    assert (params["train.precision"], params["train.channels_last"]) == ("bf16", "True")


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
