"""MLflow tracking for training jobs: one run per job, logged from rank 0 only.

With serving.py (the model's MLflow flavour), the only module that imports mlflow. Everything goes
through an ``mlflow.MlflowClient`` bound to an explicit tracking URI and an explicit run id — never
the fluent API's process-global active-run stack — so a run can be resumed by id from a fresh
process (a restarted Ray worker) and child runs of a sweep can be open at the same time as their parent.

Defaults: tracking URI = env ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``;
for a sqlite store the artifacts go to ``file://<directory of the db>/mlartifacts`` (so the
default is ``<cwd>/mlartifacts``); for a tracking server the server's default artifact root.

Choices:
- Params are the resolved config flattened to dotted keys (``model.latent_dim``), values as
  strings (lists/tuples as JSON). Keys that look like credentials are never logged (a key path
  component equal to ``key`` or ending in ``_key``, or containing ``storage_options``, ``secret``,
  ``password``, ``passwd``, ``token``, ``credential``), and ``user:password@`` in URLs is
  redacted. The same filter applies to the config stored with the model and as ``config.yaml``.
- Non-finite metric values are dropped (MLflow stores them, but its charts and ``max``/``min``
  comparisons break on them); each dropped value is counted and the running total for the run
  is logged as the metric ``nonfinite_metrics`` at the step where it changed (it continues
  across a resume). Skipping a non-finite *training step* is the trainer's job.
- Resuming (``start(run_id=...)``) reopens the run as RUNNING. Params already present keep their
  values (MLflow forbids changing a param); new keys are added; keys whose value changed are
  listed in the artifact ``resume/params_changed_<n>.json`` and the tag ``resume_count`` counts
  resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shlex
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

import mlflow
import numpy as np
import torch
import yaml
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from torch import nn

from .config import JOB_OUTPUT_ROOT, ray_job_working_dir
from .errors import ConfigError
from .eval.images import save_png
from .models import build_model

T = TypeVar("T")

DEFAULT_EXPERIMENT = "mvae-dist"
#: artifact file listing every checkpoint URI the run reported
CHECKPOINTS_FILE = "checkpoints.json"
#: an elastic run's resizes: {"resizes": [{"step", "from", "to", "checkpoint", "time"}, ...]}
RESIZES_FILE = "resizes.json"
#: tag a training worker sets when it gives up (non-finite losses): the reason, one line
FAILURE_TAG = "failure"
#: metric holding the running count of dropped non-finite metric values
NONFINITE_METRIC = "nonfinite_metrics"

_MAX_PARAM_LEN = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_SENSITIVE_PARTS = ("storage_options", "secret", "password", "passwd", "token", "credential",
                    "access_key", "api_key", "apikey", "private_key", "session_key")
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")

Status = Literal["FINISHED", "FAILED", "KILLED"]


# ------------------------------------------------------------------------------ defaults
def default_tracking_uri() -> str:
    """env MLFLOW_TRACKING_URI if set, else ``sqlite:///<abs cwd>/mlflow.db``; in a Ray job's
    temporary working directory (lost with the job) ``sqlite:///<home>/mvae-dist/mlflow.db``."""

    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    base = Path(os.path.expanduser(JOB_OUTPUT_ROOT)) if ray_job_working_dir() else Path.cwd()
    return f"sqlite:///{base.resolve() / 'mlflow.db'}"


def default_artifact_root(tracking_uri: str) -> str | None:
    """Where new experiments keep artifacts: next to a sqlite db (``file://<db dir>/mlartifacts``);
    None (the server's / store's own default) for any other store."""
    db = _sqlite_path(tracking_uri)
    if db is None:
        return None
    return (db.parent / "mlartifacts").as_uri()


