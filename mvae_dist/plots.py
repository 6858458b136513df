"""Plots as images: the one matplotlib canvas of the studies, the demo and the sweeps.

``render(draw)`` gives ``draw`` a fresh Axes on an off-screen Agg canvas (no display, no global
pyplot state, safe in Ray workers and threads) and returns the figure as a uint8 RGB array,
ready for ``Tracker.log_image`` or ``PIL.Image.fromarray(...).save``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def render(draw: Callable[[Any], None], *, size: tuple[float, float] = (5.5, 4.0),
           dpi: int = 100) -> np.ndarray:
    """uint8 [H, W, 3] (H = size[1] * dpi, W = size[0] * dpi): the figure ``draw(ax)`` draws on
    one Axes, with a light grid, laid out tightly."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
