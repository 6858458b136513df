"""The demo and the label-propagation study end to end on small builds (real Ray Train, sqlite MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mvae_dist.data.sources import street
from mvae_dist.launch.cli import main

#: a small embedded build: real MNIST, 50 / 10 synthetic street images per digit, 1 pair per instance
SMALL = {"street_per_class": (50, 10), "shard_size": 25}
#: a few steps and small evaluations: plumbing, not quality. Each arm trains in the test's process
#: (train.num_workers=0, Ray Train's local mode): the studies' plumbing is tested here, Ray Train's
#: workers in tests/train, and a worker group costs ~20 s of process starts per arm on 2 cores
QUICK = ["train.max_steps=2", "train.epochs=1", "eval.n_test=50", "eval.n_latent_train=100", "eval.ll_n=8",
         "eval.ll_K=3", "data.batch_size=16", "objective.K=2", "objective.N=2", "train.log_every=1",
         "train.num_workers=0"]


def _classifiers_for(url: str) -> None:
    """One-epoch classifiers stored with the build, so the studies do not train 10-epoch ones."""
    from mvae_dist.eval.classifiers import train_classifiers

    train_classifiers(url, epochs=1)


def _client(uri):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


@pytest.mark.slow
def test_demo_trains_both_and_prints_the_table(tmp_path, capsys):
    from mvae_dist.launch.experiments import demo
    from mvae_dist.launch.experiments.studies import ensure_data

    root = str(tmp_path / "demo")
    _classifiers_for(ensure_data(root, dm=1, data_options=SMALL, progress=False))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = demo(root, dm=1, overrides=QUICK, tracking_uri=uri, data_options=SMALL)
    text = capsys.readouterr().out
    assert "| metric | MMVAE | cI-MMVAE |" in text and "cross coherence mnist -> svhn" in text
    assert "| latent accuracy (svhn z) |" in text and "| latent accuracy (mnist z) |" in text
    assert "mlflow ui --backend-store-uri" in text
    results = json.loads((out / "results.json").read_text())
    assert not (out / "plots").exists()  # the demo draws no plots: no empty folder
    assert [r["arm"] for r in results["rows"]] == ["MMVAE", "cI-MMVAE"]
    assert all(0.0 <= r["coherence_cross"] <= 1.0 and r["log_joint"] < 0 for r in results["rows"])
    parent = results["rows"][0]["run_id"]
    client = _client(uri)
    parent_id = client.get_run(parent).data.tags["mlflow.parentRunId"]
    assert client.get_run(parent_id).info.status == "FINISHED"
    kids = [client.get_run(r["run_id"]) for r in results["rows"]]
    assert {k.data.tags["arm"] for k in kids} == {"MMVAE", "cI-MMVAE"}
    assert all(k.info.status == "FINISHED" and "eval/coherence_cross" in k.data.metrics for k in kids)
    assert kids[0].data.params["objective.name"] == "baseline"
    assert kids[1].data.params["objective.name"] == "contrastive"


@pytest.mark.slow
def test_label_propagation_study_on_three_modalities(ray_cluster, tmp_path, capsys, monkeypatch):
    """Section 4.5 end to end on M = 3 (embedded-text: MNIST, street numbers, SYNTHETIC captions):
    the Siamese baseline with a token net, cI-MMVAE on S_r, PMI of triples on Ray workers, the
    retrained model on S_r + found; every run scored by the source set's classifiers and CCA
    scorer; thresholds chosen on a held-out S_c, S_m's reported beside. (The M = 2 path and the
    paper's S_m protocol: the gamma study below and tests/propagate.)"""
    from mvae_dist.launch.experiments import label_propagation
    from mvae_dist.launch.experiments.studies import ensure_data

    root = str(tmp_path / "lp")
    opts = SMALL
    url = ensure_data(root, dataset="embedded-text", dm=1, sr_fraction=0.5, data_options=opts, progress=False,
                      calibration_fraction=0.3)
    name = f"embedded-text-{street.RENDERER}-dm1-f1-sr0.5-c0.3"
    assert url.endswith(name)
    _classifiers_for(url)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    from mvae_dist.launch.experiments import studies

    trained_with, real = [], studies.siamese_baseline
    monkeypatch.setattr(studies, "siamese_baseline",
                        lambda *a, **kw: trained_with.append(kw) or real(*a, **kw))
    out = label_propagation(None, QUICK, sr_fraction=0.5, arms=["cI"], dm=1, root=root, K=2,
                            tracking_uri=uri, data_options=opts, dataset="embedded-text",
                            calibration_fraction=0.3, siamese={"epochs": 3, "lr": 0.003})
    assert [(kw["epochs"], kw["lr"]) for kw in trained_with] == [(3, 0.003)]  # the setting reaches it
    text = capsys.readouterr().out
    assert "Siamese" in text and "cI-MMVAE PMI" in text and "fitting the CCA scorer" in text
    assert "| CCA mnist->text | CCA text->mnist | CCA joint |" in text, text
    results = json.loads((out / "results.json").read_text())
    assert [r["arm"] for r in results["rows"]] == ["MMVAE on F_r", "cI on S_r", "cI on S_r + found"]
    assert all(-1.0 <= r["cca_joint"] <= 1.0 and 0.0 <= r["coherence_cross"] <= 1.0 for r in results["rows"])
    preds = {r["predictor"]: r for r in results["relatedness"]}
    assert set(preds) == {"Siamese", "cI-MMVAE PMI"}
    assert all(0.0 <= p["f1"] <= p["best_f1"] <= 1.0 and 0.0 <= p["auc"] <= 1.0 for p in preds.values())
    assert "| F1 (threshold on S_c (held out)) | F1 (threshold on S_m, the paper's) | ROC-AUC | average " \
        "precision | F1 at F_m's best threshold (bound) | ROC-AUC on S_c (held out) |" in text, text
    for p in preds.values():  # the paper's threshold (on S_m), reported beside the held-out one
        assert 0.0 <= p["f1_sm"] <= p["best_f1"] and p["threshold_sm"] != p["threshold"]
    found = list(Path(root).glob("propagated/cI-*/manifest.json"))
    assert len(found) == 1
    manifest = json.loads(found[0].read_text())
    source = json.loads((Path(root) / "data" / name / "manifest.json").read_text())
    assert manifest["modalities"] == source["modalities"]  # the caption's vocabulary travels along
    n_sr = source["splits"]["sr"]["count"]
    assert manifest["splits"]["train"]["count"] == n_sr + preds["cI-MMVAE PMI"]["n_pred_related"]
    client = _client(uri)
    retrained = client.get_run(results["rows"][2]["run_id"])
    assert json.loads(retrained.data.params["model.modalities"]) == ["mnist", "svhn", "text:23"]
    assert retrained.data.params["eval.classifiers"] == url and "eval/cca_joint" in retrained.data.metrics
    study_run = client.get_run(retrained.data.tags["mlflow.parentRunId"]).data  # the study's run
    assert json.loads(study_run.params["siamese"]) == {"epochs": 3, "lr": 0.003}
    parent = study_run.metrics
    for name, p in preds.items():
        assert parent[f"relatedness/{name}/auc"] == pytest.approx(p["auc"])
        assert parent[f"relatedness/{name}/best_f1"] == pytest.approx(p["best_f1"])


