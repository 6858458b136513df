"""Image grids: layout and shapes, inputs shown exactly, determinism, eval mode, any model and M."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mvae_dist.eval.images import (
    GAP,
    PAD,
    VECTOR_CELL_H,
    cell,
    cross_generation_grid,
    joint_generation_grid,
    reconstruction_grid,
    save_png,
    standard_grids,
)
from mvae_dist.models import build_model

N = 4


def tiny(name: str, modalities: tuple[str, ...] = ("mnist", "svhn")):
    torch.manual_seed(0)
    return build_model({"name": name, "modalities": list(modalities), "latent_dim": 4, "hidden": 16})


def batch(modalities: tuple[str, ...] = ("mnist", "svhn"), B: int = 5, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"mnist": (1, 28, 28), "svhn": (3, 32, 32)}
    out = []
    for spec in modalities:
        if spec.startswith("vector:"):
            out.append(torch.randn(B, int(spec.split(":")[1]), generator=g))
        else:
            out.append(torch.rand(B, *shapes[spec], generator=g))
    return out


def as_rgb(x: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1] -> the uint8 [H, W, 3] a grid shows."""
    u = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return u.expand(3, -1, -1).permute(1, 2, 0).numpy() if u.shape[0] == 1 else u.permute(1, 2, 0).numpy()


def span(cells: int, size: int) -> int:
    return PAD + cells * (size + PAD)


@pytest.mark.parametrize("name", ["mmvae", "mvae", "jmvae"])
def test_reconstruction_grid_layout_and_inputs(name):
    model, xs = tiny(name), batch()
    g = reconstruction_grid(model, xs, n=N)
    assert g.dtype == np.uint8 and g.ndim == 3 and g.shape[2] == 3
    # MNIST panel (2 rows of 28-px cells), a gap, the SVHN panel (2 rows of 32-px cells).
    assert g.shape == (span(2, 32), span(N, 28) + GAP + span(N, 32), 3)
    svhn_x = span(N, 28) + GAP
    for j in range(N):
        np.testing.assert_array_equal(cell(g, 0, j, (28, 28)), as_rgb(xs[0][j]))
        np.testing.assert_array_equal(cell(g, 0, j, (32, 32), origin=(0, svhn_x)), as_rgb(xs[1][j]))
    # The reconstruction row is the decoder's loc of the unimodal posterior's loc.
    with torch.no_grad():
        z, _ = model.unimodal_posterior(xs[0][:1], 0)
        rec = model.modalities[0].decode(z.unsqueeze(0))[0][0, 0]
    np.testing.assert_array_equal(cell(g, 1, 0, (28, 28)), as_rgb(rec))


@pytest.mark.parametrize("name", ["mmvae", "mvae", "jmvae"])
def test_cross_generation_grid_input_row_on_top(name):
    model, xs = tiny(name), batch()
    g = cross_generation_grid(model, xs, n=N)
    # Two blocks (source mnist, source svhn) of 2 rows each, every cell 32 px (the largest).
    block_h = span(2, 32)
    assert g.shape == (2 * block_h + GAP, span(N, 32), 3)
    for j in range(N):
        # MNIST's 28-px input is centred in its 32-px cell on black.
        c = cell(g, 0, j, (32, 32))
        np.testing.assert_array_equal(c[2:30, 2:30], as_rgb(xs[0][j]))
        assert c[:2].max() == 0 and c[:, :2].max() == 0
        np.testing.assert_array_equal(cell(g, 0, j, (32, 32), origin=(block_h + GAP, 0)), as_rgb(xs[1][j]))
    # Row 2 of block 1 is MNIST -> SVHN from the unimodal posterior's loc.
    with torch.no_grad():
        z, _ = model.unimodal_posterior(xs[0][2:3], 0)
        gen = model.modalities[1].decode(z.unsqueeze(0))[0][0, 0]
    np.testing.assert_array_equal(cell(g, 1, 2, (32, 32)), as_rgb(gen))


