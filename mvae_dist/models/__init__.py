"""Multimodal VAEs (MMVAE, MVAE, JMVAE), modalities and the paper's networks (pure PyTorch)."""

from .base import MultimodalVAE, PassState
from .builders import build_model, mnist_modality, sentence_modality, svhn_modality, vector_modality
from .jmvae import JMVAE, ConcatJointEncoder
from .mmvae import MMVAE
from .modality import Modality
from .mvae import MVAE

__all__ = [
    "JMVAE", "MMVAE", "MVAE", "ConcatJointEncoder", "Modality", "MultimodalVAE", "PassState",
    "build_model", "mnist_modality", "sentence_modality", "svhn_modality", "vector_modality",
]
