"""A SYNTHETIC street-number modality, rendered by this project: the embedded set's modality
"svhn" (the role SVHN plays in the paper, and the name the model, its grids and the digit
classifiers give it), flagged ``synthetic`` in the manifest.

Nothing here is real SVHN data. Each image is a 32x32 RGB uint8 crop centred on one digit
(its label) in the manner of SVHN's cropped-digit format: the digit is set in a real font
(the TrueType fonts matplotlib ships: DejaVu Sans/Serif/Mono, STIX, Computer Modern), at a
random size, rotation, aspect and offset, in an ink colour over a plate colour (solid, gradient
or noise texture), with neighbouring house-number digits that the crop cuts at its edges, an
optional drop shadow, then Gaussian blur and pixel noise.

Colours follow house-number plates rather than uniform RGB (renderer "street-v2"): a plate is
light with dark digits (probability ``Difficulty.dark_on_light``) or dark with light digits,
each colour drawn from a small palette of plate and paint colours (white, cream, greys, muted
blues, greens, browns, reds, brass) with per-image jitter, at a luminance contrast of at least
``Difficulty.contrast[0]``. As on real plates, the digit is then most of what varies between
two images of one plate colour. Version 1 ("street-v1", before December 2026) drew both colours
uniformly over RGB at contrasts from 0.1: the background colour then outweighed the digit in
any likelihood, and a generative model learnt colour long before digits (docs/data.md).

Speed: the glyph bitmaps are rasterised once per (font, digit) with matplotlib's FreeType
binding; each image is then a numpy composite (one bilinear warp at 2x resolution, a blur,
a blend), a few thousand images per second on one core.
Determinism: the images of a split are a pure function of (seed, split, count).
"""

from __future__ import annotations

import functools
import os
import zlib
from dataclasses import dataclass

import numpy as np

from mvae_dist.errors import DataError

#: the renderer's name and version, stored in every manifest of the embedded set: shards of
#: another version are refused by ``data prepare`` (a configuration mismatch), never mixed
RENDERER = "street-v2"
SIZE = 32  # output side in pixels
_SS = 2  # supersampling factor of the warp (anti-aliasing)
_RENDER_PT = 48  # glyph raster size; ~35 px tall digits, larger than any output digit

# Font files from matplotlib's mpl-data/fonts/ttf; whichever exist are used.
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
)


@dataclass(frozen=True)
class Difficulty:
    """Ranges of the random rendering parameters (uniform unless noted).

    The defaults keep the task non-trivial: a small CNN trained for about a minute on CPU on
    the embedded training split reaches 90-99% test accuracy (see tests/data/test_sources.py).
    """

    height: tuple[float, float] = (17.0, 25.0)  # digit height in output pixels
    rotation_deg: float = 8.0  # std of a normal, clipped at 2.5 std
    shear: float = 0.25  # |horizontal shear| (italic-like slant)
    aspect: tuple[float, float] = (0.75, 1.3)  # horizontal stretch
    shift: float = 2.0  # |offset| of the centre digit in pixels
    neighbour_p: float = 0.5  # probability of a digit on each side
    gap: tuple[float, float] = (0.15, 0.45)  # gap between digits, in digit heights
    contrast: tuple[float, float] = (0.35, 0.9)  # |luminance difference| of ink and plate
    dark_on_light: float = 0.7  # probability of dark digits on a light plate (else light on dark)
    colour_jitter: float = 0.06  # std of the per-channel jitter of palette colours
    shadow_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.0, 0.9)
    noise_sigma: tuple[float, float] = (0.0, 0.05)  # in [0, 1] intensity units


# Plate and paint colours (RGB in [0, 1]) of house numbers: light and dark ends of each polarity.
LIGHT_COLOURS = np.array([
    [0.95, 0.95, 0.93],  # white
    [0.93, 0.89, 0.78],  # cream
    [0.80, 0.80, 0.80],  # light grey
    [0.92, 0.85, 0.55],  # pale yellow / brass
    [0.75, 0.82, 0.90],  # pale blue
    [0.78, 0.86, 0.76],  # pale green
    [0.88, 0.74, 0.62],  # sand / terracotta light
])
DARK_COLOURS = np.array([
    [0.08, 0.08, 0.08],  # black
    [0.28, 0.28, 0.30],  # dark grey
    [0.10, 0.18, 0.40],  # navy
    [0.10, 0.30, 0.18],  # dark green
    [0.35, 0.20, 0.10],  # brown
    [0.50, 0.10, 0.10],  # dark red
    [0.45, 0.35, 0.15],  # bronze
])


