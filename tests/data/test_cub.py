"""CUB from the official MMVAE layout (sources/cub.py), on a tiny fixture written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mvae_dist.data import make_loader, prepare
from mvae_dist.data.text import decode
from mvae_dist.errors import ConfigError, DataError

COLOURS = ("red", "blue", "yellow")


def write_cub(root, n_per_class=(3, 2), features=True):
    """cub/{train,test}/<class>/*.jpg, the caption files (10 per image, in ImageFolder order) and
    resnet101_2048/{train,test}.ft: image k of class c has feature row [c, k, 0, ...] and captions
    "this <colour of c> bird number <k> ..." """
    from PIL import Image

    cub = root / "cub"
    for split, folder, text in (("train", "train", "text_trainvalclasses.txt"),
                                ("test", "test", "text_testclasses.txt")):
        rows, lines = [], []
        for c, name in enumerate(["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty"]):
            (cub / folder / name).mkdir(parents=True)
            for k in range(n_per_class[0] if split == "train" else n_per_class[1]):
                Image.new("RGB", (8, 8), (40 * c, 0, 0)).save(cub / folder / name / f"img_{k:02d}.jpg")
                rows.append([c, k] + [0.0] * 2046)
                lines += [f"this {COLOURS[c]} bird has a short beak {j}." for j in range(10)]
        (cub / text).write_text("\n".join(lines) + "\n")
        if features:
            (cub / "resnet101_2048").mkdir(exist_ok=True)
            torch.save(torch.tensor(rows, dtype=torch.float32), cub / "resnet101_2048" / f"{folder}.ft")
    return root


def test_cub_pairs_each_caption_with_its_own_image(tmp_path):
    src = write_cub(tmp_path / "src")
    out = str(tmp_path / "cub")
    manifest = prepare("cub", out, source=str(src), progress=False)
    mods = manifest["modalities"]
    assert [m["name"] for m in mods] == ["image", "caption"]
    assert mods[0]["shape"] == [2048] and mods[0]["dtype"] == "float32"
    assert mods[0]["bound"] == {"to": "caption", "per": 10}
    vocab = mods[1]["vocab"]
    assert vocab[:3] == ["<exc>", "<pad>", "<eos>"] and {"bird", "red", "beak", "."} <= set(vocab)
    assert manifest["splits"]["train"]["count"] == 90 and manifest["splits"]["test"]["count"] == 60
    for split in ("train", "test"):
        seen = 0
        for batch in make_loader(out, split, 16, shuffle=False, drop_last=False):
            img, cap = batch["xs"]
            assert img.dtype == torch.float32 and img.shape[1] == 2048 and cap.dtype == torch.int64
            assert torch.equal(batch["ids"][:, 0], batch["ids"][:, 1] // 10)  # caption j <- image j // 10
            for i in range(len(cap)):
                c = int(img[i, 0])
                words = decode(cap[i], vocab).split()
                assert words[:3] == ["this", COLOURS[c], "bird"] and int(batch["labels"][i, 0]) == c
            seen += len(cap)
        assert seen == manifest["splits"][split]["count"]
    # test captions use the training vocabulary: rare words ("1".."9" occur 9 times: kept) fine


def test_cub_bad_layouts_are_named(tmp_path):
    with pytest.raises(ConfigError, match="needs --source"):
        prepare("cub", str(tmp_path / "o1"), progress=False)
    with pytest.raises(DataError, match="CUB image folder not found"):
        prepare("cub", str(tmp_path / "o2"), source=str(tmp_path / "nowhere"), progress=False)
    src = write_cub(tmp_path / "short")
    text = src / "cub" / "text_testclasses.txt"
    text.write_text("\n".join(text.read_text().splitlines()[:-1]))
    with pytest.raises(DataError, match="59 captions for 6 images"):
        prepare("cub", str(tmp_path / "o3"), source=str(src), progress=False)
    src = write_cub(tmp_path / "nofeat", features=False)
    try:
        import torchvision  # noqa: F401
    except Exception:
        with pytest.raises(DataError, match="resnet101_2048"):
            prepare("cub", str(tmp_path / "o4"), source=str(src), progress=False)
    bad = write_cub(tmp_path / "badfeat")
    torch.save(torch.zeros(5, 2048), bad / "cub" / "resnet101_2048" / "test.ft")
    with pytest.raises(DataError, match=r"expected features \[6, 2048\]"):
        prepare("cub", str(tmp_path / "o5"), source=str(bad), progress=False)
    assert not (tmp_path / "o5" / "manifest.json").exists()


def test_the_vocabulary_comes_from_the_training_captions_only(tmp_path):
    src = write_cub(tmp_path / "src")
    text = src / "cub" / "text_testclasses.txt"
    text.write_text(text.read_text().replace("short", "zebra"))
    out = str(tmp_path / "cub")
    manifest = prepare("cub", out, source=str(src), progress=False)
    vocab = manifest["modalities"][1]["vocab"]
    assert "zebra" not in vocab and "short" in vocab
    batch = next(iter(make_loader(out, "test", 8, shuffle=False, drop_last=False)))
    assert all(decode(c, vocab).split()[5] == "<exc>" for c in batch["xs"][1])  # unknown word -> <exc>
    assert json.loads((tmp_path / "cub" / "manifest.json").read_text())["dataset"] == "cub"
    assert np.all(batch["labels"][:, 0].numpy() == batch["labels"][:, 1].numpy())


@pytest.mark.parametrize("name", ["mmvae", "jmvae"])
def test_a_shipped_cub_config_trains_on_the_prepared_set(tmp_path, name):
    from pathlib import Path

    from mvae_dist.config import load_train_config
    from mvae_dist.models import build_model
    from mvae_dist.objectives import training_loss

    out = str(tmp_path / "cub")
    manifest = prepare("cub", out, source=str(write_cub(tmp_path / "src")), progress=False)
    V = len(manifest["modalities"][1]["vocab"])
    cfg = load_train_config(str(Path(__file__).parents[2] / "configs" / "cub" / f"{name}-ci.yaml"),
                            [f"data.url={out}", f"model.modalities=[vector:2048,text:{V}]", "objective.K=2",
                             "model.latent_dim=8", "model.hidden=32"])
    assert cfg.objective.name == "contrastive" and cfg.data.batch_size == 64
    torch.manual_seed(0)
    model = build_model(cfg.model)
    batch = next(iter(make_loader(out, "train", 16)))
    loss, stats = training_loss(model, batch["xs"], objective="contrastive", K=cfg.objective.K, N=3,
                                looser=cfg.objective.looser)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                        if p.grad is not None)
