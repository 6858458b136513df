"""The studies' table cells: settings print as written, measurements with fixed decimals and spread."""

from __future__ import annotations

import math

from mvae_dist.launch.experiments.common import markdown_table


def test_table_cells():
    rows = [{"objective": "cI", "percent": 10.0, "latent_acc": 0.70912, "latent_acc_std": 0.0123,
             "log_joint": -3891.632, "gamma": 1.5},
            {"objective": "baseline", "percent": 100.0, "latent_acc": math.nan, "log_joint": -3460.1,
             "gamma": None}]
    table = markdown_table(rows, ["objective", "percent", "gamma", "latent_acc", "log_joint"],
                           ["objective", "data %", "gamma", "latent acc", "log p"])
    lines = table.strip().splitlines()
    assert lines[0] == "| objective | data % | gamma | latent acc | log p |"
    assert lines[2] == "| cI | 10 | 1.5 | 0.709 ± 0.012 | -3891.6 |"
    assert lines[3] == "| baseline | 100 | n/a | n/a | -3460.1 |"


def test_aggregate_seeds_mean_and_sample_std_over_training_seeds():
    from mvae_dist.launch.experiments.common import aggregate_seeds

    runs = [
        {"arm": "cI@20%", "objective": "cI", "percent": 20.0, "train_seed": s, "run_id": f"r{s}",
         "latent_acc": v, "latent_acc_std": 0.5, "steps": 806}
        for s, v in enumerate([0.80, 0.86, 0.89])
    ] + [{"arm": "baseline@20%", "objective": "baseline", "percent": 20.0, "train_seed": 0,
          "run_id": "b0", "latent_acc": 0.65, "latent_acc_std": 0.01}]
    ci, base = aggregate_seeds(runs)
    assert ci["arm"] == "cI@20%" and ci["objective"] == "cI" and ci["run_ids"] == ["r0", "r1", "r2"]
    assert ci["train_seeds"] == 3 and "train_seed" not in ci
    assert math.isclose(ci["latent_acc"], 0.85)
    # sample std (n - 1) over the three training seeds, not the evaluation seeds' 0.5
    assert math.isclose(ci["latent_acc_std"], math.sqrt((0.05**2 + 0.01**2 + 0.04**2) / 2))
    assert ci["percent"] == 20.0 and ci["percent_std"] == 0.0 and ci["steps"] == 806
    assert base == runs[-1]  # one seed: the row as it was, with its evaluation-seed spread
    table = markdown_table([ci], ["objective", "percent", "latent_acc"])
    assert "| cI | 20 | 0.850 ± 0.046 |" in table
