"""The shared plot canvas: the figure is an RGB image of the requested size and shows what was drawn."""

import numpy as np

from mvae_dist.plots import render


def test_render_returns_the_drawn_figure_as_rgb():
    blank = render(lambda ax: None, size=(3.0, 2.0), dpi=50)
    assert blank.shape == (100, 150, 3) and blank.dtype == np.uint8

    def red_square(ax):
        ax.fill([0, 1, 1, 0], [0, 0, 1, 1], color=(1.0, 0.0, 0.0))

    img = render(red_square, size=(3.0, 2.0), dpi=50)
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    assert red.mean() > 0.3 and not ((blank[..., 0] > 200) & (blank[..., 1] < 60)).any()
