"""ray_cluster.yaml, deploy/Dockerfile and the MLflow recipe, checked offline.

The cluster config goes through Ray's own launcher code path (`prepare_config` fills in the AWS
defaults, `validate_config` applies ray-schema.json), exactly as `ray up` does before it talks to
the cloud; no AWS credentials are needed. The compose recipe is checked against the options that
the installed `mlflow server` actually has.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO_ROOT / "ray_cluster.yaml"
DEPLOY = REPO_ROOT / "deploy"
COMPOSE = DEPLOY / "mlflow" / "docker-compose.yml"

ray_util = pytest.importorskip("ray.autoscaler._private.util")
jsonschema = pytest.importorskip("jsonschema")


def _raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _validate(config: dict) -> dict:
    prepared = ray_util.prepare_config(copy.deepcopy(config))
    ray_util.validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def cluster() -> dict:
    return _validate(_raw())


def test_cluster_yaml_passes_ray_schema(cluster):
    assert cluster["provider"]["type"] == "aws"
    assert cluster["provider"]["region"]
    assert cluster["cluster_name"]


def test_head_and_gpu_worker_types(cluster):
    types = cluster["available_node_types"]
    head = cluster["head_node_type"]
    assert head in types
    assert types[head]["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_workers = {
        name: t for name, t in types.items() if name != head and t["resources"].get("GPU", 0) >= 1
    }
    assert gpu_workers, "no worker node type with GPU >= 1 in its resources"
    for name, t in gpu_workers.items():
        assert t["resources"].get("CPU", 0) >= 1, name
        assert t.get("min_workers", 0) == 0, f"{name}: GPU nodes should scale from zero"
        assert 1 <= t["max_workers"] <= cluster["max_workers"], name
        assert t["node_config"]["InstanceType"], name
        # GPU access inside the container on GPU nodes.
        assert "--gpus all" in t.get("docker", {}).get("worker_run_options", []), name


def test_start_commands_follow_ray_docs(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    worker = " ".join(cluster["worker_start_ray_commands"])
    assert "ray start --head" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--dashboard-port=8265" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    port = re.search(r"--port=(\d+)", head).group(1)
    assert f":{port}" in worker, "workers must join the head's GCS port"
    for cmds in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(cmds)
    # The token the cluster authenticates with is synced from the user's machine.
    assert cluster["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_docker_image_matches_the_documented_build():
    """ray_cluster.yaml runs the image deploy/README.md tells users to build (same tag)."""
    image = _raw()["docker"]["image"]
    readme = (DEPLOY / "README.md").read_text()
    builds = re.findall(r"docker build -f deploy/Dockerfile -t (\S+) \.", readme)
    assert builds, "deploy/README.md has no `docker build -f deploy/Dockerfile -t NAME .` line"
    assert builds[0] == image
    # The same build line is in the Dockerfile's header and the cluster config's comment.
    assert f"docker build -f deploy/Dockerfile -t {image} ." in (DEPLOY / "Dockerfile").read_text()
    assert f"docker build -f deploy/Dockerfile -t {image} ." in CLUSTER_YAML.read_text()
    for cmd in ("ray up ray_cluster.yaml", "ray submit ray_cluster.yaml", "ray job submit",
                "ray down ray_cluster.yaml", "RAY_AUTH_MODE=token", "8265", "MLFLOW_TRACKING_URI",
                "mlflow ui --backend-store-uri sqlite:///mlflow.db"):
        assert cmd in readme, cmd


def test_dockerfile_matches_installed_ray():
    import ray

    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)", text, re.M).group(1)
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert re.search(rf"^ARG RAY_VERSION={re.escape(ray.__version__)}$", text, re.M)
    assert re.search(r"^ARG MLFLOW_VERSION=3\.17\.2$", text, re.M)
    assert re.search(r"^USER ray$", text, re.M), "stay on the base image's non-root user"
    assert re.search(r"^WORKDIR /", text, re.M)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore


def test_file_mounts_and_rsync_filters_keep_the_package():
    config = _raw()
    for remote, local in config["file_mounts"].items():
        if local == ".":
            assert remote == "~/mvae_dist"
    # rsync matches a bare name at any depth: "data" would silently drop mvae_dist/data/.
    package_dirs = {p.name for p in (REPO_ROOT / "mvae_dist").rglob("*") if p.is_dir()}
    for pattern in config.get("rsync_exclude", []):
        assert "/" in pattern or pattern not in package_dirs, pattern
    setup = " ".join(config["setup_commands"])
    assert "~/mvae_dist" in setup


def test_every_path_the_cluster_yaml_names_exists():
    """The files its comments and commands name (configs, deploy/..., tune specs) are real:
    a renamed config once left `mvae-dist train --config configs/embedded/ci-mmvae.yaml` here."""
    path = r"(?<![\w/.~])((?:configs|deploy|tune|tests)/[\w./-]*\w)"
    named = set(re.findall(path, CLUSTER_YAML.read_text()))
    assert {"deploy/Dockerfile", "configs/embedded/mmvae-ci.yaml"} <= named, named
    missing = sorted(p for p in named if not (REPO_ROOT / p).exists())
    assert not missing, missing


def test_no_credentials_in_deploy_files():
    secretish = re.compile(
        r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]\s*\S+|password\s*[:=]\s*[^\s$#]{6,}", re.I
    )
    files = [CLUSTER_YAML, *[p for p in DEPLOY.rglob("*") if p.is_file() and p.name != ".env"]]
    for path in files:
        for line in path.read_text().splitlines():
            if path.name == ".env.example" and line.startswith("POSTGRES_PASSWORD=change-me"):
                continue  # the documented placeholder
            assert not secretish.search(line), f"{path.relative_to(REPO_ROOT)}: {line}"


@pytest.mark.parametrize(
    "mutate, error",
    [
        (lambda c: c["available_node_types"]["gpu_worker"].update(gpus=1), "jsonschema"),
        (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5), "jsonschema"),
        (lambda c: c["available_node_types"]["head_cpu"].pop("node_config"), "jsonschema"),
        (lambda c: c["docker"].update(runtime="nvidia"), "jsonschema"),
        (lambda c: c.update(head_node_type="no_such_type"), ValueError),
    ],
    ids=["unknown-node-type-key", "fractional-resource", "missing-node-config", "unknown-docker-key",
         "head-type-not-defined"],
)
def test_invalid_configs_are_rejected(mutate, error):
    """The validation is real: Ray's schema rejects what `ray up` would reject."""
    config = _raw()
    mutate(config)
    expected = jsonschema.ValidationError if error == "jsonschema" else error
    with pytest.raises(expected):
        _validate(config)