def _font_dir() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@functools.lru_cache(maxsize=1)
def glyph_bank() -> tuple[tuple[np.ndarray, ...], ...]:
    """Tight ink bitmaps float32 in [0, 1], indexed [font][digit] -> [h, w]; rendered once."""
    from matplotlib.ft2font import FT2Font

    try:  # matplotlib >= 3.8 wants the enum; older versions take ints
        from matplotlib.ft2font import LoadFlags

        flags = LoadFlags.NO_HINTING
    except ImportError:  # pragma: no cover - old matplotlib
        flags = 2
    bank = []
    for name in FONT_FILES:
        path = os.path.join(_font_dir(), name)
        if not os.path.isfile(path):
            continue
        font = FT2Font(path)
        font.set_size(_RENDER_PT, 72)
        glyphs = []
        for digit in "0123456789":
            font.set_text(digit, 0.0, flags=flags)
            font.draw_glyphs_to_bitmap(antialiased=True)
            img = np.asarray(font.get_image(), dtype=np.float32) / 255.0
            rows, cols = np.nonzero(img > 0.02)
            if rows.size == 0:
                break
            glyphs.append(img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].copy())
        if len(glyphs) == 10:
            bank.append(tuple(glyphs))
    if not bank:
        raise DataError(f"no usable digit fonts found in matplotlib's font directory {_font_dir()}")
    return tuple(bank)


def _layout(glyphs: tuple[np.ndarray, ...], digits: list[int], gap_px: float, centre: int):
    """Glyphs side by side on a common baseline -> mask [h, w] and the centre glyph's (cy, cx)."""
    parts = [glyphs[d] for d in digits]
    height = max(p.shape[0] for p in parts)
    gap = int(round(gap_px))
    width = sum(p.shape[1] for p in parts) + gap * (len(parts) - 1)
    pad = max(0, -gap) + 2
    canvas = np.zeros((height + 2 * pad, width + 2 * pad + 2 * abs(gap)), np.float32)
    x = pad
    cy = cx = 0.0
    for i, p in enumerate(parts):
        y0 = pad + height - p.shape[0]  # bottoms aligned: digits sit on the baseline
        region = canvas[y0 : y0 + p.shape[0], x : x + p.shape[1]]
        np.maximum(region, p, out=region)  # touching neighbours overlap, not add
        if i == centre:
            cy, cx = y0 + p.shape[0] / 2.0, x + p.shape[1] / 2.0
        x += p.shape[1] + gap
    return canvas, cy, cx


