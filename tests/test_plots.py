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


def test_score_distributions_draws_one_panel_each_with_both_classes():
    from mvae_dist.plots import score_distributions

    rng = np.random.default_rng(0)
    s, r = np.append(rng.normal(-3, 1, 200), rng.normal(3, 1, 200)), np.arange(400) >= 200
    one = score_distributions([("S_m", s, r)], dpi=50)
    two = score_distributions([("S_m", s, r), ("F_m", s - 1, r)], dpi=50)
    assert one.shape == (175, 225, 3) and two.shape == (175, 450, 3)
    # both classes are drawn: the image holds reddish and greenish pixels
    img = two.astype(int)
    greenish = ((img[..., 1] - img[..., 0] > 40) & (img[..., 1] - img[..., 2] > 40)).mean()
    reddish = ((img[..., 0] - img[..., 1] > 40) & (img[..., 0] - img[..., 2] > 40)).mean()
    assert greenish > 0.01 and reddish > 0.01
    only_related = score_distributions([("S_m", s[r], r[r])], dpi=50).astype(int)
    r0, g0, b0 = only_related[..., 0], only_related[..., 1], only_related[..., 2]
    assert ((r0 - g0 > 40) & (r0 - b0 > 40)).mean() < 0.001  # no unrelated histogram