# --------------------------------------------------------------------------- MLflow server recipe


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _server_options() -> dict[str, object]:
    from mlflow.cli import server

    return {opt: p for p in server.params for opt in p.opts}


def test_compose_postgres_and_s3(compose):
    services = compose["services"]
    assert {"postgres", "mlflow"} <= set(services)
    mlflow_svc = services["mlflow"]
    env = mlflow_svc["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in env["MLFLOW_BACKEND_STORE_URI"]
    assert "${POSTGRES_PASSWORD" in env["MLFLOW_BACKEND_STORE_URI"]
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("${MLFLOW_ARTIFACTS_DESTINATION")
    assert "s3://" in env["MLFLOW_ARTIFACTS_DESTINATION"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    assert mlflow_svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("postgres", "mlflow"):
        assert services[name]["healthcheck"]["test"], name
    assert "/health" in " ".join(mlflow_svc["healthcheck"]["test"])
    example = (COMPOSE.parent / ".env.example").read_text()
    assert "MLFLOW_ARTIFACTS_DESTINATION=s3://" in example


def test_compose_uses_real_mlflow_server_options(compose):
    """Every flag and MLFLOW_* variable the recipe gives `mlflow server` exists in mlflow 3.17."""
    options = _server_options()
    envvars = {p.envvar for p in options.values() if p.envvar}
    command = compose["services"]["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    for arg in command[2:]:
        flag = arg.split("=", 1)[0]
        assert flag in options, f"`mlflow server` has no option {flag}"
    assert "--host=0.0.0.0" in command
    env = compose["services"]["mlflow"]["environment"]
    for key in env:
        if key.startswith("MLFLOW_"):
            assert key in envvars, f"`mlflow server` reads no variable {key}"
    assert options["--backend-store-uri"].envvar == "MLFLOW_BACKEND_STORE_URI"
    assert options["--artifacts-destination"].envvar == "MLFLOW_ARTIFACTS_DESTINATION"
    assert options["--allowed-hosts"].envvar == "MLFLOW_SERVER_ALLOWED_HOSTS"


def test_mlflow_image_pins_server_version():
    text = (COMPOSE.parent / "Dockerfile").read_text()
    assert re.search(r"^ARG MLFLOW_VERSION=3\.17\.2$", text, re.M)
    install = " ".join(shlex.split(text.split("RUN", 1)[1].split("&&")[0].replace("\\\n", " ")))
    assert "psycopg2-binary" in install and "boto3" in install


def test_the_on_prem_yaml_passes_ray_schema_and_names_real_files():
    """deploy/ray_local.yaml (Ray's local provider over SSH, tried for real by
    deploy/try_local_cluster.sh): valid for Ray, token auth on, and every file it names exists."""
    text = (DEPLOY / "ray_local.yaml").read_text()
    local = _validate(yaml.safe_load(text))
    assert local["provider"]["type"] == "local" and local["provider"]["head_ip"]
    assert local["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert all("RAY_AUTH_MODE=token ray start" in " ".join(c.split())
               for c in (local["head_start_ray_commands"][-1], local["worker_start_ray_commands"][-1]))
    named = set(re.findall(r"(?<![\w/.~])((?:configs|deploy|tune|tests)/[\w./-]*\w)", text))
    assert {"deploy/submit_tiny.py"} <= named and all((REPO_ROOT / p).exists() for p in named), named
    script = (DEPLOY / "try_local_cluster.sh").read_text()
    for step in ("ray up", "ray submit", "ray job submit", "ray down", "deploy/submit_tiny.py"):
        assert step in script
