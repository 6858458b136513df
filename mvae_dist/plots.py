"""Plots as images: the one matplotlib canvas of the studies, the demo and the sweeps.

``render(draw)`` gives ``draw`` a fresh Axes on an off-screen Agg canvas (no display, no global
pyplot state, safe in Ray workers and threads) and returns the figure as a uint8 RGB array,
ready for ``Tracker.log_image`` or ``PIL.Image.fromarray(...).save``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def render(draw: Callable[[Any], None], *, size: tuple[float, float] = (5.5, 4.0),
           dpi: int = 100) -> np.ndarray:
    """uint8 [H, W, 3] (H = size[1] * dpi, W = size[0] * dpi): the figure ``draw(ax)`` draws on
    one Axes, with a light grid, laid out tightly."""
    return render_row([draw], size=size, dpi=dpi)


def render_row(draws: Sequence[Callable[[Any], None]], *, size: tuple[float, float],
               dpi: int = 100) -> np.ndarray:
    """uint8 [H, W, 3] of ``size`` inches: one Axes per draw, side by side, each drawn by its
    ``draw(ax)`` and given a light grid, laid out tightly."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    for i, draw in enumerate(draws):
        ax = fig.add_subplot(1, len(draws), i + 1)
        draw(ax)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def score_distributions(panels: Sequence[tuple[str, Any, Any]], *, xlabel: str = "PMI",
                        dpi: int = 100) -> np.ndarray:
    """uint8 [H, W, 3]: one panel per (title, scores float [P], related bool [P]), the histograms
    of the related and the unrelated pairs' scores on shared bins (densities), side by side. A
    threshold chosen on one panel and applied to another is judged by how the two overlap."""
    data = [(t, np.asarray(s, dtype=np.float64), np.asarray(r, dtype=bool)) for t, s, r in panels]
    every = np.concatenate([s[np.isfinite(s)] for _, s, _ in data]) if data else np.zeros(1)
    lo, hi = np.percentile(every, [0.5, 99.5]) if every.size else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 41)

    def panel(title: str, s: np.ndarray, r: np.ndarray) -> Callable[[Any], None]:
        def draw(ax: Any) -> None:
            for mask, label, color in ((r, "related", "tab:green"), (~r, "unrelated", "tab:red")):
                if mask.any():
                    ax.hist(np.clip(s[mask], bins[0], bins[-1]), bins=bins, density=True, alpha=0.5,
                            color=color, label=f"{label} ({int(mask.sum())})")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(xlabel)
            ax.legend(fontsize=8)
        return draw

    return render_row([panel(*d) for d in data], size=(4.5 * max(1, len(data)), 3.5), dpi=dpi)
