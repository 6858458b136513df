"""The trained model as an MLflow model: ``mlflow.pytorch`` loads the VAE, ``mlflow.pyfunc`` serves it.

Every finished run logs one MLflow model (MLflow 3: a *logged model* linked to the run, ``runs:/ID/model``)
with two flavours over the same files:

- ``pytorch``: ``mlflow.pytorch.load_model(uri)`` returns the :class:`~mvae_dist.models.base.MultimodalVAE`
  (the whole module, pickled by MLflow; ``mvae_dist`` must be importable where it is loaded);
- ``python_function`` with this module as its loader: ``mlflow.pyfunc.load_model(uri).predict(df)``
  and ``mlflow models serve`` answer with what a service of a multimodal VAE is for.

``predict`` takes a DataFrame with one column per modality (any subset; a missing column or a null
cell = not given) whose cells are one sample each, flat (``prod(event)`` numbers) or shaped
``event``; images are floats in [0, 1], sentences token ids. One output row per input row:

- ``z_<m>``: the mean of q(z | x_m) ([L] floats) for every given modality m;
- ``<n>_from_<m>``: x_n generated from that mean (``decode_mean``, flat) for every other modality n;
- ``pmi``: where every modality is given, PMI(x_1..M) = log p(x_1..M) - Σ_m log p(x_m) by IWAE with
  ``pmi_K`` samples (a param, default 30; noise seeded by the param ``seed``, default 0, so an answer
  is reproducible): the relatedness of the tuple. NaN for rows that lack a modality.

The model folder also holds ``config.yaml`` (the redacted resolved training config), which
``trained.load_run_model`` reads back. Glue at the edge: imports mlflow and pandas.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch import Tensor

from .models.base import MultimodalVAE

CONFIG_FILE = "config.yaml"
#: the name of the run's model (``runs:/ID/model``)
MODEL_NAME = "model"
#: PMI's importance samples when a request does not say
DEFAULT_PMI_K = 30


# ----------------------------------------------------------------------------- pure core
def event_shapes(names: list[str], config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Modality name -> event shape: ``names`` (the model's) against the specs of the resolved
    config's ``model.modalities`` (the same order)."""
    from .models.builders import event_shape

    specs = list(config.get("model", config)["modalities"])
    return {n: event_shape(s) for n, s in zip(names, specs, strict=True)}


def to_rows(values: Any, shape: tuple[int, ...], name: str) -> Tensor:
    """One column's cells (a sequence of samples, each flat or shaped ``shape``) -> [B, *shape]."""
    try:
        arr = np.stack([np.asarray(v, dtype=np.float32).reshape(shape) for v in values])
    except ValueError as e:
        raise ValueError(f"modality {name!r}: each sample must hold {math.prod(shape)} numbers "
                         f"(event shape {list(shape)}): {e}") from None
    return torch.from_numpy(arr)


def given_mask(df: pd.DataFrame, names: list[str]) -> np.ndarray:
    """[B, M] bool: which modality each row gives (a present column with a non-null cell)."""
    cols = []
    for n in names:
        if n in df.columns:
            cols.append(np.array([_is_given(v) for v in df[n]], dtype=bool))
        else:
            cols.append(np.zeros(len(df), dtype=bool))
    return np.stack(cols, axis=1) if cols else np.zeros((len(df), 0), dtype=bool)


