"""mvae_dist/experiments/curve.py: ``mvae-dist bench learn`` trains in-process and evaluates."""

from __future__ import annotations

import json

import pytest

from mvae_dist.config import RunConfig
from mvae_dist.eval.classifiers import build_classifier
from mvae_dist.launch.cli import main
from mvae_dist.launch.experiments.curve import learning_curve


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    from mvae_dist.data import prepare

    out = str(tmp_path_factory.mktemp("curve") / "ds")
    prepare("embedded", out, dm=1, street_per_class=(10, 10), shard_size=64, progress=False)
    return out


def _cfg(url: str) -> RunConfig:
    return RunConfig.from_dict({
        "model": {"posterior_scale": "softmax", "learn_prior": True},
        "objective": {"name": "contrastive", "K": 1, "N": 2, "looser": True},
        "data": {"url": url, "batch_size": 16, "shuffle_buffer": 10},
        "optim": {"amsgrad": True},
        "train": {"num_workers": 2},
    })


def test_rows_at_start_every_eval_and_end(tiny_data):
    clfs = {"mnist": build_classifier("conv", (1, 28, 28)),
            "svhn": build_classifier("conv", (3, 32, 32))}
    seen = []
    rows = learning_curve(_cfg(tiny_data), steps=5, eval_every=2, classifiers=clfs, n_test=40,
                          n_train_latent=40, on_row=seen.append)
    assert [r["step"] for r in rows] == [0, 2, 4, 5] and seen == rows
    assert rows[0]["loss"] is None and all(r["loss"] > 0 for r in rows[1:])
    assert rows[-1]["train_s"] >= rows[1]["train_s"] > 0
    for key in ("latent_acc", "latent_acc_mnist", "latent_acc_svhn", "coherence_joint",
                "coherence_cross_mnist_to_svhn", "coherence_cross_svhn_to_mnist"):
        assert all(0.0 <= r[key] <= 1.0 for r in rows), key


def test_cli_prints_json_lines_and_needs_classifiers(tiny_data, tmp_path, capsys):
    from mvae_dist.eval.classifiers import train_classifiers

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  url: {tiny_data}\n  batch_size: 8\n  shuffle_buffer: 10\n"
                   "objective:\n  K: 1\n  N: 2\n")
    assert main(["bench", "learn", "--config", str(cfg), "--steps", "1", "--eval-every", "1"]) == 1
    assert "classifiers" in capsys.readouterr().err
    train_classifiers(tiny_data, epochs=1, progress=False)
    # the accelerator options as a GPU run would set them (bf16 autocast, channels-last convolutions)
    assert main(["bench", "learn", "--config", str(cfg), "--steps", "2", "--eval-every", "1",
                 "--n-test", "20", "--device", "cpu", "train.num_workers=1", "train.precision=bf16",
                 "train.channels_last=true"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["bench"] == "learn" for r in rows)


def test_until_stops_at_the_first_evaluation_meeting_the_targets(tiny_data):
    from mvae_dist.launch.experiments.curve import targets_met

    clfs = {"mnist": build_classifier("conv", (1, 28, 28)),
            "svhn": build_classifier("conv", (3, 32, 32))}
    # latent accuracy is in [0, 1]: >= 0 is met at the first evaluation, > 1 never
    rows = learning_curve(_cfg(tiny_data), steps=6, eval_every=2, classifiers=clfs, n_test=40,
                          n_train_latent=40, until={"latent_acc": 0.0})
    assert [r["step"] for r in rows] == [0] and rows[0]["targets_met"] is True
    rows = learning_curve(_cfg(tiny_data), steps=4, eval_every=2, classifiers=clfs, n_test=40,
                          n_train_latent=40, until={"latent_acc": 1.01})
    assert [r["step"] for r in rows] == [0, 2, 4] and not any(r["targets_met"] for r in rows)
    assert not targets_met({"latent_acc": 0.9}, {"latent_acc": 0.5, "coherence_joint": 0.1})


def test_relatedness_of_the_pmi_at_every_evaluation(tmp_path):
    """With the pools (and a held-out S_c) each row carries the PMI's held-out relatedness; a data
    set without the pools is refused in one line."""
    from mvae_dist.data import prepare
    from mvae_dist.errors import ConfigError

    url = str(tmp_path / "pools")
    prepare("embedded", url, dm=1, street_per_class=(10, 10), shard_size=64, progress=False,
            sr_fraction=0.5, calibration_fraction=0.4)
    clfs = {"mnist": build_classifier("conv", (1, 28, 28)),
            "svhn": build_classifier("conv", (3, 32, 32))}
    d = _cfg(url).to_dict()
    d["data"]["train_split"] = "sr"  # F_m held out (30 pairs here: batches of 8)
    d["data"]["batch_size"], d["train"]["num_workers"] = 8, 1
    rows = learning_curve(RunConfig.from_dict(d), steps=2, eval_every=2, classifiers=clfs, n_test=20,
                          n_train_latent=20, relatedness=30, pmi_K=2)
    assert [r["step"] for r in rows] == [0, 2]
    for r in rows:
        assert 0.0 <= r["pmi_auc"] <= 1.0 and 0.0 <= r["pmi_ap"] <= 1.0
        assert r["pmi_f1"] <= r["pmi_best_f1"] and r["pmi_sc_f1"] <= r["pmi_best_f1"]
    with pytest.raises(ConfigError, match="needs the label-propagation pools"):
        learning_curve(_cfg(_plain(tmp_path)), steps=1, eval_every=1, classifiers=clfs, n_test=20,
                       n_train_latent=20, relatedness=10)


def _plain(tmp_path) -> str:
    from mvae_dist.data import prepare

    url = str(tmp_path / "plain")
    prepare("embedded", url, dm=1, street_per_class=(10, 10), shard_size=64, progress=False)
    return url