@pytest.mark.parametrize("args, message", [
    (["experiment", "gamma", "--gammas", "2,1.0"], "gamma must be > 1"),
    (["experiment", "gamma", "--fraction", "0"], "data fractions must be in (0, 1]"),
    (["experiment", "data-efficiency", "--fractions", "0.2,1.5"], "data fractions must be in (0, 1]"),
    (["experiment", "data-efficiency", "--fractions", "a"], "--fractions must be a comma list"),
    (["experiment", "label-propagation", "--sr-fraction", "1"], "--sr-fraction must be in (0, 1)"),
    (["experiment", "label-propagation", "--siamese", "epochs=10,30"],
     "siamese setting: one value each, not several for epochs"),
    (["experiment", "relatedness-curve", "--calibration-fraction", "1"],
     "--calibration-fraction must be in (0, 1)"),
    (["demo", "--percent", "0"], "--percent must be in (0, 100]"),
])
def test_bad_study_arguments_are_one_line_errors(args, message, tmp_path, capsys):
    assert main([*args, "--root", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("study, value", [("label-propagation", "0"), ("gamma", "-3")])
def test_pmi_k_must_be_positive(study, value, capsys):
    """argparse's own error (usage + one line, exit 2), naming the flag, before anything runs."""
    assert main(["experiment", study, "--pmi-k", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "argument --pmi-k: must be >= 1" in err[-1], err


@pytest.mark.slow
def test_gamma_study_on_a_fraction(tmp_path, capsys):
    """Baseline + cI on half of each modality, trained on S_r only (F_m held out): PMI F1 and
    ROC-AUC per arm, at S_m's threshold and at a held-out S_c's, plots against gamma with the
    baseline as reference, coherences scored by the whole training set's classifiers. (One gamma:
    a second cI arm runs the same code again.)"""
    from mvae_dist.launch.experiments import gamma_ablation
    from mvae_dist.launch.experiments.studies import ensure_data

    root = str(tmp_path / "g")
    full = ensure_data(root, dm=1, data_options=SMALL, progress=False)
    _classifiers_for(full)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = gamma_ablation(None, QUICK, gammas=(4.0,), dm=1, sr_fraction=0.5, fraction=0.5, root=root,
                         tracking_uri=uri, relatedness_pairs=40, data_options=SMALL, pmi_K=3,
                         calibration_fraction=0.5, train_on="sr")
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [(r["objective"], r["gamma"]) for r in rows] == [("baseline", None), ("cI", 4.0)]
    assert all(0.0 <= r["pmi_f1"] <= 1.0 and 0.0 <= r["coherence_cross"] <= 1.0 for r in rows)
    # ranking apart from calibration: AUC in [0, 1], and the best cut on F_m bounds the calibrated one
    assert all(0.0 <= r["pmi_auc"] <= 1.0 and r["pmi_f1"] <= r["pmi_best_f1"] <= 1.0 for r in rows)
    assert all(0.0 <= r["pmi_sc_f1"] <= r["pmi_best_f1"] for r in rows)
    assert {p.name for p in (out / "plots").iterdir()} >= {"latent_acc_vs_gamma.png", "pmi_f1_vs_gamma.png",
                                                          "pmi_auc_vs_gamma.png"}
    client = _client(uri)
    for r in rows:
        run = client.get_run(r["run_id"])
        assert run.data.params["eval.classifiers"] == full
        assert run.data.params["data.url"].endswith(f"embedded-{street.RENDERER}-dm1-f0.5-sr0.5-c0.5")
        assert run.data.params["data.train_split"] == "sr"
        assert {"eval/pmi_f1", "eval/pmi_auc", "eval/pmi_best_f1"} <= set(run.data.metrics)
    printed = capsys.readouterr().out
    assert "| objective | gamma |" in printed and "| PMI precision | PMI recall | PMI F1 | PMI ROC-AUC |" \
        in printed and "| PMI F1, threshold on held-out S_c |" in printed


def test_relatedness_curves_in_one_process(tmp_path, capsys, monkeypatch):
    """Held-out relatedness against steps: a curve row per evaluation per arm with the PMI's AUC
    and F1 at S_c's and S_m's thresholds, the Siamese network as reference, plots and MLflow."""
    import mvae_dist.launch.experiments.studies as studies
    from mvae_dist.launch.experiments.studies import ensure_data, relatedness_curves

    trained_with = []  # the settings the reference Siamese network is really trained with
    real_baseline = studies.siamese_baseline

    def spy(url, **kw):
        trained_with.append({k: kw[k] for k in ("epochs", "lr") if k in kw})
        return real_baseline(url, **kw)

    monkeypatch.setattr(studies, "siamese_baseline", spy)

    root = str(tmp_path / "rc")
    url = ensure_data(root, dm=1, sr_fraction=0.5, calibration_fraction=0.3, data_options=SMALL,
                      progress=False)
    _classifiers_for(url)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = relatedness_curves(None, QUICK, arms=["baseline", "cI"], steps=2, eval_every=1, pairs=30, pmi_K=2,
                             dm=1, sr_fraction=0.5, calibration_fraction=0.3, root=root, tracking_uri=uri,
                             siamese_epochs=1, data_options=SMALL, progress=False, siamese={"lr": 0.005})
    results = json.loads((out / "results.json").read_text())
    curves = results["curves"]
    assert [(r["arm"], r["step"]) for r in curves] == [(a, s) for a in ("baseline", "cI") for s in (0, 1, 2)]
    for r in curves:
        assert 0.0 <= r["pmi_auc"] <= 1.0 and max(r["pmi_f1"], r["pmi_sc_f1"]) <= r["pmi_best_f1"]
    (sia,) = results["siamese"]
    assert 0.0 <= sia["auc"] <= 1.0 and 0.0 <= sia["f1"] <= sia["best_f1"] and "f1_sm" in sia
    assert {p.name for p in (out / "plots").iterdir()} == {f"{k}_vs_step.png" for k in
                                                          ("pmi_auc", "pmi_sc_f1", "pmi_f1", "pmi_best_f1")}
    client = _client(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("mvae-dist-experiments").experiment_id])
    history = client.get_metric_history(parent.info.run_id, "cI seed0/pmi_auc")
    assert [m.step for m in history] == [0, 1, 2] and parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["siamese"]) == {"epochs": 1, "lr": 0.005}  # the setting it trained
    assert trained_with == [{"epochs": 1, "lr": 0.005}]
    assert parent.data.metrics["Siamese/auc"] == pytest.approx(sia["auc"])
    text = capsys.readouterr().out
    assert "| predictor | step | ROC-AUC on F_m | F1, threshold on S_c |" in text
    assert "| cI (step chosen on S_c) |" in text and "| baseline (last step) | 2 |" in text
    for pick in results["picks"]:  # model choice on S_c alone: the step whose PMI ranks S_c best
        arm = pick["arm"].split(" (")[0]
        rows = [r for r in curves if r["arm"] == arm]
        best = max(r["pmi_sc_cal_auc"] for r in rows)
        chosen = next(r for r in rows if r["step"] == pick["step"])
        assert pick["auc"] == chosen["pmi_auc"]
        if "chosen" in pick["arm"]:
            assert chosen["pmi_sc_cal_auc"] == best
