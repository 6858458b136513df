"""Sweep results: the trial table (Markdown, CSV), the best trial and the plots of the metric."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...tables import csv_table, markdown_table
from .spec import _RUN_STATUS, TrialStatus


# ----------------------------------------------------------------------------- results
@dataclass
class TrialRecord:
    """One trial: its searched values, last reported metrics and how it ended."""

    trial_id: str
    status: TrialStatus
    params: dict[str, Any]
    metrics: dict[str, float | int]
    iterations: int
    run_id: str | None = None
    error: str | None = None

    def value(self, metric: str) -> float | None:
        v = self.metrics.get(metric)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


@dataclass
class SweepResult:
    """What ``run_sweep`` returns; ``lines()`` is what the CLI prints."""

    name: str
    sweep_run: str
    metric: str
    mode: str
    keys: list[str]
    trials: list[TrialRecord]
    best: TrialRecord | None
    parent_run_id: str
    tracking_uri: str
    experiment: str
    output_dir: str
    elapsed_s: float
    files: dict[str, str] = field(default_factory=dict)

    @property
    def best_config_path(self) -> str:
        return self.files["best_config"]

    def lines(self, max_rows: int = 10) -> list[str]:
        from ...tracking import ui_command

        counts = {s: sum(t.status == s for t in self.trials) for s in _RUN_STATUS}
        out = [f"sweep {self.sweep_run}: {len(self.trials)} trials ({counts['completed']} completed, "
               f"{counts['early_stopped']} early stopped, {counts['error']} failed) in "
               f"{self.elapsed_s:.0f} s; metric {self.metric} ({self.mode})"]
        table = _markdown(_rows(self, short=True))
        out += table[: max_rows + 2]
        if len(table) > max_rows + 2:
            out.append(f"... {len(table) - max_rows - 2} more rows in {self.files['trials_md']}")
        if self.best is not None:
            shown = ", ".join(f"{k} = {_fmt(self.best.params.get(k))}" for k in self.keys)
            out.append(f"best trial {self.best.trial_id}: {self.metric} = "
                       f"{_fmt(self.best.value(self.metric))} ({shown})")
            out.append(f"best config: {self.best_config_path}")
        out.append(f"trials table and plots: {self.output_dir}")
        out.append(f"MLflow parent run {self.parent_run_id} (experiment {self.experiment}) at "
                   f"{self.tracking_uri}; open the UI with:")
        out.append(f"  {ui_command(self.tracking_uri)}")
        return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _ranked(trials: list[TrialRecord], metric: str, mode: str) -> list[TrialRecord]:
    sign = -1.0 if mode == "max" else 1.0
    return sorted(trials, key=lambda t: (t.value(metric) is None,
                                         sign * (t.value(metric) or 0.0), t.trial_id))


def _metric_columns(result: SweepResult) -> list[str]:
    names = sorted({k for t in result.trials for k in t.metrics} - {result.metric})
    return [result.metric, *names]


def _rows(result: SweepResult, short: bool = False) -> list[dict[str, Any]]:
    """Trial table rows, best first. short: the metric, epoch and step only."""
    metrics = [result.metric, "epoch", "step"] if short else _metric_columns(result)
    rows = []
    for t in _ranked(result.trials, result.metric, result.mode):
        row: dict[str, Any] = {"trial": t.trial_id, "status": t.status, "iterations": t.iterations}
        row.update({k: t.params.get(k) for k in result.keys})
        row.update({m: t.metrics.get(m) for m in metrics})
        if not short:
            row["run_id"] = t.run_id
            row["error"] = t.error
        rows.append(row)
    return rows


def _markdown(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(no trials)"]
    cols = list(rows[0])
    return markdown_table(cols, ([_fmt(r.get(c)) for c in cols] for r in rows)).splitlines()


def _csv_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    return csv_table(cols, ([r.get(c) for c in cols] for r in rows))


def _plot(result: SweepResult, key: str, log_scale: bool) -> Any:
    """uint8 [H, W, 3] image: the metric of every trial against its value of ``key``."""
    from ...plots import render

    points = [(t.params.get(key), t.value(result.metric), t.status) for t in result.trials]
    points = [p for p in points if p[1] is not None]
    numeric = all(isinstance(p[0], (int, float)) and not isinstance(p[0], bool) for p in points)
    labels: list[str] = []
    if not numeric:
        labels = sorted({str(p[0]) for p in points})
        points = [(labels.index(str(x)), y, s) for x, y, s in points]
    styles = {"completed": ("o", "tab:blue"), "early_stopped": ("x", "tab:orange"), "error": ("s", "tab:red")}

    def draw(ax: Any) -> None:
        for status, (marker, color) in styles.items():
            xs = [x for x, _, s in points if s == status]
            ys = [y for _, y, s in points if s == status]
            if xs:
                ax.scatter(xs, ys, marker=marker, color=color, label=status.replace("_", " "))
        if result.best is not None and result.best.value(result.metric) is not None:
            bx = result.best.params.get(key)
            bx = labels.index(str(bx)) if labels else bx
            ax.scatter([bx], [result.best.value(result.metric)], s=160, facecolors="none",
                       edgecolors="black", label="best")
        if labels:
            ax.set_xticks(range(len(labels)), labels)
        elif log_scale:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"{result.metric} (last report)")
        ax.set_title(f"{result.sweep_run}: {result.metric} vs {key}", fontsize=9)
        if points:
            ax.legend(fontsize=8)

    return render(draw)
