"""mvae-dist: contrastive multimodal generative models (Shi et al., ICLR 2021) at scale."""

__version__ = "0.1.0"