def ui_command(tracking_uri: str | None = None, port: int = 5000) -> str:
    """The shell command that opens the MLflow UI on the runs of ``tracking_uri``.

    sqlite store: ``mlflow ui --backend-store-uri sqlite:////abs/mlflow.db --default-artifact-root
    file:///abs/mlartifacts --port 5000``; a tracking server: open its URL in a browser.
    """
    uri = tracking_uri or default_tracking_uri()
    if urlparse(uri).scheme in ("http", "https"):
        return f"python -m webbrowser -t {shlex.quote(uri)}"
    cmd = ["mlflow", "ui", "--backend-store-uri", uri]
    root = default_artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    cmd += ["--port", str(port)]
    return " ".join(shlex.quote(c) for c in cmd)


#: tracking servers this process has reached (probed once each)
_REACHED: set[str] = set()


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """ConfigError (one line) when ``tracking_uri`` is an HTTP(S) tracking server that does not
    answer within ``timeout`` seconds; any HTTP answer counts as reachable. Without this,
    MLflow's client retries a dead server for minutes before it raises. Other stores: no-op."""
    import urllib.error
    import urllib.request


    parts = urlparse(tracking_uri)
    if parts.scheme not in ("http", "https") or tracking_uri in _REACHED:
        return
    netloc = parts.netloc.rsplit("@", 1)[-1]  # no credentials in the probe
    probe = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/health"
    try:
        urllib.request.urlopen(probe, timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # the server answered (e.g. 401/403/404): reachable
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(f"cannot reach the MLflow tracking server at {redact_text(tracking_uri)}: "
                          f"{reason}") from None
    _REACHED.add(tracking_uri)  # once per process: studies build a Tracker per arm


def _existing_store(tracking_uri: str) -> None:
    """ConfigError when a sqlite store does not exist (reading must not create one); an HTTP
    server must answer (``check_reachable``)."""

    db = _sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        raise ConfigError(f"no MLflow tracking database at {db}")
    check_reachable(tracking_uri)


# -------------------------------------------------------------------- config -> params
def is_sensitive_key(key: str) -> bool:
    """True if a config key (one path component) looks like a credential."""
    k = key.lower().replace("-", "_")
    return k == "key" or k.endswith("_key") or any(s in k for s in _SENSITIVE_PARTS)


def redact_text(value: str) -> str:
    """Remove ``user:password@`` from every URL in ``value``."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", value)


def redact_config(config: Any) -> Any:
    """A plain (dict/list/scalar) copy of a config mapping or dataclass without credential keys,
    URL passwords redacted."""
    config = _plain(config)
    if isinstance(config, dict):
        return {str(k): redact_config(v) for k, v in config.items() if not is_sensitive_key(str(k))}
    if isinstance(config, list):
        return [redact_config(v) for v in config]
    if isinstance(config, str):
        return redact_text(config)
    return config


def flatten_params(config: Any, prefix: str = "") -> dict[str, str]:
    """Nested config (mapping or dataclass) -> {dotted key: string value}, credentials removed.

    Lists and tuples become JSON (``["mnist", "svhn"]``); None becomes ``None``; an empty
    mapping becomes ``{}``. Values longer than MLflow's limit are truncated with ``...``.
    """
    out: dict[str, str] = {}
    config = redact_config(config)
    if not isinstance(config, dict):
        raise TypeError(f"params must be a mapping or a dataclass, got {type(config).__name__}")

    def walk(node: dict, pre: str) -> None:
        for k, v in node.items():
            key = f"{pre}{k}"
            if isinstance(v, dict) and v:
                walk(v, key + ".")
            else:
                out[key] = _param_value(v)

    walk(config, prefix)
    return out


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    elif hasattr(obj, "model_dump") and not isinstance(obj, type):  # a config Section (pydantic)
        obj = obj.model_dump()
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _param_value(v: Any) -> str:
    if isinstance(v, dict):
        s = "{}"
    elif isinstance(v, list):
        s = json.dumps(v, default=str)
    else:
        s = str(v)
    if len(s) > _MAX_PARAM_LEN:
        s = s[: _MAX_PARAM_LEN - 3] + "..."
    return s


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class RunRecord:
    """What ``find_runs`` returns for one run (last metric values; params and tags as strings)."""

    run_id: str
    run_name: str
    status: str
    experiment_id: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def parent_run_id(self) -> str | None:
        return self.tags.get("mlflow.parentRunId")


#: MLflow 3's UI opens an experiment by this tag's kind; without it, an experiment with no traces
#: opens in the GenAI view ("Evaluations", "Agent versions"). Ours are model-training experiments.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def find_runs(experiment: str = DEFAULT_EXPERIMENT, filter_string: str = "",
              tracking_uri: str | None = None, order_by: list[str] | None = None,
              max_results: int = 1000) -> list[RunRecord]:
    """Runs of ``experiment`` (by name) matching an MLflow ``filter_string`` (e.g.
    ``"tags.mlflow.parentRunId = '<id>'"`` or ``"params.model.name = 'mmvae'"``), newest first.
    An unknown experiment gives []; a tracking server that does not answer, one ConfigError."""
    uri = tracking_uri or default_tracking_uri()
    check_reachable(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=filter_string,
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=max_results,
                              order_by=order_by or ["attributes.start_time DESC"])
    return [_record(r) for r in runs]


def serialized(tracking_uri: str, fn: Callable[[], T]) -> T:
    """``fn()`` (a first use of a tracking store) holding an exclusive lock on a sqlite store's
    directory: two processes creating the same fresh sqlite store at once run MLflow's schema
    migrations over each other ("table _alembic_tmp_... already exists", "duplicate column name"),
    which fails one of them and can leave the store half-migrated. Other stores: just ``fn()``."""
    path = _sqlite_path(tracking_uri)
    if path is None or not path.parent.is_dir():
        return fn()
    import fcntl

    fd = os.open(path.parent, os.O_RDONLY)  # a lock on the directory leaves no file behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fn()
    finally:
        os.close(fd)  # releases the lock


def get_run(run_id: str, tracking_uri: str | None = None) -> RunRecord:
    """The run ``run_id``; an unknown id is a ConfigError naming it and the store."""

    uri = tracking_uri or default_tracking_uri()
    _existing_store(uri)
    try:
        return _record(mlflow.MlflowClient(tracking_uri=uri).get_run(run_id))
    except MlflowException:
        raise ConfigError(f"no MLflow run {run_id!r} in the tracking store {redact_text(uri)}") from None


def run_has_artifact(run_id: str, path: str, tracking_uri: str | None = None) -> bool:
    """True when run ``run_id`` logged the artifact file ``path`` (e.g. ``model/state_dict.pt``)."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    folder = path.rsplit("/", 1)[0] if "/" in path else None
    try:
        return any(a.path == path for a in client.list_artifacts(run_id, folder))
    except (MlflowException, OSError):
        return False


def _record(r: Any) -> RunRecord:
    i = r.info
    return RunRecord(i.run_id, i.run_name, i.status, i.experiment_id, i.start_time, i.end_time,
                     i.artifact_uri, dict(r.data.params), dict(r.data.metrics), dict(r.data.tags))


# ----------------------------------------------------------------------------- tracker
class Tracker:
    """One MLflow run of a training job, used from rank 0 only.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:////abs/mlflow.db``, ``http://host:5000``);
            None: ``default_tracking_uri()``.
        experiment: experiment name; created on first use (with ``artifact_root``).
        artifact_root: artifact location of a NEW experiment; None: ``default_artifact_root``.
            An existing experiment keeps its own location.

    ``with Tracker(...) as t: t.start(...); ...`` ends the run FINISHED, or FAILED on an
    exception (KILLED on KeyboardInterrupt).
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                 artifact_root: str | None = None) -> None:
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.experiment = experiment
        self.artifact_root = artifact_root or default_artifact_root(self.tracking_uri)
        db = _sqlite_path(self.tracking_uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        check_reachable(self.tracking_uri)
        self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment_id = self._experiment_id()
        self.run_id: str | None = None
        self._checkpoints: list[dict[str, Any]] | None = None
        self._nonfinite = 0

    # ----------------------------------------------------------------- run lifecycle
    def start(self, run_name: str | None, params: Any = None, tags: Mapping[str, Any] | None = None,
              parent_run_id: str | None = None, run_id: str | None = None) -> str:
        """Open a run and log ``params`` (nested config) -> its run id.

        run_id: resume that run (e.g. after a Ray worker restart): it is set RUNNING again and
        metrics, checkpoints and artifacts continue in it. parent_run_id: make a child run of
        a sweep / experiment (tag ``mlflow.parentRunId``). Also logs the redacted config as the
        artifact ``config.yaml`` for a new run.
        """
        if self.run_id is not None:
            raise RuntimeError(f"this tracker already has run {self.run_id} open; end() it first")
        flat = flatten_params(params or {})
        tag_map = {str(k): redact_text(str(v)) for k, v in (tags or {}).items()}
        if run_id is not None:
            self._resume(run_id, run_name, flat, tag_map, parent_run_id)
            return run_id
        if parent_run_id is not None:
            self.client.get_run(parent_run_id)  # fail early, naming a missing parent
            tag_map["mlflow.parentRunId"] = parent_run_id
        tag_map.setdefault("mlflow.user", _user())
        run = self.client.create_run(self.experiment_id, tags=tag_map, run_name=run_name)
        self.run_id = run.info.run_id
        self._checkpoints, self._nonfinite = [], 0
        self._log_params(flat)
        if params:
            self.client.log_dict(self.run_id, redact_config(params), "config.yaml")
        return self.run_id

    def continue_run(self, run_id: str) -> str:
        """Reopen an existing run as RUNNING to log more into it, without counting a resume: a
        Ray Train worker group (fresh or restarted) continuing the driver's run, or an evaluation
        of a finished run. Its params and tags stay as they are. -> run_id."""
        run = self._bind(run_id)
        self._nonfinite = int(run.data.metrics.get(NONFINITE_METRIC, 0))
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def attach(self, run_id: str) -> str:
        """Bind to an existing run without resuming it: its status, tags and params stay as they
        are (e.g. to tag and end a sweep trial's run from the driver). -> run_id."""
        self._bind(run_id)
        return run_id

    def _bind(self, run_id: str) -> Any:
        """Make ``run_id`` this tracker's run -> the MLflow run (MlflowException if unknown)."""
        if self.run_id is not None:
            raise RuntimeError(f"this tracker already has run {self.run_id} open; end() it first")
        run = self.client.get_run(run_id)
        self.run_id, self.experiment_id = run_id, run.info.experiment_id
        self._checkpoints = None
        return run

    def _resume(self, run_id: str, run_name: str | None, flat: dict[str, str], tags: dict[str, str],
                parent_run_id: str | None) -> None:
        run = self.client.get_run(run_id)  # raises MlflowException for an unknown id
        have_parent = run.data.tags.get("mlflow.parentRunId")
        if parent_run_id is not None and have_parent != parent_run_id:
            raise ValueError(f"run {run_id} has parent {have_parent!r}, not {parent_run_id!r}")
        self.run_id = run_id
        self.experiment_id = run.info.experiment_id
        self._checkpoints = None  # read back lazily from the run's artifacts
        self._nonfinite = int(run.data.metrics.get(NONFINITE_METRIC, 0))
        self.client.update_run(run_id, status="RUNNING", name=run_name or None)
        old = run.data.params
        changed = {k: {"logged": old[k], "now": v} for k, v in flat.items() if k in old and old[k] != v}
        self._log_params({k: v for k, v in flat.items() if k not in old})
        count = int(run.data.tags.get("resume_count", "0")) + 1
        tags = {**tags, "resume_count": str(count)}
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if changed:
            warnings.warn(f"resumed run {run_id}: params keep their first values; changed: "
                          f"{', '.join(sorted(changed))}", stacklevel=3)
            self.client.log_dict(run_id, changed, f"resume/params_changed_{count}.json")

    def end(self, status: Status = "FINISHED") -> None:
        """Close the run with ``status``; a no-op when no run is open."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
        if self.run_id is None:
            return
        self.client.set_terminated(self.run_id, status=status)
        self.run_id = None

    def logged_since(self, key: str, since: float) -> bool:
        """True when the open run has a value of metric ``key`` logged at or after ``since``
        (``time.time()`` seconds)."""
        history = self.client.get_metric_history(self._need_run(), key)
        return any(m.timestamp >= since * 1000 for m in history)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")

    # ------------------------------------------------------------------------ logging
    def log_params(self, params: Any) -> None:
        """Log more params (flattened and filtered like ``start``'s); new keys only may differ."""
        self._log_params(flatten_params(params))

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> int:
        """Log numeric metrics (Python / numpy numbers, 0-d tensors) at ``step`` -> how many
        non-finite values were dropped (see the module docstring)."""
        run_id = self._need_run()
        ts = int(time.time() * 1000)
        batch, dropped = [], 0
        for k, v in metrics.items():
            x = _to_float(k, v)
            if math.isfinite(x):
                batch.append(Metric(str(k), x, ts, int(step)))
            else:
                dropped += 1
        if dropped:
            self._nonfinite += dropped
            batch.append(Metric(NONFINITE_METRIC, float(self._nonfinite), ts, int(step)))
        for i in range(0, len(batch), _METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=batch[i:i + _METRICS_PER_BATCH])
        return dropped

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        run_id = self._need_run()
        self.client.log_batch(run_id, tags=[RunTag(str(k), redact_text(str(v))) for k, v in tags.items()])

    def log_image(self, img: Any, artifact_path: str) -> str:
        """Log a uint8 [H, W, 3] array or PIL image as the PNG ``artifact_path`` (e.g.
        ``images/step_000100/cross_generation.png``) -> the artifact path."""
        run_id = self._need_run()
        artifact_dir, name = _split_artifact_path(artifact_path, ".png")
        with tempfile.TemporaryDirectory() as tmp:
            local = save_png(img, Path(tmp) / name)
            self.client.log_artifact(run_id, str(local), artifact_path=artifact_dir)
        return f"{artifact_dir}/{name}" if artifact_dir else name

    def log_dict(self, d: Any, artifact_path: str) -> None:
        """Log a dict (or dataclass) as JSON, or YAML when the path ends in .yaml / .yml."""
        self.client.log_dict(self._need_run(), _plain(d), artifact_path)

    def log_text(self, text: str, artifact_path: str) -> None:
        self.client.log_text(self._need_run(), text, artifact_path)

    def log_checkpoint_uri(self, uri: str, step: int, *, newer_only: bool = False) -> None:
        """Append {step, uri, time} to the artifact ``checkpoints.json`` and set the tags
        ``last_checkpoint`` / ``last_checkpoint_step``. Accumulates across resumes; logging the
        same (step, uri) twice keeps one entry.

        newer_only: for reports that may arrive late (Ray Train's controller, which outlives a
        stopped driver by a moment, driver.py): a checkpoint whose directory name (Ray's
        ``checkpoint_<time>``) sorts before a logged one is entered in its place and moves no
        tag, so the tags keep naming the newest checkpoint the driver named on its way out."""
        run_id = self._need_run()
        uri = redact_text(str(uri))
        self._checkpoints = None  # read afresh: Ray Train's controller logs to the same run (driver.py)
        entries = self._load_checkpoints()
        later = [i for i, e in enumerate(entries) if newer_only and _dir_name(e["uri"]) > _dir_name(uri)]
        if not any(e["step"] == int(step) and e["uri"] == uri for e in entries):
            entry = {"step": int(step), "uri": uri, "time": time.time()}
            entries.insert(later[0] if later else len(entries), entry)
        self.client.log_dict(run_id, {"checkpoints": entries}, CHECKPOINTS_FILE)
        if later:
            return
        self.client.log_batch(run_id, tags=[RunTag("last_checkpoint", uri),
                                            RunTag("last_checkpoint_step", str(int(step)))])

    def log_resize(self, was: int, now: int, step: int, checkpoint: str) -> None:
        """An elastic run went from ``was`` to ``now`` workers at ``step`` (restored from
        ``checkpoint``): appended to the artifact ``resizes.json``; the tag ``resize_count``."""
        run_id = self._need_run()
        entries = self._read_list(RESIZES_FILE, "resizes")
        entries.append({"step": int(step), "from": int(was), "to": int(now),
                        "checkpoint": redact_text(str(checkpoint)), "time": time.time()})
        self.client.log_dict(run_id, {"resizes": entries}, RESIZES_FILE)
        self.client.set_tag(run_id, "resize_count", str(len(entries)))

    def resizes(self) -> list[dict[str, Any]]:
        """The resizes logged to the open run (oldest first)."""
        return self._read_list(RESIZES_FILE, "resizes")

    def checkpoints(self) -> list[dict[str, Any]]:
        """The checkpoint entries logged to the open run so far (oldest first)."""
        self._need_run()
        return list(self._load_checkpoints())

    def log_model(self, model: nn.Module, config: Any, *, step: int = 0,
                  registered_model_name: str | None = None) -> str:
        """Log the run's MLflow model ``model`` (``runs:/ID/model``; serving.py): the pytorch and
        pyfunc flavours, a signature and an input example, the pip requirements and ``config.yaml``
        (the redacted resolved config: the whole config with a ``model`` section, or that section).
        MLflow 3 links the logged model to the run and to the run's metrics at ``step``;
        ``registered_model_name`` also registers it (a new version). A DDP-wrapped model is
        unwrapped. -> the logged model's id."""
        from mlflow.models import Model

        from . import serving

        run_id = self._need_run()
        model = getattr(model, "module", model)
        cfg = redact_config(config)
        example = serving.input_example(model)
        # created here, in the run's experiment: Model.log would put it in the fluent API's
        # active experiment (MLflow's "Default" in a worker), away from its run
        logged = self.client.create_logged_model(self.experiment_id, serving.MODEL_NAME, source_run_id=run_id,
                                                 params=flatten_params(cfg), model_type="multimodal-vae")
        with fluent_tracking_uri(self.tracking_uri):  # Model.log resolves the fluent API's URI
            info = Model.log(None, name=serving.MODEL_NAME, flavor=serving, run_id=run_id, step=int(step),
                             model_id=logged.model_id,
                             registered_model_name=registered_model_name, await_registration_for=0,
                             model=model, config=cfg, signature=serving.signature_of(model, cfg, example),
                             input_example=example, pip_requirements=serving.pip_requirements())
        return info.model_id

    # ------------------------------------------------------------------------ helpers
    def _need_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("no MLflow run is open: call Tracker.start() first")
        return self.run_id

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                return self.client.create_experiment(self.experiment, artifact_location=self.artifact_root,
                                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException:  # another process created it in the meantime
                exp = self.client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        if EXPERIMENT_KIND_TAG not in exp.tags:  # made before this tag, or by plain MLflow; a kind set stays
            self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id

    def _log_params(self, flat: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(self._need_run(), params=items[i:i + _PARAMS_PER_BATCH])

    def _load_checkpoints(self) -> list[dict[str, Any]]:
        if self._checkpoints is None:
            self._checkpoints = self._read_list(CHECKPOINTS_FILE, "checkpoints")
        return self._checkpoints

    def _read_list(self, artifact: str, key: str) -> list[dict[str, Any]]:
        """The list under ``key`` of the run's JSON artifact ``artifact`` ([] if none yet)."""
        with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
            try:
                local = self.client.download_artifacts(self._need_run(), artifact, tmp)
            except (MlflowException, OSError):
                local = None  # nothing logged yet
            if local and Path(local).is_file():
                return list(json.loads(Path(local).read_text())[key])
        return []


def _dir_name(uri: str) -> str:
    """The last path component of a checkpoint URI (Ray's ``checkpoint_<time>``)."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


@contextlib.contextmanager
def _quiet_downloads():
    """No MLflow "Downloading artifacts" progress bar for a small file read on every checkpoint
    (one bar per checkpoint filled the console); a bar for a model download stays."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


@contextlib.contextmanager
def fluent_tracking_uri(uri: str):
    """Point MLflow's fluent API (``mlflow.models.Model.log``, ``mlflow.pytorch.load_model`` of a
    ``runs:/`` URI) at ``uri`` for a while, then back."""
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def has_logged_model(run_id: str, tracking_uri: str | None = None) -> bool:
    """True when run ``run_id`` logged an MLflow model named ``model`` (``Tracker.log_model``)."""
    from .serving import MODEL_NAME

    client = mlflow.MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    try:
        run = client.get_run(run_id)
        found = client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'", max_results=1)
    except MlflowException:
        return False
    return len(found) > 0


def load_run_mlflow_model(run_id: str, tracking_uri: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model ``Tracker.log_model`` logged to ``run_id`` (``runs:/ID/model``) -> (model in eval
    mode on the CPU, its config)."""
    from .serving import MODEL_NAME, load_model_dir

    # one download of the folder (each runs:/ URI is resolved to its logged model by a search)
    with fluent_tracking_uri(tracking_uri or default_tracking_uri()), tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{MODEL_NAME}", dst_path=tmp)
        model, config = load_model_dir(local)
    return model.eval(), config


def load_logged_model(run_id: str, tracking_uri: str | None = None,
                      artifact_path: str = "model") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a run logged before MLflow models (project 0.x: run artifacts
    ``model/state_dict.pt`` + ``model/config.yaml``) -> (model in eval mode, config)."""

    client = mlflow.MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run_id, artifact_path, tmp))
        config = yaml.safe_load((local / "config.yaml").read_text()) or {}
        state = torch.load(local / "state_dict.pt", map_location="cpu", weights_only=True)
    model_cfg = config.get("model", config) if isinstance(config, dict) else config
    model = build_model(model_cfg)
    model.load_state_dict(state)
    return model.eval(), config


# ------------------------------------------------------------------------- small helpers
def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).resolve()


def _split_artifact_path(path: str, suffix: str) -> tuple[str | None, str]:
    path = path.strip("/")
    head, _, name = path.rpartition("/")
    if not name:
        raise ValueError(f"artifact path must name a file, got {path!r}")
    if not name.lower().endswith(suffix):
        name += suffix
    return (head or None), name


def _to_float(key: Any, v: Any) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise TypeError(f"metric {key!r} must be a number, got a tensor of shape {tuple(v.shape)}")
        v = v.item()
    if isinstance(v, (bool, str)) or not isinstance(v, (int, float, np.number)):
        raise TypeError(f"metric {key!r} must be a number, got {v!r}")
    return float(v)


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "unknown"


__all__ = [
    "CHECKPOINTS_FILE", "DEFAULT_EXPERIMENT", "NONFINITE_METRIC", "RunRecord",
    "Tracker", "default_artifact_root", "default_tracking_uri", "find_runs", "flatten_params",
    "fluent_tracking_uri", "has_logged_model", "is_sensitive_key", "load_logged_model",
    "load_run_mlflow_model", "redact_config", "redact_text", "ui_command",
]