def _bilinear(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample img [h, w] at float coordinates (zero outside) -> array shaped like ys."""
    h, w = img.shape
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    fy, fx = ys - y0, xs - x0
    padded = np.pad(img, 1)  # index -1 and h land in the zero border
    y0c = np.clip(y0 + 1, 0, h + 1)
    x0c = np.clip(x0 + 1, 0, w + 1)
    y1c = np.clip(y0 + 2, 0, h + 1)
    x1c = np.clip(x0 + 2, 0, w + 1)
    top = padded[y0c, x0c] * (1 - fx) + padded[y0c, x1c] * fx
    bot = padded[y1c, x0c] * (1 - fx) + padded[y1c, x1c] * fx
    return top * (1 - fy) + bot * fy


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [H, W, C] with edge padding."""
    if sigma < 0.3:
        return img
    r = int(np.ceil(2.5 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, ((r, r), (r, r), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    rows = sum(k[i] * p[i : i + h] for i in range(2 * r + 1))  # [H, W+2r, C]
    return sum(k[i] * rows[:, i : i + w] for i in range(2 * r + 1))


def _luma(c: np.ndarray) -> float:
    return float(c @ np.array([0.299, 0.587, 0.114]))


def _colours(rng: np.random.Generator, d: Difficulty) -> tuple[np.ndarray, np.ndarray]:
    """Plate and ink colours [3] in [0, 1]: palette colours of opposite ends (dark ink on a light
    plate with probability ``d.dark_on_light``), jittered, at least ``d.contrast[0]`` apart in
    luminance and at most ``d.contrast[1]``."""
    lo, hi = d.contrast
    light = LIGHT_COLOURS[rng.integers(len(LIGHT_COLOURS))]
    dark = DARK_COLOURS[rng.integers(len(DARK_COLOURS))]
    light = np.clip(light + rng.normal(0, d.colour_jitter, 3), 0, 1)
    dark = np.clip(dark + rng.normal(0, d.colour_jitter, 3), 0, 1)
    gap = _luma(light) - _luma(dark)
    if gap < lo:  # brighten the light one and darken the dark one, half the shortfall each
        light = np.clip(light + (lo - gap) / 2 + 0.01, 0, 1)
        dark = np.clip(dark - (lo - gap) / 2 - 0.01, 0, 1)
    elif gap > hi:  # fade the dark colour towards the light one
        mix = (gap - hi) / gap
        dark = dark + mix * (light - dark)
    if rng.random() < d.dark_on_light:
        return light, dark
    return dark, light


def _background(rng: np.random.Generator, bg: np.ndarray) -> np.ndarray:
    """Plate [32, 32, 3] float: solid, a shading gradient, or a low-frequency texture (weathered
    paint, brick) whose variation is mostly in brightness, as on real plates."""
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(bg, (SIZE, SIZE, 3)).astype(np.float32)
    if kind == 1:
        other = np.clip(bg * rng.uniform(0.6, 1.15), 0, 1)  # the same colour, shaded
        angle = rng.uniform(0, 2 * np.pi)
        g = np.linspace(-1, 1, SIZE)
        t = (np.cos(angle) * g[None, :] + np.sin(angle) * g[:, None]) * 0.5 + 0.5  # [32, 32]
        return (bg * (1 - t[..., None]) + other * t[..., None]).astype(np.float32)
    amp = rng.uniform(0.03, 0.12)
    coarse = rng.normal(0, amp, (5, 5, 1)) + rng.normal(0, amp / 4, (5, 5, 3))  # brightness + a little hue
    up = _upsample_matrix()
    tex = np.einsum("yi,ijc,xj->yxc", up, coarse, up)  # bilinear 5x5 -> 32x32
    return np.clip(bg + tex, 0, 1).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _upsample_matrix() -> np.ndarray:
    """Linear interpolation weights [32, 5] from a 5-point grid to 32 pixels."""
    pos = np.linspace(0, 4, SIZE)
    return np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(5)[None, :]))


def render_one(rng: np.random.Generator, label: int, d: Difficulty = Difficulty()) -> np.ndarray:
    """One street-number image uint8 [32, 32, 3] whose centre digit is ``label``."""
    bank = glyph_bank()
    glyphs = bank[rng.integers(len(bank))]
    digits, centre = [int(label)], 0
    if rng.random() < d.neighbour_p:
        digits.insert(0, int(rng.integers(10)))
        centre = 1
    if rng.random() < d.neighbour_p:
        digits.append(int(rng.integers(10)))
    src_h = float(max(g.shape[0] for g in glyphs))
    layout, cy, cx = _layout(glyphs, digits, rng.uniform(*d.gap) * src_h, centre)

    # Inverse affine: output pixel -> layout coordinate (rotation, shear, anisotropic scale).
    scale = rng.uniform(*d.height) / src_h  # layout px -> output px
    theta = np.deg2rad(np.clip(rng.normal(0, d.rotation_deg), -2.5 * d.rotation_deg, 2.5 * d.rotation_deg))
    aspect = rng.uniform(*d.aspect)
    shear = rng.uniform(-d.shear, d.shear)
    fwd = np.array([[aspect, shear], [0.0, 1.0]]) * scale  # layout (x, y) -> output (x, y)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inv = np.linalg.inv(rot @ fwd)
    n = SIZE * _SS
    grid = (np.arange(n) + 0.5) / _SS - SIZE / 2.0  # output pixel centres, origin at the middle
    ox = grid[None, :] - rng.uniform(-d.shift, d.shift)
    oy = grid[:, None] - rng.uniform(-d.shift, d.shift)
    sx = inv[0, 0] * ox + inv[0, 1] * oy + cx - 0.5
    sy = inv[1, 0] * ox + inv[1, 1] * oy + cy - 0.5
    alpha = _bilinear(layout, sy, sx).reshape(SIZE, _SS, SIZE, _SS).mean(axis=(1, 3))  # [32, 32]

    bg, fg = _colours(rng, d)
    img = _background(rng, bg)
    if rng.random() < d.shadow_p:  # a darker offset copy, as on embossed or painted plates
        dy, dx = rng.integers(-2, 3, 2)
        shadow = np.roll(alpha, (int(dy), int(dx)), axis=(0, 1))[..., None]
        img = img * (1 - shadow) + (fg * rng.uniform(0.1, 0.5)) * shadow
    ink = np.clip(fg + rng.normal(0, 0.04, (SIZE, SIZE, 3)) * rng.random(), 0, 1)  # uneven paint
    img = img * (1 - alpha[..., None]) + ink * alpha[..., None]
    img = _gaussian_blur(img, rng.uniform(*d.blur_sigma))
    img = img + rng.normal(0, rng.uniform(*d.noise_sigma), img.shape)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def render_split(
    n_per_class: int, seed: int, split: str, difficulty: Difficulty = Difficulty()
) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced split: images uint8 [10·n, 32, 32, 3] and labels int64 [10·n].

    Labels are shuffled (classes interleaved); the result depends only on the arguments.
    """
    # The split name enters the seed so that train and test are disjoint draws.
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.int64), n_per_class))
    images = np.empty((labels.size, SIZE, SIZE, 3), np.uint8)
    for i, label in enumerate(labels):
        images[i] = render_one(rng, int(label), difficulty)
    return images, labels