@pytest.mark.parametrize("name", ["mmvae", "mvae", "jmvae"])
def test_joint_generation_grid_seeded(name):
    model = tiny(name)
    a = joint_generation_grid(model, n=9, generator=torch.Generator().manual_seed(3))
    b = joint_generation_grid(model, n=9, generator=torch.Generator().manual_seed(3))
    c = joint_generation_grid(model, n=9, generator=torch.Generator().manual_seed(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (span(3, 32), span(3, 28) + GAP + span(3, 32), 3)  # 3x3 per modality
    np.testing.assert_array_equal(joint_generation_grid(model, n=9), joint_generation_grid(model, n=9))


def test_three_modalities_with_a_vector():
    mods = ("mnist", "svhn", "vector:10")
    model, xs = tiny("mmvae", mods), batch(mods)
    rec = reconstruction_grid(model, xs, n=N)
    cross = cross_generation_grid(model, xs, n=N)
    joint = joint_generation_grid(model, n=4)
    # Vector cells are 32 x max(D, 32) bar plots; cross blocks have 3 rows each.
    assert rec.shape == (span(2, 32), span(N, 28) + span(N, 32) + span(N, 32) + 2 * GAP, 3)
    assert cross.shape == (3 * span(3, 32) + 2 * GAP, span(N, 32), 3)
    assert joint.shape[0] == span(2, 32) and joint.dtype == np.uint8
    bars = cell(cross, 0, 0, (VECTOR_CELL_H, 32), origin=(2 * (span(3, 32) + GAP), 0))
    assert set(np.unique(bars)) <= {0, 128, 255} and (bars == 255).any()  # bars on black


def test_sampling_is_seeded_and_leaves_model_and_rng_alone():
    model, xs = tiny("mvae"), batch()
    model.train()
    state = torch.get_rng_state()
    a = reconstruction_grid(model, xs, n=N, sample=True, generator=torch.Generator().manual_seed(5))
    b = reconstruction_grid(model, xs, n=N, sample=True, generator=torch.Generator().manual_seed(5))
    c = reconstruction_grid(model, xs, n=N, sample=True, generator=torch.Generator().manual_seed(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert model.training
    assert torch.equal(torch.get_rng_state(), state)
    grids = standard_grids(model, xs, n=N, n_joint=4)
    assert set(grids) == {"reconstruction", "cross_generation", "joint_generation"}
    assert model.training


def test_bad_inputs_are_named():
    model, xs = tiny("mmvae"), batch()
    with pytest.raises(ValueError, match="expected 2 modalities"):
        reconstruction_grid(model, xs[:1])
    with pytest.raises(ValueError, match="n must be >= 1"):
        joint_generation_grid(model, n=0)


def test_save_png_atomic_round_trip(tmp_path):
    img = cross_generation_grid(tiny("jmvae"), batch(), n=2)
    path = save_png(img, tmp_path / "sub" / "grid.png")
    with Image.open(path) as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), img)
    save_png(Image.fromarray(img[::2]), path)  # replaces, leaves no temporary file
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]
    with pytest.raises(ValueError, match="uint8"):
        save_png(img.astype(np.float32), tmp_path / "x.png")


def test_readable_grids_keep_every_pixel_and_label_each_row():
    """The logged figures: each standard grid upscaled exactly (nearest neighbour), with a title,
    a label left of every row at that row's height, and the modality above each panel."""
    from mvae_dist.eval.images import SCALE, labelled_origin, readable_grids

    model, xs = tiny("mmvae"), batch()
    raw = standard_grids(model, xs, n=N, n_joint=9, seed=3)
    figs = readable_grids(model, xs, n=N, n_joint=9, seed=3)
    assert set(figs) == set(raw)
    rows = {"reconstruction": ["input", "reconstruction"],
            "cross_generation": ["mnist input", "svhn from mnist", "svhn input", "mnist from svhn"],
            "joint_generation": []}
    for name, fig in figs.items():
        g = raw[name]
        columns = [] if name == "cross_generation" else [(0, "x")]
        top, left = labelled_origin([(0, t) for t in rows[name]], columns)
        H, W = g.shape[0] * SCALE, g.shape[1] * SCALE
        inner = fig[top:top + H, left:left + W]
        np.testing.assert_array_equal(inner[::SCALE, ::SCALE], g)  # every grid pixel, scaled
        np.testing.assert_array_equal(inner[1::SCALE, 2::SCALE], g)
        assert fig[:top].min() < 128  # a title (dark text on white)
        if rows[name]:
            assert fig[top:top + H, :left - 4].min() < 128  # row labels in the left margin
    # cross generation: a label's ink sits at its row, not at the separators between blocks
    fig, g = figs["cross_generation"], raw["cross_generation"]
    top, left = labelled_origin([(0, t) for t in rows["cross_generation"]], [])
    block_h = span(2, 32)
    for b in range(2):
        for i in range(2):
            y = top + (b * (block_h + GAP) + PAD + i * 34 + 16) * SCALE
            assert fig[y - 6:y + 6, 4:left - 8].min() < 128, (b, i)


VOCAB = ["<exc>", "<pad>", "<eos>", "a", "thick", "seven", "slanting", "right", "small", "two"]


def test_wrap_fills_lines_greedily_and_marks_what_is_cut():
    from mvae_dist.eval.images import _wrap

    def fits(t):
        return len(t) <= 10

    assert _wrap("a thick seven".split(), fits, 3) == ["a thick", "seven"]
    assert _wrap("abcdefghijklmno".split(), fits, 3) == ["abcdefghij"]  # a too-long word is cut
    assert _wrap("aa bb cc dd ee ff gg hh ii".split(), fits, 2) == ["aa bb cc", "dd ee..."]
    assert _wrap([], fits, 2) == []


def test_sentence_cells_show_the_words_of_the_tokens():
    """A sentence modality given with its vocabulary is drawn as text: the same words give the
    same cell whatever follows "<eos>", other words another cell; cells are TEXT_LINES lines of
    TEXT_CELL_W pixels, and in a grid the input row shows exactly those cells."""
    from mvae_dist.eval.images import TEXT_CELL_W, TEXT_LINE_H, TEXT_LINES, _sentences

    seven = [3, 4, 5, 6, 7, 2] + [1] * 26  # "a thick seven slanting right" <eos> <pad>...
    tail = [3, 4, 5, 6, 7, 2, 9, 9] + [1] * 24
    two = [3, 8, 9, 2] + [1] * 28
    cells = _sentences(torch.tensor([seven, tail, two]), VOCAB)
    h = TEXT_LINES * TEXT_LINE_H
    assert cells.shape == (3, h, TEXT_CELL_W, 3) and cells.dtype == np.uint8
    np.testing.assert_array_equal(cells[0], cells[1])
    assert not np.array_equal(cells[0], cells[2])
    assert cells[0].max() > 200 and (cells[0] == 0).mean() > 0.5  # white (antialiased) text on black

    mods = ("mnist", "text:10")
    torch.manual_seed(0)
    model = build_model({"name": "mmvae", "modalities": list(mods), "latent_dim": 4})
    g = torch.Generator().manual_seed(1)
    xs = [torch.rand(N, 1, 28, 28, generator=g), torch.tensor([seven, two, tail, two])]
    rec = reconstruction_grid(model, xs, n=N, vocabs={1: VOCAB})
    text_x = span(N, 28) + GAP
    assert rec.shape == (span(2, h), text_x + span(N, TEXT_CELL_W), 3)
    for j in range(N):
        np.testing.assert_array_equal(cell(rec, 0, j, (h, TEXT_CELL_W), origin=(0, text_x)),
                                      _sentences(xs[1][j:j + 1], VOCAB)[0])
    # without the vocabulary the ids are bars, as any vector
    assert reconstruction_grid(model, xs, n=N).shape[0] == span(2, VECTOR_CELL_H)
