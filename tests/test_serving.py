"""The run's MLflow model (serving.py, Tracker.log_model) against a real sqlite store, loaded by
``mlflow.pytorch`` and ``mlflow.pyfunc``, registered, and served by a real ``mlflow models serve``."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mvae_dist.config import RunConfig
from mvae_dist.eval.pmi import pmi
from mvae_dist.models import build_model
from mvae_dist.serving import MultimodalService, input_example
from mvae_dist.tracking import Tracker, fluent_tracking_uri, has_logged_model, load_logged_model
from mvae_dist.trained import load_trained

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::FutureWarning")

MODEL = {"name": "mmvae", "modalities": ["mnist", "svhn"], "latent_dim": 4, "hidden": 16}
SECRET = "hunter2-AKIAEXAMPLE"
#: a whole resolved config, with a password in a URL that the model's config.yaml must not keep
CONFIG = json.loads(json.dumps(RunConfig.from_dict({
    "model": MODEL, "data": {"url": "s3://b/d"},
    "tracking": {"tracking_uri": f"http://u:{SECRET}@host:5000"}}).to_dict()))


@pytest.fixture
def logged(mlflow_sqlite_uri):
    """(tracker, run id, model id, the model) for a finished run with a metric at step 7."""
    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    t = Tracker(mlflow_sqlite_uri, experiment=f"serving-{uuid.uuid4().hex[:8]}")
    run_id = t.start("served", CONFIG)
    t.log_metrics({"eval/coherence": 0.25, "loss": 3.0}, step=7)
    model_id = t.log_model(model, CONFIG, step=7)
    t.end("FINISHED")
    yield t, run_id, model_id, model


def xs(n: int = 3, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 28, 28, generator=g), torch.rand(n, 3, 32, 32, generator=g)]


def frame(batch: list[torch.Tensor], names=("mnist", "svhn")) -> pd.DataFrame:
    return pd.DataFrame({n: [r.reshape(-1).double().numpy() for r in x] for n, x in zip(names, batch)})


def test_pytorch_flavour_loads_the_vae_and_pyfunc_the_service(logged):
    t, run_id, model_id, model = logged
    uri = f"runs:/{run_id}/model"
    with fluent_tracking_uri(t.tracking_uri):
        loaded = mlflow.pytorch.load_model(uri)
        service = mlflow.pyfunc.load_model(uri)
        info = mlflow.models.get_model_info(uri)
    assert type(loaded) is type(model)
    with torch.no_grad():
        a = model.unimodal_posterior(xs()[1], 1)[0]
        b = loaded.unimodal_posterior(xs()[1], 1)[0]
    assert torch.equal(a, b)
    assert service.loader_module == "mvae_dist.serving"
    sig = info.signature
    assert [c.name for c in sig.inputs.inputs] == ["mnist", "svhn"]
    assert all(not c.required for c in sig.inputs.inputs)
    assert {p.name for p in sig.params.params} == {"pmi_K", "seed"}
    assert info.saved_input_example_info is not None and info.model_id == model_id
    flavours = info.flavors
    assert "pytorch" in flavours and flavours["python_function"]["loader_module"] == "mvae_dist.serving"


def test_model_folder_holds_redacted_config_requirements_and_example(logged, tmp_path):
    t, run_id, _, _ = logged
    with fluent_tracking_uri(t.tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path)))
    config = yaml.safe_load((local / "config.yaml").read_text())
    assert config["model"] == CONFIG["model"] and SECRET not in (local / "config.yaml").read_text()
    reqs = (local / "requirements.txt").read_text()
    assert "mvae-dist==" in reqs and "torch==" in reqs and "mlflow==" in reqs
    example = json.loads((local / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["mnist", "svhn"]
    assert len(example["dataframe_split"]["data"][0][0]) == 784


def test_predict_gives_latent_means_cross_generations_and_pmi(logged):
    t, run_id, _, model = logged
    with fluent_tracking_uri(t.tracking_uri):
        service = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    batch = xs()
    out = service.predict(frame(batch), params={"pmi_K": 4, "seed": 3})
    assert list(out.columns) == ["z_mnist", "z_svhn", "svhn_from_mnist", "mnist_from_svhn", "pmi"]
    with torch.no_grad():
        z0 = model.unimodal_posterior(batch[0], 0)[0]
        want_svhn = model.decode_mean(1, z0)
        torch.manual_seed(3)
        want_pmi = pmi(model, batch, 4)
    np.testing.assert_allclose(np.stack(out["z_mnist"]), z0.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack(out["svhn_from_mnist"]), want_svhn.reshape(3, -1).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["pmi"].to_numpy(), want_pmi.numpy(), rtol=1e-4)
    again = service.predict(frame(batch), params={"pmi_K": 4, "seed": 3})
    assert np.array_equal(again["pmi"].to_numpy(), out["pmi"].to_numpy())  # seeded: reproducible


def test_rows_that_lack_a_modality_get_no_pmi(logged):
    t, run_id, _, model = logged
    service = MultimodalService(model, CONFIG)
    batch = xs(n=3)
    df = frame(batch)
    df.loc[1, "svhn"] = None  # row 1 gives only the digit image
    out = service.predict(df, {"pmi_K": 2})
    assert math.isnan(out["pmi"][1]) and not np.isnan(out["pmi"][[0, 2]]).any()
    assert out["z_svhn"][1] is None and out["mnist_from_svhn"][1] is None
    with torch.no_grad():
        z = model.unimodal_posterior(batch[0][1:2], 0)[0]
    np.testing.assert_allclose(out["z_mnist"][1], z[0].numpy(), rtol=1e-5, atol=1e-6)
    only = service.predict(frame(batch[1:], names=("svhn",)))
    assert list(only.columns) == ["z_svhn", "mnist_from_svhn"]
    shaped = service.predict(pd.DataFrame({"mnist": [x.numpy() for x in batch[0]]}))  # [1, 28, 28] cells
    np.testing.assert_allclose(np.stack(shaped["z_mnist"]), np.stack(out["z_mnist"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("df, params, message", [
    (pd.DataFrame({"audio": [[0.0] * 4]}), None, "unknown modality column(s) ['audio']"),
    (pd.DataFrame({"mnist": [[0.0] * 10]}), None, "modality 'mnist': each sample must hold 784 numbers"),
    (pd.DataFrame({"mnist": [None]}), None, "every row must give at least one modality"),
    (pd.DataFrame({"mnist": [[0.0] * 784]}), {"pmi_K": 0}, "pmi_K must be >= 1"),
])
def test_bad_requests_say_what_is_wrong(logged, df, params, message):
    _, _, _, model = logged
    with pytest.raises(ValueError) as e:
        MultimodalService(model, CONFIG).predict(df, params)
    assert message in str(e.value)


def test_logged_model_is_linked_to_its_run_and_metrics_and_can_be_registered(mlflow_sqlite_uri, logged):
    t, run_id, model_id, model = logged
    lm = t.client.get_logged_model(model_id)
    assert lm.source_run_id == run_id and lm.experiment_id == t.experiment_id and lm.name == "model"
    assert {m.key: m.value for m in lm.metrics} == {"eval/coherence": 0.25, "loss": 3.0}
    assert lm.params["model.latent_dim"] == "4" and SECRET not in json.dumps(lm.params)
    assert has_logged_model(run_id, t.tracking_uri)
    run = t.client.get_run(run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]

    name = f"mmvae-{uuid.uuid4().hex[:6]}"
    t2 = Tracker(mlflow_sqlite_uri, experiment=t.experiment)
    run2 = t2.start("registered", CONFIG)
    mid2 = t2.log_model(model, CONFIG, registered_model_name=name)
    t2.end("FINISHED")
    versions = t2.client.search_model_versions(f"name = '{name}'")
    assert [(v.version, v.run_id, v.source) for v in versions] == [(1, run2, f"models:/{mid2}")]
    with fluent_tracking_uri(t.tracking_uri):
        assert type(mlflow.pytorch.load_model(f"models:/{name}/1")) is type(model)


def test_load_trained_reads_the_mlflow_model_and_the_old_format(logged, tmp_path):
    t, run_id, _, model = logged
    trained = load_trained(run_id=run_id, tracking_uri=t.tracking_uri)
    assert trained.source == f"runs:/{run_id}/model" and trained.config.model.latent_dim == 4
    with torch.no_grad():
        want = model.unimodal_posterior(xs()[0], 0)[0]
        assert torch.equal(trained.model.unimodal_posterior(xs()[0], 0)[0], want)

    # a run of project 0.x: run artifacts model/state_dict.pt + model/config.yaml, no MLflow model
    old = Tracker(t.tracking_uri, experiment=t.experiment)
    old_id = old.start("old-format", CONFIG)
    d = tmp_path / "model"
    d.mkdir()
    torch.save(model.state_dict(), d / "state_dict.pt")
    (d / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    old.client.log_artifacts(old_id, str(d), artifact_path="model")
    old.end("FINISHED")
    assert not has_logged_model(old_id, t.tracking_uri)
    m, config = load_logged_model(old_id, tracking_uri=t.tracking_uri)
    assert config["model"] == CONFIG["model"]
    back = load_trained(run_id=old_id, tracking_uri=t.tracking_uri)
    with torch.no_grad():
        assert torch.equal(back.model.unimodal_posterior(xs()[0], 0)[0], want)


def test_input_example_is_decoded_from_the_prior():
    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    ex = input_example(model, n=2)
    assert list(ex.columns) == ["mnist", "svhn"] and len(ex) == 2
    assert ex["svhn"][0].shape == (3 * 32 * 32,) and ex["mnist"][0].dtype == np.float64
    assert 0.0 <= min(ex["mnist"][0]) and max(ex["mnist"][0]) <= 1.0  # sigmoid decoder: an image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_on_localhost(logged, tmp_path):
    t, run_id, _, model = logged
    port = _free_port()
    bindir = str(Path(sys.executable).parent)  # the serve command runs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": t.tracking_uri, "PATH": f"{bindir}:{os.environ['PATH']}"}
    mlflow_bin = str(Path(bindir) / "mlflow")
    proc = subprocess.Popen([mlflow_bin, "models", "serve", "-m", f"runs:/{run_id}/model", "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port)], env=env, start_new_session=True,
                            stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "mlflow models serve did not answer in 120 s"
                time.sleep(0.5)
        batch = xs(n=2)
        body = {"dataframe_split": json.loads(frame(batch).to_json(orient="split", index=False)),
                "params": {"pmi_K": 4, "seed": 0}}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert len(answer) == 2 and set(answer[0]) == {"z_mnist", "z_svhn", "svhn_from_mnist", "mnist_from_svhn",
                                                   "pmi"}
    with torch.no_grad():
        torch.manual_seed(0)
        want = pmi(model, [x.double().float() for x in batch], 4)
    np.testing.assert_allclose([r["pmi"] for r in answer], want.numpy(), rtol=1e-4)
    assert len(answer[0]["svhn_from_mnist"]) == 3 * 32 * 32
