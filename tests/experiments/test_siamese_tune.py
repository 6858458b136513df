"""The Siamese network tuned on the held-out S_c (issue: relating by contrasting, fair comparison)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mvae_dist.errors import ConfigError
from mvae_dist.launch.cli import main
from mvae_dist.launch.experiments.siamese_tune import (
    choose,
    grid_points,
    label,
    parse_grid,
    parse_setting,
    siamese_tuning,
)

from .test_studies import SMALL, _client


def test_grid_points_are_every_combination_in_order():
    points = grid_points({"epochs": (10, 30), "lr": (1e-3, 3e-3)})
    assert points == [{"epochs": 10, "lr": 1e-3}, {"epochs": 10, "lr": 3e-3},
                      {"epochs": 30, "lr": 1e-3}, {"epochs": 30, "lr": 3e-3}]
    assert label(points[1]) == "epochs=10 lr=0.003"


@pytest.mark.parametrize("text, message", [
    ("epochs=10;depth=3", "unknown setting(s) depth"),
    ("epochs", "is not key=v1,v2"),
    ("lr=fast", "has a value that is not a number"),
])
def test_a_bad_grid_is_one_clear_error(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_grid(text)


def test_parse_grid_reads_numbers():
    assert parse_grid("epochs=10,30; lr=1e-3") == {"epochs": (10, 30), "lr": (1e-3,)}


def test_the_setting_is_chosen_on_s_c_alone_earlier_on_ties():
    rows = [{"arm": "a", "cal_auc": 0.8, "auc": 0.99}, {"arm": "b", "cal_auc": 0.9, "auc": 0.5},
            {"arm": "c", "cal_auc": 0.9, "auc": 0.7}]
    assert choose(rows)["arm"] == "b"  # F_m's AUC plays no part


def test_siamese_tune_end_to_end(tmp_path, capsys):
    from mvae_dist.launch.experiments.studies import ensure_data

    root = str(tmp_path / "st")
    ensure_data(root, dm=1, sr_fraction=0.5, calibration_fraction=0.3, data_options=SMALL, progress=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = siamese_tuning(grid={"epochs": (1,), "lr": (1e-3, 5e-3)}, train_seeds=2, dm=1, sr_fraction=0.5,
                         calibration_fraction=0.3, root=root, tracking_uri=uri, data_options=SMALL,
                         progress=False)
    text = capsys.readouterr().out
    assert "| setting | ROC-AUC on S_c (chooses) | ROC-AUC on F_m |" in text
    assert "chosen on S_c: epochs=1 lr=" in text
    results = json.loads((Path(out) / "results.json").read_text())
    rows, summary = results["rows"], results["summary"]
    assert [(r["lr"], r["train_seed"]) for r in rows] == [(1e-3, 0), (1e-3, 1), (5e-3, 0), (5e-3, 1)]
    assert all(0 <= r["cal_auc"] <= 1 and 0 <= r["auc"] <= 1 and r["f1"] <= r["best_f1"] for r in rows)
    best = max(summary, key=lambda r: r["cal_auc"])
    assert results["chosen"]["arm"] == best["arm"] and results["chosen"]["lr"] == best["lr"]
    client = _client(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("mvae-dist-experiments").experiment_id])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["chosen/auc"] == pytest.approx(best["auc"])


def test_the_cli_hands_its_options_to_the_study(tmp_path, monkeypatch):
    import mvae_dist.launch.experiments.siamese_tune as st

    seen = {}
    monkeypatch.setattr(st, "siamese_tuning", lambda **kw: seen.update(kw))
    assert main(["experiment", "siamese-tune", "--grid", "epochs=5,7;width=4", "--train-seeds", "2",
                 "--dm", "3", "--sr-fraction", "0.2", "--calibration-fraction", "0.25",
                 "--root", str(tmp_path)]) == 0
    assert seen["grid"] == {"epochs": (5, 7), "width": (4,)} and seen["train_seeds"] == 2
    assert (seen["dm"], seen["sr_fraction"], seen["calibration_fraction"]) == (3, 0.2, 0.25)
    assert seen["root"] == str(tmp_path)


def test_siamese_tune_refuses_a_bad_grid_in_one_line(tmp_path, capsys):
    assert main(["experiment", "siamese-tune", "--grid", "depth=2", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mvae-dist: error: siamese grid: unknown setting(s) depth"), err


def test_one_setting_for_the_studies():
    assert parse_setting("epochs=100;lr=0.003;width=8") == {"epochs": 100, "lr": 0.003, "width": 8}
    with pytest.raises(ConfigError, match="one value each, not several for lr"):
        parse_setting("epochs=100;lr=0.001,0.003")


def test_relatedness_curve_takes_the_tuned_setting(tmp_path, monkeypatch):
    import mvae_dist.launch.experiments.studies as studies

    seen = {}
    monkeypatch.setattr(studies, "relatedness_curves", lambda *a, **kw: seen.update(kw))
    assert main(["experiment", "relatedness-curve", "--siamese", "epochs=100;lr=0.003;width=8",
                 "--root", str(tmp_path)]) == 0
    assert seen["siamese"] == {"epochs": 100, "lr": 0.003, "width": 8}
