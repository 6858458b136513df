"""SYNTHETIC captions of MNIST digits: the embedded set's third modality (M = 3).

Each MNIST image gets one caption rendered from its label and from three attributes measured on
the image itself, e.g. "a small thick seven slanting right":

    size       ink bounding-box area (height x width of the rows and columns holding ink);
    thickness  stroke width: the mean over ink pixels of the shorter of the horizontal and the
               vertical run of ink through the pixel (w for a straight stroke w pixels wide);
    slant      -cov(x, y) / var(y) of the ink pixels' coordinates (y grows downwards, so a digit
               whose top leans right has a positive slant).

Ink is a pixel >= 128. Each attribute is cut into terciles per digit class on the training
split (so a "thick one" is thick for a one), and the test split uses the training cut points:
size small / - / large, thickness thin / - / thick ("-": the word is left out), slant
"slanting left" / "standing upright" / "slanting right". Nothing here is real language or
real annotation: the captions are a deterministic function of the image, documented as
synthetic in the manifest.
"""

from __future__ import annotations

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIZE_WORDS = ("small", None, "large")
THICKNESS_WORDS = ("thin", None, "thick")
SLANT_WORDS = (("slanting", "left"), ("standing", "upright"), ("slanting", "right"))
INK = 128


def attributes(images: np.ndarray) -> np.ndarray:
    """Size, thickness and slant of each digit: uint8 images [N, H, W] -> float64 [N, 3].

    An image without ink gets zeros.
    """
    ink = np.asarray(images) >= INK  # [N, H, W]
    N, H, W = ink.shape
    rows, cols = ink.any(2), ink.any(1)  # [N, H], [N, W]
    height = np.where(rows.any(1), H - rows[:, ::-1].argmax(1) - rows.argmax(1), 0)
    width = np.where(cols.any(1), W - cols[:, ::-1].argmax(1) - cols.argmax(1), 0)
    size = (height * width).astype(np.float64)

    area = ink.sum((1, 2))
    run = np.minimum(_run_lengths(ink, 2), _run_lengths(ink, 1))  # [N, H, W]
    thickness = np.where(area > 0, (run * ink).sum((1, 2)) / np.maximum(area, 1), 0.0)

    y, x = np.mgrid[0:H, 0:W]
    n = np.maximum(area, 1)
    my = (ink * y).sum((1, 2)) / n
    mx = (ink * x).sum((1, 2)) / n
    var_y = (ink * (y - my[:, None, None]) ** 2).sum((1, 2)) / n
    cov = (ink * (y - my[:, None, None]) * (x - mx[:, None, None])).sum((1, 2)) / n
    slant = np.where(var_y > 0, -cov / np.maximum(var_y, 1e-9), 0.0)
    return np.stack([size, thickness, slant], axis=1)


def _run_lengths(ink: np.ndarray, axis: int) -> np.ndarray:
    """Length of the run of ink along ``axis`` (1: columns, 2: rows) through each pixel: [N, H, W]."""
    x = np.moveaxis(ink, axis, -1).astype(np.int32)
    fwd, back = np.zeros_like(x), np.zeros_like(x)
    n = x.shape[-1]
    for i in range(n):
        fwd[..., i] = x[..., i] * ((fwd[..., i - 1] if i else 0) + 1)
        j = n - 1 - i
        back[..., j] = x[..., j] * ((back[..., j + 1] if i else 0) + 1)
    return np.moveaxis(np.where(x > 0, fwd + back - 1, 0), -1, axis)


def tercile_cuts(values: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    """Per class, the 1/3 and 2/3 quantiles of each attribute: {label: float64 [2, A]}."""
    return {int(c): np.quantile(values[labels == c], [1 / 3, 2 / 3], axis=0) for c in np.unique(labels)}


def caption_words(label: int, attrs: np.ndarray, cuts: np.ndarray) -> list[str]:
    """The caption of one digit: its label, attributes [3] and its class's cut points [2, 3]."""
    level = [int(np.searchsorted(cuts[:, a], attrs[a], side="right")) for a in range(3)]  # 0, 1, 2
    words = ["a"]
    for vocab, lv in ((SIZE_WORDS, level[0]), (THICKNESS_WORDS, level[1])):
        if vocab[lv]:
            words.append(vocab[lv])
    words.append(DIGIT_WORDS[int(label)])
    words.extend(SLANT_WORDS[level[2]])
    return words


def captions(images: np.ndarray, labels: np.ndarray, cuts: dict[int, np.ndarray] | None = None,
             ) -> tuple[list[list[str]], dict[int, np.ndarray]]:
    """Tokenised captions of images [N, H, W] with labels [N] -> (captions, the cut points used).

    ``cuts`` None: computed from these images (the training split); pass the training split's
    cut points for the test split.
    """
    values = attributes(images)
    labels = np.asarray(labels)
    cuts = tercile_cuts(values, labels) if cuts is None else cuts
    return [caption_words(int(c), v, cuts[int(c)]) for c, v in zip(labels, values)], cuts
