"""Sentences (data/text.py), the synthetic MNIST captions and the M = 3 embedded-text set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mvae_dist.data import make_loader, prepare
from mvae_dist.data.sources import captions
from mvae_dist.data.text import build_vocab, decode, encode, tokenize
from mvae_dist.errors import ConfigError


def test_vocab_follows_the_official_conventions():
    sents = [tokenize(s) for s in ["A red bird.", "a red bird, small", "a red bird", "a red BIRD!", "one"]]
    assert sents[1] == ["a", "red", "bird", ",", "small"]
    vocab = build_vocab(sents, min_occ=3)  # more than 3 occurrences: a, red, bird
    assert vocab == ["<exc>", "<pad>", "<eos>", "a", "red", "bird"]
    ids = encode([["a", "blue", "bird"], ["bird"] * 40], vocab, max_len=32)
    assert ids.dtype == np.uint16 and ids.shape == (2, 32)
    assert ids[0, :5].tolist() == [3, 0, 5, 2, 1]  # unknown word -> <exc> 0, then <eos>, <pad>
    assert ids[1, 31] == 2 and (ids[1, :31] == 5).all()  # cut to 31 words, <eos> kept
    assert decode(ids[0], vocab) == "a <exc> bird"
    assert decode([3, 4, 2, 5, 5], vocab) == "a red"  # read up to the first <eos>


def _stroke(width: int, slant: int) -> np.ndarray:
    """A 28x28 vertical bar of ``width`` pixels whose top is shifted right by ``slant`` pixels."""
    img = np.zeros((28, 28), np.uint8)
    for r in range(4, 24):
        c = 12 + round(slant * (23 - r) / 19)
        img[r, c:c + width] = 255
    return img


def test_attributes_measure_size_thickness_and_slant():
    a = captions.attributes(np.stack([_stroke(1, 0), _stroke(4, 0), _stroke(2, 6), _stroke(2, -6)]))
    size, thick, slant = a.T
    assert thick[1] > 1.5 * thick[0]  # a 4-px stroke is thicker than a 1-px one
    assert slant[2] > 0.2 and slant[3] < -0.2 and abs(slant[0]) < 1e-9  # right, left, upright
    assert size[2] > size[0]  # the slanted stroke's bounding box is wider
    assert captions.attributes(np.zeros((1, 28, 28), np.uint8)).tolist() == [[0.0, 0.0, 0.0]]


def test_captions_use_per_class_terciles_of_the_training_split():
    imgs = np.stack([_stroke(w, s) for w in (1, 2, 4) for s in (-6, 0, 6)])
    labels = np.full(len(imgs), 7)
    caps, cuts = captions.captions(imgs, labels)
    assert set(cuts) == {7} and cuts[7].shape == (2, 3)
    joined = [" ".join(c) for c in caps]
    assert all(c.startswith("a ") and " seven " in c for c in joined)
    assert "thin" in joined[0] and "thick" in joined[8]  # thinnest / thickest stroke
    assert joined[0].endswith("slanting left") and joined[2].endswith("slanting right")
    # the test split reuses the training cut points
    caps_test, _ = captions.captions(imgs[:1], np.array([7]), cuts)
    assert caps_test[0] == caps[0]


def test_embedded_text_has_three_modalities_and_each_caption_describes_its_own_digit(embedded_text_data):
    text_set = embedded_text_data
    manifest = json.loads(open(f"{text_set}/manifest.json").read())
    cap = manifest["modalities"][2]
    assert cap["name"] == "caption" and cap["dtype"] == "uint16" and cap["shape"] == [32]
    assert cap["synthetic"] and cap["bound"] == {"to": "mnist", "per": 1}
    assert "caption" in manifest["synthetic"]
    vocab = cap["vocab"]
    assert vocab[:3] == ["<exc>", "<pad>", "<eos>"] and {"seven", "thick", "slanting"} <= set(vocab)
    batch = next(iter(make_loader(text_set, "train", 64)))
    tokens = batch["xs"][2]
    assert tokens.dtype == torch.int64 and tokens.shape == (64, 32)
    assert torch.equal(batch["ids"][:, 2], batch["ids"][:, 0])  # the caption of that MNIST image
    assert bool((batch["labels"] == batch["labels"][:, :1]).all())
    for i in range(64):
        words = decode(tokens[i], vocab).split()
        assert words[0] == "a" and captions.DIGIT_WORDS[int(batch["labels"][i, 0])] in words


def test_embedded_text_takes_no_source(tmp_path):
    with pytest.raises(ConfigError, match="takes no --source"):
        prepare("embedded-text", str(tmp_path / "x"), source="/nowhere", progress=False)
