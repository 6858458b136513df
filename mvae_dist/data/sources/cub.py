"""CUB image–caption pairs in the layout the official MMVAE CUB code reads.

Under ``--source DIR``::

    DIR/cub/train/<class>/<image>.jpg        images of the training classes (torchvision
    DIR/cub/test/<class>/<image>.jpg         ImageFolder order: classes sorted, files sorted)
    DIR/cub/text_trainvalclasses.txt         ten captions per image, in image order, one per line
    DIR/cub/text_testclasses.txt
    DIR/cub/resnet101_2048/train.ft          optional: torch.save'd float features [N_images, 2048]
    DIR/cub/resnet101_2048/test.ft           (the official code's cache of ResNet-101 features)

The split is the official one (the MMVAE code's train / test folders and their text files).
Caption j belongs to image j // 10 (the official ``resampler``), so the data set has one pair
per caption. The image modality is its 2048-d ResNet-101 feature vector (float32): read from
the ``.ft`` files when they exist, else computed with torchvision's ResNet-101 (ImageNet weights,
224-pixel images as the official code) when torchvision imports and its weights are already in
the torch hub cache; nothing is downloaded. The vocabulary is built from the training captions
(data/text.py: the official special tokens, words occurring more than 3 times).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mvae_dist.errors import DataError

CAPTIONS_PER_IMAGE = 10
FEATURE_DIM = 2048
SPLITS = {"train": ("train", "text_trainvalclasses.txt"), "test": ("test", "text_testclasses.txt")}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_list(directory: Path) -> tuple[list[Path], np.ndarray]:
    """ImageFolder order: (image paths, class index int64 [N]) of ``directory/<class>/<image>``."""
    if not directory.is_dir():
        raise DataError(f"CUB image folder not found: {directory}")
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir())
    paths, labels = [], []
    for c, name in enumerate(classes):
        files = sorted(p for p in (directory / name).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        paths += files
        labels += [c] * len(files)
    if not paths:
        raise DataError(f"no images under {directory}/<class>/")
    return paths, np.asarray(labels, np.int64)


def read_captions(path: Path) -> list[str]:
    """The non-empty lines of a caption file."""
    if not path.is_file():
        raise DataError(f"CUB caption file not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_features(path: Path, n_images: int) -> np.ndarray:
    """float32 [n_images, 2048] from an official ``.ft`` file; DataError naming a wrong shape."""
    import torch

    try:
        ft = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot read CUB features {path}: {type(exc).__name__}: {exc}") from exc
    arr = np.asarray(ft.float().numpy() if hasattr(ft, "numpy") else ft, np.float32)
    if arr.shape != (n_images, FEATURE_DIM):
        raise DataError(f"{path}: expected features [{n_images}, {FEATURE_DIM}] (one per image), "
                        f"got {list(arr.shape)}")
    return arr


def compute_features(paths: list[Path]) -> np.ndarray:
    """ResNet-101 pool features [N, 2048] of images resized to 224 (torchvision, cached weights)."""
    try:
        import torch
        from PIL import Image
        from torchvision import models, transforms
    except Exception as exc:
        raise DataError("no resnet101_2048/*.ft features and torchvision does not import "
                        f"({type(exc).__name__}); give the official features files "
                        "(cub/resnet101_2048/{train,test}.ft)") from None
    # the weights only from the torch hub cache: torchvision would download them, and nothing is
    # downloaded here
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(models.ResNet101_Weights.IMAGENET1K_V1.url).name
    if not cached.is_file():
        raise DataError(f"ResNet-101 weights are not in the torch hub cache ({cached}); give the official "
                        "features files (cub/resnet101_2048/{train,test}.ft)")
    net = models.resnet101()
    net.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    net.fc = torch.nn.Identity()
    net.eval()
    tx = transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor()])
    out = []
    with torch.no_grad():
        for a in range(0, len(paths), 64):
            batch = torch.stack([tx(Image.open(p).convert("RGB")) for p in paths[a:a + 64]])
            out.append(net(batch).numpy())
    return np.concatenate(out).astype(np.float32)


def load_cub_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features float32 [N_img, 2048], labels int64 [N_img], captions [10 N_img]) of a split."""
    folder, text = SPLITS[split]
    paths, labels = image_list(root / "cub" / folder)
    captions = read_captions(root / "cub" / text)
    if len(captions) != CAPTIONS_PER_IMAGE * len(paths):
        raise DataError(f"{root / 'cub' / text}: {len(captions)} captions for {len(paths)} images "
                        f"(expected {CAPTIONS_PER_IMAGE} per image, in image order)")
    ft = root / "cub" / "resnet101_2048" / f"{folder}.ft"
    features = read_features(ft, len(paths)) if ft.is_file() else compute_features(paths)
    return features, labels, captions
