"""The studies' table cells: settings print as written, measurements with fixed decimals and spread."""

from __future__ import annotations

import math

from mvae_dist.experiments.common import markdown_table


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