def _is_given(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and math.isnan(v):
        return False
    return True


def predict_rows(model: MultimodalVAE, xs: dict[int, Tensor], *, pmi_K: int, seed: int
                 ) -> dict[str, Any]:
    """Answers for B rows that all give the modalities ``xs`` (index -> [B, *event_m]):
    ``z_<m>`` [B, L], ``<n>_from_<m>`` [B, *event_n], and ``pmi`` [B] where every modality is given."""
    from .eval.pmi import pmi

    names = model.names
    out: dict[str, Any] = {}
    with torch.no_grad():
        for m, x in xs.items():
            loc, _ = model.unimodal_posterior(x, m)
            out[f"z_{names[m]}"] = loc
            for n in range(model.M):
                if n != m:
                    out[f"{names[n]}_from_{names[m]}"] = model.decode_mean(n, loc)
        if len(xs) == model.M:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out["pmi"] = pmi(model, [xs[m] for m in range(model.M)], pmi_K)
    return out


class MultimodalService:
    """What ``mlflow.pyfunc.load_model`` returns for a run's model (see the module docstring)."""

    def __init__(self, model: MultimodalVAE, config: dict[str, Any], device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.device = device
        self.shapes = event_shapes(list(model.names), config)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """DataFrame (or dict of columns) of modalities -> DataFrame of answers, one row per row."""
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(dict(model_input))
        params = params or {}
        pmi_K = int(params.get("pmi_K", DEFAULT_PMI_K))
        seed = int(params.get("seed", 0))
        if pmi_K < 1:
            raise ValueError(f"pmi_K must be >= 1, got {pmi_K}")
        names = list(self.model.names)
        unknown = [c for c in df.columns if c not in names]
        if unknown:
            raise ValueError(f"unknown modality column(s) {unknown}; this model has {names}")
        mask = given_mask(df, names)
        if len(df) and not mask.any(axis=1).all():
            raise ValueError(f"every row must give at least one modality of {names}")
        result = pd.DataFrame(index=df.index)
        answers: dict[str, list[Any]] = {}
        for pattern in np.unique(mask, axis=0):
            rows = np.flatnonzero((mask == pattern).all(axis=1))
            xs = {m: to_rows(df[names[m]].iloc[rows], self.shapes[names[m]], names[m]).to(self.device)
                  for m in range(len(names)) if pattern[m]}
            got = predict_rows(self.model, xs, pmi_K=pmi_K, seed=seed)
            for key, value in got.items():
                col = answers.setdefault(key, [None] * len(df))
                flat = value.detach().cpu().reshape(len(rows), -1).numpy()
                for i, r in enumerate(rows):
                    col[r] = float(flat[i, 0]) if key == "pmi" else flat[i]
        for key in _column_order(names):
            if key in answers:
                result[key] = answers[key]
        if "pmi" in result.columns:
            result["pmi"] = result["pmi"].astype(float)
        return result


def _column_order(names: list[str]) -> list[str]:
    keys = [f"z_{n}" for n in names]
    keys += [f"{t}_from_{s}" for s in names for t in names if t != s]
    return keys + ["pmi"]


def input_example(model: MultimodalVAE, n: int = 2, seed: int = 0) -> pd.DataFrame:
    """``n`` rows of every modality decoded from prior samples: a realistic request that needs no data."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = model.sample_prior(n, generator=g).to(next(model.parameters()).device)
        # float64: a JSON request's numbers are doubles, which MLflow will not narrow to float32
        cols = {name: [row.cpu().double().numpy().reshape(-1) for row in model.decode_mean(m, z)]
                for m, name in enumerate(model.names)}
    return pd.DataFrame(cols)


# ----------------------------------------------------------------------------- MLflow flavour
def signature_of(model: MultimodalVAE, config: dict[str, Any], example: pd.DataFrame) -> Any:
    """The signature: every modality column optional (a 1-D array per row), the answers likewise,
    params ``pmi_K`` and ``seed``."""
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, Schema

    service = MultimodalService(model, config, str(next(model.parameters()).device))
    answer = service.predict(example, {"pmi_K": 2})
    sig = infer_signature(example, answer, params={"pmi_K": DEFAULT_PMI_K, "seed": 0})
    sig.inputs = Schema([ColSpec(c.type, c.name, required=False) for c in sig.inputs.inputs])
    sig.outputs = Schema([ColSpec(c.type, c.name, required=False) for c in sig.outputs.inputs])
    return sig


def pip_requirements() -> list[str]:
    """What a serving environment installs: this package (its own dependencies follow), torch and
    mlflow at the versions that logged the model."""
    import mlflow

    from . import __version__

    return [f"mvae-dist=={__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}"]


def save_model(path: str, mlflow_model: Any = None, *, model: MultimodalVAE, config: dict[str, Any],
               **kwargs: Any) -> None:
    """MLflow's flavour protocol (``mlflow.models.Model.log(flavor=this module, ...)``): the model
    in ``mlflow.pytorch``'s format, its pyfunc flavour loaded by :func:`_load_pyfunc`, and
    ``config.yaml``. ``kwargs``: MLflow's (``signature``, ``input_example``, ``pip_requirements``)."""
    import mlflow.pytorch
    from mlflow.models import Model

    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    quiet, log = _DropPickleWarning(), logging.getLogger("mlflow.pytorch")
    log.addFilter(quiet)
    try:  # pickle, not MLflow's default "pt2" (a graph traced through forward(): the service
        # needs the whole module, its encoders, decoders and PMI, not one traced call)
        mlflow.pytorch.save_model(model, path, mlflow_model=mlflow_model, serialization_format="pickle",
                                  **kwargs)
    finally:
        log.removeFilter(quiet)
    mlflow_model.flavors["python_function"]["loader_module"] = __name__
    mlflow_model.save(str(Path(path) / "MLmodel"))
    (Path(path) / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))


class _DropPickleWarning(logging.Filter):
    """MLflow warns at every pickled save; the choice is deliberate (above) and said in the docs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Pickle or CloudPickle" not in record.getMessage()


def load_model_dir(root: str | Path, device: str = "cpu") -> tuple[MultimodalVAE, dict[str, Any]]:
    """A model folder this flavour saved (local) -> (the VAE on ``device``, its config.yaml)."""
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(str(root), map_location=device)
    return model, yaml.safe_load((Path(root) / CONFIG_FILE).read_text()) or {}


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> MultimodalService:
    """MLflow's pyfunc loader: ``data_path`` is the pytorch flavour's ``data`` folder of the model."""
    device = (model_config or {}).get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    model, config = load_model_dir(Path(data_path).parent, device)
    return MultimodalService(model, config, device)


__all__ = ["CONFIG_FILE", "DEFAULT_PMI_K", "MODEL_NAME", "MultimodalService", "event_shapes",
           "input_example", "load_model_dir", "pip_requirements", "predict_rows", "save_model",
           "signature_of"]
