"""``mvae-dist demo`` (``make demo``): the embedded default end to end, offline, on this machine.

1. Build the embedded set (real MNIST + SYNTHETIC street numbers) in full and at 20% of each
   unimodal training set; train the digit classifiers on the full one (once; reused).
2. Train MMVAE and cI-MMVAE on the 20% set with Ray Train (2 CPU workers), each an MLflow child
   run of one parent run.
3. Evaluate both (latent accuracy, cross coherence both ways, joint coherence, log-likelihood)
   and print them side by side, with the command that opens the MLflow UI on those runs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...tables import markdown_table
from .common import OBJECTIVES, finish_study, open_study, run_arm
from .studies import DEFAULT_CONFIG, ensure_classifiers, ensure_data

#: (row label, metric key) of the printed table
DEMO_ROWS = [
    ("latent accuracy (joint z)", "latent_acc"),
    ("latent accuracy (mnist z)", "latent_acc_mnist"),
    ("latent accuracy (svhn z)", "latent_acc_svhn"),
    ("cross coherence mnist -> svhn", "coherence_cross_mnist_to_svhn"),
    ("cross coherence svhn -> mnist", "coherence_cross_svhn_to_mnist"),
    ("cross coherence (mean)", "coherence_cross"),
    ("joint coherence", "coherence_joint"),
    ("log p(x,y) (IWAE)", "log_joint"),
]


def side_by_side(rows: list[dict], labels: list[str]) -> str:
    """Markdown: one line per metric, one column per arm."""
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"

    return markdown_table(["metric", *labels], ([title, *(cell(r.get(key)) for r in rows)]
                                                for title, key in DEMO_ROWS))


def demo(root: str = "demo", *, percent: float = 20.0, dm: int = 10, overrides: list[str] | None = None,
         tracking_uri: str | None = None, ray_address: str | None = None,
         data_options: dict | None = None) -> Path:
    """Run the demo under ``root`` -> the folder with its results (see the module docstring)."""
    from ...tracking import ui_command

    if not 0 < percent <= 100:
        raise ConfigError(f"--percent must be in (0, 100], got {percent}")
    if tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        Path(root).mkdir(parents=True, exist_ok=True)
        tracking_uri = f"sqlite:///{Path(root).resolve()}/mlflow.db"  # artifacts: <root>/mlartifacts
    study = open_study("demo", DEFAULT_CONFIG, overrides or [], root=root, tracking_uri=tracking_uri,
                       ray_address=ray_address, params={"percent": percent, "dm": dm})
    failed = True
    labels = ["MMVAE", "cI-MMVAE"]
    try:
        print(f"== building the embedded data set (full, and {percent:g}% of each modality)", flush=True)
        full = ensure_data(root, dm=dm, data_options=data_options)
        part = ensure_data(root, fraction=percent / 100, dm=dm, data_options=data_options)
        clfs = ensure_classifiers(full)
        for label, arm in zip(labels, ("baseline", "cI")):
            run_arm(study, label, {**OBJECTIVES[arm], "data.url": part, "eval.classifiers": full},
                    settings={"objective": arm, "percent": percent}, classifiers=clfs)
        failed = False
    finally:
        table = side_by_side(study.rows, labels[:len(study.rows)])
        out = finish_study(study, table, {}, extra={"labels": labels}, failed=failed)
    print()
    print(f"MMVAE vs cI-MMVAE, both trained on {percent:g}% of the data "
          "(street numbers are SYNTHETIC; see docs/data.md):")
    print(table)
    print(f"results: {out}")
    print(f"MLflow: experiment {study.base.tracking.experiment!r}, parent run {study.parent_run_id}; "
          "open the UI with:")
    print(f"  {ui_command(study.tracking_uri)}")
    return out
