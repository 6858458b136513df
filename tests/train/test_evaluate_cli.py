"""`mvae-dist classifiers train` and `mvae-dist evaluate --checkpoint | --run` on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mvae_dist.config import load_train_config
from mvae_dist.launch.cli import main
from mvae_dist.models import build_model
from mvae_dist.train.checkpoint import Position, save_checkpoint

TINY = str(Path(__file__).parents[2] / "configs" / "embedded" / "tiny.yaml")


@pytest.fixture(scope="module")
def classified_data(tiny_data, mlflow_sqlite_uri):
    """The tiny data set with a classifier store beside it (1 epoch each: plumbing, not accuracy)."""
    assert main(["classifiers", "train", "--data", tiny_data, "--epochs", "1", "--quiet",
                 "--tracking-uri", mlflow_sqlite_uri]) == 0
    return tiny_data


def _checkpoint(tmp_path, data_url, name="evaluated"):
    cfg = load_train_config(TINY, [f"data.url={data_url}", f"train.name={name}",
                                   f"train.storage_path={tmp_path}/runs"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = torch.optim.Adam(model.parameters())
    d = tmp_path / "runs" / name / "checkpoint_000000"
    save_checkpoint(d, model=model, optimizer=opt, scheduler=None, position=Position(step=7),
                    config=cfg.to_dict())
    return cfg, str(d)


def _client(uri):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


FAST = ["--seeds", "2", "--K", "3", "--n-ll", "8", "--n-test", "40", "--n-train", "100", "--quiet"]


def test_classifiers_list(classified_data, capsys):
    assert main(["classifiers", "list", "--data", classified_data]) == 0
    out = capsys.readouterr().out
    assert out.startswith("v1 ") and "mnist" in out and "test accuracy" in out


def test_evaluate_checkpoint_prints_and_logs_a_new_run(classified_data, tmp_path, capsys, mlflow_sqlite_uri):
    _, ckpt = _checkpoint(tmp_path, classified_data)
    uri = mlflow_sqlite_uri
    assert main(["evaluate", "--checkpoint", ckpt, "--tracking-uri", uri, *FAST]) == 0
    out = capsys.readouterr().out
    assert "| metric |" in out and "coherence" in out and "mlflow ui" in out
    run_id = out.split("logged to MLflow run ")[1].split(";")[0]
    run = _client(uri).get_run(run_id)
    assert run.info.run_name == "evaluate-evaluated" and run.data.tags["checkpoint"] == ckpt
    assert any(k.startswith("eval/") and "coherence" in k for k in run.data.metrics)
    arts = [a.path for a in _client(uri).list_artifacts(run_id, "eval")]
    assert any(p.endswith(".md") for p in arts) and any(p.endswith(".json") for p in arts)
    js = [p for p in arts if p.endswith(".json")][0]
    local = _client(uri).download_artifacts(run_id, js, str(tmp_path))
    assert json.loads(Path(local).read_text())  # a JSON table, not empty
    images = [a.path for a in _client(uri).list_artifacts(run_id, "images")]
    assert any("cross" in p for p in images) and any("joint" in p for p in images)


def test_evaluate_run_logs_into_that_run_and_keeps_its_status(classified_data, tmp_path, capsys,
                                                               mlflow_sqlite_uri):
    from mvae_dist.tracking import Tracker

    cfg, _ = _checkpoint(tmp_path, classified_data, name="from-run")
    uri = mlflow_sqlite_uri
    model = build_model(cfg.model)
    t = Tracker(uri, "mvae-dist-tests")
    run_id = t.start("from-run", params=cfg.to_dict())
    t.log_model(model, cfg.to_dict())
    t.end("FINISHED")
    assert main(["evaluate", "--run", run_id, "--tracking-uri", uri, *FAST[2:], "--seeds", "1"]) == 0
    run = _client(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert any(k.startswith("eval/") for k in run.data.metrics)


def test_evaluate_without_classifiers_names_the_command(tiny_data, tmp_path, capsys):
    _, ckpt = _checkpoint(tmp_path, tiny_data)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["evaluate", "--checkpoint", ckpt, "--tracking-uri", uri, *FAST,
                 "--classifiers", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mvae-dist classifiers train --data" in err[0]


def test_evaluate_bad_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--tracking-uri",
                 f"sqlite:///{tmp_path}/m.db"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a checkpoint directory" in err[0]


def test_evaluate_m3_embedded_text_logs_coherence_and_generated_captions(tmp_path, capsys, mlflow_sqlite_uri,
                                                                         embedded_text_data):
    # M = 3 end to end without Ray: the embedded-text set (a synthetic caption per MNIST digit),
    # its three classifiers (the caption's is a token classifier), the shipped M = 3 config's
    # model, `mvae-dist evaluate --checkpoint`: coherence to and from the captions, and the
    # generated captions as a text artifact beside the image grids.
    import shutil

    data = str(tmp_path / "embedded-text")
    shutil.copytree(embedded_text_data, data)  # classifiers and the CCA scorer are written beside it
    uri = mlflow_sqlite_uri
    assert main(["classifiers", "train", "--data", data, "--epochs", "1", "--quiet",
                 "--tracking-uri", uri]) == 0
    cfg = load_train_config(str(Path(__file__).parents[2] / "configs" / "embedded-text" / "mmvae-ci.yaml"),
                            [f"data.url={data}", "train.name=m3", f"train.storage_path={tmp_path}/runs"])
    assert cfg.model.modalities[2] == "text:23"
    vocab = json.loads(Path(data, "manifest.json").read_text())["modalities"][2]["vocab"]
    assert len(vocab) == 23  # the config's text:V is the data set's vocabulary
    torch.manual_seed(0)
    model = build_model(cfg.model)
    d = tmp_path / "runs" / "m3" / "checkpoint_000000"
    save_checkpoint(d, model=model, optimizer=torch.optim.Adam(model.parameters()), scheduler=None,
                    position=Position(step=3), config=cfg.to_dict())
    capsys.readouterr()
    assert main(["cca", "fit", "--data", data, "--k", "10", "--n-fit", "2000"]) == 0
    assert "CCA scorer v1 (mnist x caption, k 10" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(d), "--tracking-uri", uri, *FAST[2:], "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    run_id = out.split("logged to MLflow run ")[1].split(";")[0]
    metrics = _client(uri).get_run(run_id).data.metrics
    for k in ("eval/coherence_cross_mnist_to_text", "eval/coherence_cross_text_to_svhn",
              "eval/coherence_joint"):
        assert k in metrics and 0.0 <= metrics[k] <= 1.0
    for k in ("eval/cca_ground_truth", "eval/cca_cross_mnist_to_text", "eval/cca_cross_text_to_mnist",
              "eval/cca_joint"):
        assert k in metrics and -1.0 <= metrics[k] <= 1.0
    assert metrics["eval/cca_ground_truth"] > 0.3  # real digits and their own captions correlate
    arts = [a.path for a in _client(uri).list_artifacts(run_id, "text")]
    assert len(arts) == 1 and arts[0].startswith("text/captions_")
    text = Path(_client(uri).download_artifacts(run_id, arts[0], str(tmp_path))).read_text()
    assert text.startswith("## text") and "### generated from mnist (mnist -> z -> text)" in text
    import re

    assert re.search(r"^\| \d \| a [a-z ]+ \| ", text, re.M)  # an input's caption: "| 7 | a thin seven ..."
