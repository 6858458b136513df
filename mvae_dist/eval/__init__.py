"""Evaluation: PMI and (later) the paper's metrics."""

from .pmi import pmi

__all__ = ["pmi"]
