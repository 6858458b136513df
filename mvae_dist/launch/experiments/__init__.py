"""The paper's studies as commands (``mvae-dist experiment ...``) and the demo (``mvae-dist demo``)."""

from .demo import demo
from .studies import data_efficiency, gamma_ablation, label_propagation

__all__ = ["data_efficiency", "demo", "gamma_ablation", "label_propagation"]
