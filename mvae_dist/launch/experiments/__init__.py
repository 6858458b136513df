"""The paper's studies as commands (``mvae-dist experiment ...``) and the demo (``mvae-dist demo``).

The names are imported on first use (PEP 562): ``experiments.curve`` (``mvae-dist bench learn``)
then loads without the studies' MLflow and Ray glue, e.g. on an accelerator machine that has
torch but not MLflow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["data_efficiency", "demo", "gamma_ablation", "label_propagation"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name == "demo":
        from .demo import demo as value  # importing the submodule binds `demo` to it: rebind below
    else:
        from . import studies

        value = getattr(studies, name)
    globals()[name] = value
    return value
