"""What reaches MLflow: each value once, only what applies, the studies' numbers on the parent
run (fast; pure functions and one real sqlite store)."""

from __future__ import annotations

import torch

from mvae_dist.config import RunConfig, applicable
from mvae_dist.eval.evaluation import logged_metrics
from mvae_dist.launch.experiments.common import metric_key, study_metrics


def test_evaluation_metrics_are_logged_once_without_clutter():
    flat = {"latent_acc": 0.9, "latent_acc_std": 0.0, "test_log_joint_K100": -3400.0,
            "test_log_joint_K100_std": 0.0, "log_joint": -3400.0, "log_joint_std": 0.0,
            "classifier_acc_mnist": 0.98, "classifier_acc_mnist_std": 0.0}
    one = logged_metrics(flat, 1, "test_log_joint_K100")
    assert one == {"eval/latent_acc": 0.9, "eval/log_joint": -3400.0}
    several = logged_metrics({**flat, "latent_acc_std": 0.02}, 3, "test_log_joint_K100")
    assert several == {"eval/latent_acc": 0.9, "eval/latent_acc_std": 0.02, "eval/log_joint": -3400.0,
                       "eval/log_joint_std": 0.0}


def test_params_that_do_not_apply_are_left_out():
    base = RunConfig.from_dict({"objective": {"name": "baseline"}}).to_dict()
    assert {"K", "baseline_estimator", "dreg", "looser"} <= set(applicable(base)["objective"])
    assert not {"gamma", "N", "estimator"} & set(applicable(base)["objective"])
    con = RunConfig.from_dict({"objective": {"name": "contrastive"}}).to_dict()
    assert {"gamma", "N", "estimator", "K", "looser"} <= set(applicable(con)["objective"])
    assert not {"baseline_estimator", "dreg"} & set(applicable(con)["objective"])
    assert base["objective"]["gamma"] == 2.0  # the config itself is not changed


def test_the_baseline_logs_no_contrastive_terms():
    from mvae_dist.models import build_model
    from mvae_dist.objectives import training_loss

    cfg = RunConfig.from_dict({"model": {"name": "mmvae", "modalities": ["mnist", "svhn"],
                                           "latent_dim": 4}})
    model = build_model(cfg.model)
    xs = [torch.rand(3, 1, 28, 28), torch.rand(3, 3, 32, 32)]
    _, stats = training_loss(model, xs, objective="baseline", K=1, generator=torch.Generator().manual_seed(0))
    assert set(stats) == {"loss", "log_joint"}


def test_study_rows_become_parent_metrics():
    rows = [{"arm": "baseline@20%", "objective": "baseline", "percent": 20.0, "train_seed": 0,
             "run_id": "abc", "steps": 806, "latent_acc": 0.8, "latent_acc_std": 0.0},
            {"arm": "cI gamma=1.1", "objective": "cI", "gamma": 1.1, "train_seeds": 3, "run_ids": ["a", "b"],
             "coherence_cross": 0.6, "coherence_cross_std": 0.02, "gamma_std": 0.0,
             "pmi_f1": float("nan")}]
    assert study_metrics(rows) == {"baseline 20pct/latent_acc": 0.8, "cI gamma1.1/coherence_cross": 0.6,
                                   "cI gamma1.1/coherence_cross_std": 0.02}
    assert metric_key("cI S_r + found") == "cI S_r _ found"


def test_finish_study_logs_the_metrics_on_the_parent_run(tmp_path):
    import mlflow

    from mvae_dist.launch.experiments.common import finish_study, open_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = open_study("unit", None, [], root=str(tmp_path / "out"), tracking_uri=uri, params={})
    study.runs.append({"arm": "cI@20%", "objective": "cI", "percent": 20.0, "train_seed": 0,
                       "coherence_cross": 0.66})
    finish_study(study, "| table |\n", {})
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(study.parent_run_id)
    assert run.data.metrics == {"cI 20pct/coherence_cross": 0.66} and run.info.status == "FINISHED"
