"""Image grids of a multimodal VAE: reconstructions, cross-generations, joint generations.

Pure functions: a model and tensors in, a uint8 RGB array [H, W, 3] out (``save_png`` writes
one atomically). Every function runs under ``torch.no_grad`` with the model in eval mode and
restores its training flag afterwards; randomness comes only from the ``generator`` argument
(default: a generator seeded with 0), never from the global RNG, so a grid is a function of
(model, inputs, seed).

Cells are shown at their native size (no resampling): grey 1-channel images become grey RGB,
3-channel images are shown as they are, a vector modality [B, D] becomes a small bar plot
(bars above / below a zero line, one range per modality and grid so inputs and outputs compare),
and a sentence modality (token ids [B, T], given with its vocabulary in ``vocabs``) becomes its
words, wrapped over up to TEXT_LINES lines of a TEXT_CELL_W-pixel cell (cut with "..." when
longer; the full sentences are in the captions report, ``captions.py``).
Cells of different sizes are centred on a black cell of the grid's largest size, and cells are
separated by light-grey lines, so ``cell(grid, row, col)`` crops any cell back out exactly.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..models.base import evaluating
from ..models.distributions import standard_noise

#: pixels between cells, and between the blocks / panels of one figure
PAD = 2
GAP = 6
#: value of the separator lines and the gaps (light grey, distinct from black padding)
SEPARATOR = 200
#: height of a vector modality's bar-plot cell; its width is clamp(D, 32, 128)
VECTOR_CELL_H = 32
#: a sentence's cell: TEXT_LINES lines of TEXT_LINE_H pixels, TEXT_CELL_W wide (PIL's default
#: font at TEXT_FONT_SIZE px; ~24 characters a line)
TEXT_CELL_W, TEXT_LINES, TEXT_LINE_H, TEXT_FONT_SIZE = 128, 3, 11, 10
#: {modality index: vocabulary (id -> word)} of the sentence modalities shown
Vocabs = Mapping[int, Sequence[str]]


# ----------------------------------------------------------------------------- public grids
def reconstruction_grid(model: nn.Module, xs: Sequence[Tensor], n: int = 8, *, sample: bool = False,
                        generator: torch.Generator | None = None, vocabs: Vocabs | None = None) -> np.ndarray:
    """Self-reconstructions x_m -> z ~ q(z | x_m) -> loc of p(x_m | z), one panel per modality.

    Each panel has 2 rows of ``n`` cells: the inputs x_m[:n] on top, their reconstructions below;
    panels sit side by side in the model's modality order. q(z | x_m) is the model's own unimodal
    posterior (``model.unimodal_posterior``; for MVAE the product with the prior expert); z is its
    loc, or a sample when ``sample`` is True. xs: M tensors [B, *event_m] -> uint8 [H, W, 3];
    vocabs: the sentence modalities' vocabularies (their cells show words).
    """
    with evaluating(model) as dev:
        xs = _take(xs, n, model, dev)
        gen = _generator(generator)
        panels = []
        for m, x in enumerate(xs):
            z = _posterior_z(model, x, m, sample, gen)
            rec = model.decode_mean(m, z).float().cpu()
            panels.append(_rows_image([x, rec], [m, m], _vector_ranges([x, rec], [m, m]), vocabs=vocabs))
        return _hstack(panels)


def cross_generation_grid(model: nn.Module, xs: Sequence[Tensor], n: int = 8, *, sample: bool = False,
                          generator: torch.Generator | None = None, vocabs: Vocabs | None = None
                          ) -> np.ndarray:
    """Cross-generations x_m -> z ~ q(z | x_m) -> loc of p(x_m' | z) for every m' != m.

    One block per source modality m, blocks stacked top to bottom in modality order; a block
    has the inputs x_m[:n] as its top row (as in the paper's figures) and then one row per other
    modality m' in order, column j generated from input j. z is the loc of the model's unimodal
    posterior (a sample when ``sample`` is True). xs: M tensors [B, *event_m] -> uint8 [H, W, 3];
    vocabs: as ``reconstruction_grid``'s.
    """
    with evaluating(model) as dev:
        xs = _take(xs, n, model, dev)
        gen = _generator(generator)
        M = len(xs)
        blocks_rows: list[tuple[list[Tensor], list[int]]] = []
        for m, x in enumerate(xs):
            z = _posterior_z(model, x, m, sample, gen)
            rows, mods = [x], [m]
            for t in range(M):
                if t != m:
                    rows.append(model.decode_mean(t, z).float().cpu())
                    mods.append(t)
            blocks_rows.append((rows, mods))
        # One value range per modality over the whole figure, and one cell size for all blocks.
        all_rows = [r for rows, _ in blocks_rows for r in rows]
        all_mods = [k for _, mods in blocks_rows for k in mods]
        ranges = _vector_ranges(all_rows, all_mods)
        cell = _cell_size([_render(r, ranges.get(k), _vocab(vocabs, k)) for r, k in zip(all_rows, all_mods)])
        blocks = [_rows_image(rows, mods, ranges, cell, vocabs) for rows, mods in blocks_rows]
        return _vstack(blocks)


def joint_generation_grid(model: nn.Module, n: int = 64,
                          generator: torch.Generator | None = None, vocabs: Vocabs | None = None
                          ) -> np.ndarray:
    """Joint generations: z ~ p(z) (the model's prior), decoded (loc) in every modality.

    ``n`` prior samples [n, L]; one panel per modality, side by side, each a ceil(sqrt(n))-column
    grid in which cell j of every panel comes from the same z_j. -> uint8 [H, W, 3]. vocabs: as
    ``reconstruction_grid``'s.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    with evaluating(model):
        gen = _generator(generator)
        # Draw on the CPU with the (CPU) generator, then move: the same grid on any device.
        z = model.sample_prior(n, gen)
        outs = [model.decode_mean(m, z).float().cpu() for m in range(len(model.modalities))]
        ranges = _vector_ranges(outs, list(range(len(outs))))
        ncol = math.ceil(math.sqrt(n))
        panels = []
        for m, out in enumerate(outs):
            cells = _render(out, ranges.get(m), _vocab(vocabs, m))
            panels.append(_grid(cells, ncol, _cell_size([cells])))
        return _hstack(panels)


def standard_grids(model: nn.Module, xs: Sequence[Tensor], n: int = 8, n_joint: int = 64,
                   seed: int = 0, vocabs: Vocabs | None = None) -> dict[str, np.ndarray]:
    """The three grids a training run logs: {"reconstruction", "cross_generation",
    "joint_generation"} -> uint8 [H, W, 3] each, all from one seed; vocabs: the sentence
    modalities' vocabularies (their cells show words)."""
    return {
        "reconstruction": reconstruction_grid(model, xs, n, vocabs=vocabs),
        "cross_generation": cross_generation_grid(model, xs, n, vocabs=vocabs),
        "joint_generation": joint_generation_grid(model, n_joint, torch.Generator().manual_seed(seed),
                                                  vocabs=vocabs),
    }


# ------------------------------------------------------------------------ readable figures
#: upscaling of the logged figures (nearest neighbour: a 28-px digit becomes 84 px, still sharp)
SCALE = 3
#: background of the label margins, and the label text colour
_PAPER, _INK = 255, 20


def labelled(grid: np.ndarray, *, title: str, rows: Sequence[tuple[float, str]] = (),
             columns: Sequence[tuple[float, str]] = (), scale: int = SCALE) -> np.ndarray:
    """A grid as people read it: ``grid`` [H, W, 3] scaled ``scale`` times (nearest neighbour),
    a title on top, ``columns`` (x centre in grid pixels, text) as panel titles above it and
    ``rows`` (y centre in grid pixels, text) as labels in a left margin -> uint8 [H', W', 3].
    The grid's pixels are kept exactly: ``out[top:top + H*scale, left:left + W*scale]`` is the
    upscaled grid (``labelled_origin`` gives top, left)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(text: str) -> int:
        return int(measure.textlength(text, font=font))

    top, left = labelled_origin(rows, columns, font=font)
    big = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    H, W = big.shape[:2]
    canvas = Image.new("RGB", (max(left + W, width(title) + 16), top + H + 4), (_PAPER,) * 3)
    canvas.paste(Image.fromarray(big), (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), title, fill=(_INK,) * 3, font=font)
    for x, text in columns:
        draw.text((left + x * scale - width(text) / 2, top - 20), text, fill=(_INK,) * 3, font=font)
    for y, text in rows:
        draw.text((left - 8 - width(text), top + y * scale - 8), text, fill=(_INK,) * 3, font=font)
    return np.asarray(canvas).copy()


def labelled_origin(rows: Sequence[tuple[float, str]], columns: Sequence[tuple[float, str]], *,
                    font: object | None = None) -> tuple[int, int]:
    """(top, left) of the scaled grid inside ``labelled``'s figure."""
    from PIL import Image, ImageDraw, ImageFont

    font = font or ImageFont.load_default(size=14)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = 16 + max((int(measure.textlength(t, font=font)) for _, t in rows), default=0)
    return 28 + (22 if columns else 0), left


def _cell_hw(x: Tensor, vocab: Sequence[str] | None = None) -> tuple[int, int]:
    """One cell's (h, w) as ``_render`` draws a batch like ``x`` [B, ...]."""
    if vocab is not None:
        return TEXT_LINES * TEXT_LINE_H, TEXT_CELL_W
    if x.dim() == 2:
        return VECTOR_CELL_H, _vector_width(int(x.shape[1]))
    return int(x.shape[-2]), int(x.shape[-1])


def _panel_centres(widths: Sequence[int]) -> list[float]:
    """x centres of panels of these widths placed by ``_hstack``."""
    out, x = [], 0
    for w in widths:
        out.append(x + w / 2)
        x += w + GAP
    return out


def readable_grids(model: nn.Module, xs: Sequence[Tensor], n: int = 8, n_joint: int = 64,
                   seed: int = 0, scale: int = SCALE, vocabs: Vocabs | None = None) -> dict[str, np.ndarray]:
    """``standard_grids`` as labelled figures (``labelled``): scaled, titled, with a label per
    row ("mnist input", "svhn from mnist", ...) and the modality above each panel."""
    raw = standard_grids(model, xs, n, n_joint, seed, vocabs)
    names = list(getattr(model, "names", None) or [f"modality {m}" for m in range(len(xs))])
    n = min(n, xs[0].shape[0])
    hw = [_cell_hw(x, _vocab(vocabs, m)) for m, x in enumerate(xs)]
    M = len(xs)
    out = {}
    # reconstruction: one panel per modality, rows input / reconstruction (at panel 0's cell height)
    widths = [PAD + n * (w + PAD) for _, w in hw]
    h0 = hw[0][0]
    out["reconstruction"] = labelled(
        raw["reconstruction"], title="reconstructions: inputs (top) and x -> z -> x (bottom)",
        rows=[(PAD + h0 / 2, "input"), (PAD + h0 + PAD + h0 / 2, "reconstruction")],
        columns=list(zip(_panel_centres(widths), names)), scale=scale)
    # cross generation: one block per source modality, one cell size over the whole figure
    h = max(c[0] for c in hw)
    block = PAD + M * (h + PAD)
    rows = []
    for b in range(M):
        labels = [f"{names[b]} input"] + [f"{names[t]} from {names[b]}" for t in range(M) if t != b]
        rows += [(b * (block + GAP) + PAD + i * (h + PAD) + h / 2, text) for i, text in enumerate(labels)]
    out["cross_generation"] = labelled(
        raw["cross_generation"], title="cross generation: column j of a block is generated from its input j",
        rows=rows, scale=scale)
    # joint generation: one panel per modality; cell j of every panel decodes the same z_j ~ p(z)
    ncol = math.ceil(math.sqrt(n_joint))
    widths = [PAD + ncol * (w + PAD) for _, w in hw]
    out["joint_generation"] = labelled(
        raw["joint_generation"],
        title=f"joint generation: {n_joint} z ~ p(z), cell j of each panel from the same z",
        columns=list(zip(_panel_centres(widths), names)), scale=scale)
    return out


def save_png(img: np.ndarray | object, path: str | os.PathLike) -> Path:
    """Write ``img`` (uint8 [H, W, 3] / [H, W] array, or a PIL image) as a PNG at ``path``.

    Atomic: written to a temporary file in the same directory, then renamed over ``path``, so
    a reader never sees half a file. Parent directories are created. Returns the path.
    """
    from PIL import Image

    path = Path(path)
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise ValueError(f"image array must be uint8, got {img.dtype}")
        img = Image.fromarray(img)
    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a uint8 numpy array or a PIL image, got {type(img).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cell(grid: np.ndarray, row: int, col: int, cell_hw: tuple[int, int], origin: tuple[int, int] = (0, 0)
         ) -> np.ndarray:
    """Crop cell (row, col) of a block of cells of size ``cell_hw`` whose top-left cell starts
    after the outer separator at pixel ``origin`` of ``grid`` -> [h, w, 3] (tests, debugging)."""
    h, w = cell_hw
    y = origin[0] + PAD + row * (h + PAD)
    x = origin[1] + PAD + col * (w + PAD)
    return grid[y:y + h, x:x + w]


# ---------------------------------------------------------------------------- model helpers
def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _take(xs: Sequence[Tensor], n: int, model: nn.Module, dev: torch.device) -> list[Tensor]:
    M = len(model.modalities)
    if len(xs) != M:
        raise ValueError(f"expected {M} modalities, got {len(xs)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    B = xs[0].shape[0]
    if any(x.shape[0] != B for x in xs):
        raise ValueError(f"modalities have different batch sizes: {[x.shape[0] for x in xs]}")
    return [x[:n].to(dev, torch.float32) for x in xs]


def _posterior_z(model: nn.Module, x: Tensor, m: int, sample: bool, gen: torch.Generator) -> Tensor:
    """z from q(z | x_m): its loc, or one reparameterised sample -> [B, L]."""
    loc, scale = model.unimodal_posterior(x, m)
    if not sample:
        return loc
    eps = standard_noise(model.family, tuple(loc.shape), generator=gen).to(loc.device, loc.dtype)
    return loc + scale * eps


# ------------------------------------------------------------------------------- rendering
def _vector_ranges(tensors: Sequence[Tensor], mods: Sequence[int]) -> dict[int, tuple[float, float]]:
    """(lo, hi) per vector modality over every tensor of it shown in one figure (always spans 0)."""
    out: dict[int, tuple[float, float]] = {}
    for t, m in zip(tensors, mods):
        if t.dim() != 2:
            continue
        lo, hi = float(t.min()), float(t.max())
        plo, phi = out.get(m, (0.0, 0.0))
        out[m] = (min(plo, lo), max(phi, hi))
    return out


def _vocab(vocabs: Vocabs | None, m: int) -> Sequence[str] | None:
    return None if vocabs is None else vocabs.get(m)


def _render(x: Tensor, vrange: tuple[float, float] | None = None, vocab: Sequence[str] | None = None
            ) -> np.ndarray:
    """A batch as uint8 cells [B, h, w, 3]: images [B, C, H, W] (C = 1 or 3), vectors [B, D], or
    with a ``vocab`` sentences of token ids [B, T]."""
    if vocab is not None:
        return _sentences(x, vocab)
    x = x.detach().float().cpu()
    if x.dim() == 2:
        return _bars(x, vrange or (float(x.min()), float(x.max())))
    if x.dim() == 3:  # [B, H, W]: one grey channel without its axis
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"cannot show a modality of shape {tuple(x.shape[1:])} as an image or vector")
    img = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    if img.shape[1] == 1:
        img = img.expand(-1, 3, -1, -1)
    return img.permute(0, 2, 3, 1).contiguous().numpy()


def _wrap(words: Sequence[str], fits: Callable[[str], bool], lines: int) -> list[str]:
    """Greedy word wrap into lines that ``fits`` (a word too long for a line is cut); past
    ``lines`` lines the last one kept ends in "..."."""
    out: list[str] = []
    current = ""
    for w in words:
        trial = f"{current} {w}" if current else w
        if fits(trial):
            current = trial
            continue
        if current:
            out.append(current)
        current = w
        while not fits(current) and len(current) > 1:
            current = current[:-1]
    if current:
        out.append(current)
    if len(out) <= lines:
        return out
    last = out[lines - 1]
    while last and not fits(last + "..."):
        last = last.rsplit(" ", 1)[0] if " " in last else last[:-1]
    return [*out[:lines - 1], last + "..."]


def _sentences(x: Tensor, vocab: Sequence[str]) -> np.ndarray:
    """Token ids [B, T] as their words, white on black -> [B, TEXT_LINES * TEXT_LINE_H, TEXT_CELL_W, 3]."""
    from PIL import Image, ImageDraw, ImageFont

    from ..data.text import decode

    font = ImageFont.load_default(size=TEXT_FONT_SIZE)
    H, W = TEXT_LINES * TEXT_LINE_H, TEXT_CELL_W
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def fits(text: str) -> bool:
        return measure.textlength(text, font=font) <= W - 4

    cells = np.zeros((x.shape[0], H, W, 3), np.uint8)
    for b, row in enumerate(x.detach().cpu().round().long().tolist()):
        img = Image.new("RGB", (W, H))
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(_wrap(decode(row, vocab).split() or ["(empty)"], fits, TEXT_LINES)):
            draw.text((2, i * TEXT_LINE_H), line, fill=(255, 255, 255), font=font)
        cells[b] = np.asarray(img)
    return cells


def _vector_width(D: int) -> int:
    """Pixel width of a D-dimensional vector's bar-plot cell: clamp(D, 32, 128)."""
    return min(max(D, 32), 128)


def _bars(x: Tensor, vrange: tuple[float, float]) -> np.ndarray:
    """Vectors [B, D] as bar plots [B, VECTOR_CELL_H, W, 3]: white bars from a grey zero line."""
    B, D = x.shape
    W, H = _vector_width(D), VECTOR_CELL_H
    lo, hi = min(vrange[0], 0.0), max(vrange[1], 0.0)
    span = hi - lo if hi > lo else 1.0
    # Column c shows entry floor(c * D / W) (D <= W: bars W/D wide; D > W: a subsample).
    idx = (np.arange(W) * D) // W
    vals = x.numpy()[:, idx]  # [B, W]

    def to_row(v: np.ndarray) -> np.ndarray:  # value -> pixel row, hi at the top
        return (H - 1) - np.round((v - lo) / span * (H - 1)).astype(int)

    zero, top = int(to_row(np.zeros(1))[0]), to_row(vals)  # scalar, [B, W]
    rows = np.arange(H)[None, :, None]  # [1, H, 1]
    a, b = np.minimum(top, zero)[:, None, :], np.maximum(top, zero)[:, None, :]  # [B, 1, W]
    out = np.zeros((B, H, W, 3), np.uint8)
    out[(rows >= a) & (rows <= b)] = 255
    out[:, zero, :, :] = 128
    return out


def _cell_size(cell_sets: Sequence[np.ndarray]) -> tuple[int, int]:
    return max(c.shape[1] for c in cell_sets), max(c.shape[2] for c in cell_sets)


def _grid(cells: np.ndarray, ncol: int, cell_hw: tuple[int, int]) -> np.ndarray:
    """Cells [N, h, w, 3] row-major into a grid of ``ncol`` columns of cell size ``cell_hw``
    (smaller cells centred on black), PAD-wide separators around every cell -> [H, W, 3]."""
    N = cells.shape[0]
    h, w = cell_hw
    nrow = math.ceil(N / ncol)
    out = np.full((PAD + nrow * (h + PAD), PAD + ncol * (w + PAD), 3), SEPARATOR, np.uint8)
    ch, cw = cells.shape[1:3]
    oy, ox = (h - ch) // 2, (w - cw) // 2
    for i in range(N):
        r, c = divmod(i, ncol)
        y, x = PAD + r * (h + PAD), PAD + c * (w + PAD)
        out[y:y + h, x:x + w] = 0
        out[y + oy:y + oy + ch, x + ox:x + ox + cw] = cells[i]
    return out


def _rows_image(rows: Sequence[Tensor], mods: Sequence[int], ranges: dict[int, tuple[float, float]],
                cell_hw: tuple[int, int] | None = None, vocabs: Vocabs | None = None) -> np.ndarray:
    """Rows of n cells each (row i shows modality mods[i]) on one cell size -> [H, W, 3]."""
    rendered = [_render(r, ranges.get(m), _vocab(vocabs, m)) for r, m in zip(rows, mods)]
    cell_hw = cell_hw or _cell_size(rendered)
    return np.concatenate(
        [_grid(c, c.shape[0], cell_hw)[: (None if i == len(rendered) - 1 else -PAD)]
         for i, c in enumerate(rendered)]
    )  # each row's bottom separator is the next row's top one


def _hstack(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels side by side, top-aligned, GAP apart; shorter ones are filled with SEPARATOR."""
    H = max(p.shape[0] for p in panels)
    parts = []
    for i, p in enumerate(panels):
        if i:
            parts.append(np.full((H, GAP, 3), SEPARATOR, np.uint8))
        parts.append(np.pad(p, ((0, H - p.shape[0]), (0, 0), (0, 0)), constant_values=SEPARATOR))
    return np.concatenate(parts, axis=1)


def _vstack(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Blocks top to bottom, left-aligned, GAP apart."""
    W = max(b.shape[1] for b in blocks)
    parts = []
    for i, b in enumerate(blocks):
        if i:
            parts.append(np.full((GAP, W, 3), SEPARATOR, np.uint8))
        parts.append(np.pad(b, ((0, 0), (0, W - b.shape[1]), (0, 0)), constant_values=SEPARATOR))
    return np.concatenate(parts, axis=0)
