"""The files under cluster/ are valid for the tools that read them (no Ray started, no cloud calls)."""

import re
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The pinned Ray and Python every cluster file must match.
(RAY_VERSION,) = [re.split("==", d)[1] for d in PYPROJECT["project"]["dependencies"] if re.match(r"ray\[.*\]==", d)]
PYTHON = re.fullmatch(r">=(3\.\d+),<3\.\d+", PYPROJECT["project"]["requires-python"]).group(1)
# The one image for every node, job and replica (cluster/image/Dockerfile, pushed under this name).
IMAGE = f"registry.example.com/raygbm:{PYPROJECT['project']['version']}"
CLOUD = sorted((ROOT / "cluster" / "cloud").glob("*.yaml"))


def image_base() -> str:
    (base,) = re.findall(r"^FROM\s+(\S+)", (ROOT / "cluster" / "image" / "Dockerfile").read_text(), re.M)
    return base


def image_ray_version() -> str:
    """The Ray of the image's base tag (rayproject/ray:<ray>-py<python>-cpu)."""
    return re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py\d+-cpu", image_base()).group(1)


def test_serve_config_is_a_valid_serve_deploy_file():
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(doc)
    app = schema.applications[0]
    assert app.import_path == "raygbm.application:app_builder" and schema.http_options.host == "127.0.0.1"
    from raygbm.config import load_config

    load_config(ROOT / app.args["config"], app.args["set"])  # the config it names is valid
    import importlib

    module, attr = app.import_path.split(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_cluster_files_name_no_hyperparameter():
    from raygbm.config import DEFAULT_PARAMS, DEFAULT_SPACE

    words = set(DEFAULT_PARAMS) | set(DEFAULT_SPACE) | {"num_boost_round", "early_stopping_rounds"}
    for path in (ROOT / "cluster").rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not [w for w in words if w in text], path


def test_image_is_the_ray_image_of_the_pinned_ray_and_python():
    assert image_base() == f"rayproject/ray:{RAY_VERSION}-py{PYTHON.replace('.', '')}-cpu"
    text = (ROOT / "cluster" / "image" / "Dockerfile").read_text()
    assert f"ray.__version__ == '{RAY_VERSION}'" in text and f"sys.version_info[:2] == ({PYTHON.replace('.', ', ')})" in text
    # Everything the image copies is let through .dockerignore (which refuses all else).
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    copied = {src.rstrip("/") for args in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", text, re.M) for src in args.split()[:-1]}
    assert copied and copied <= allowed and all((ROOT / c).exists() for c in copied), (copied, allowed)


@pytest.mark.parametrize("path", CLOUD, ids=lambda p: p.name)
def test_ray_up_config_validates_with_the_installed_ray_schema(path):
    """What `ray up` does before its first cloud call: fill the provider's defaults, then Ray's schema check."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(path.read_text())
    config = prepare_config(raw)
    validate_config(config)
    assert config["docker"]["image"] == IMAGE
    head_type = config["available_node_types"][config["head_node_type"]]
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert head_type["max_workers"] == 0 and workers and all(t["max_workers"] > t.get("min_workers", 0) for t in workers)
    run_options = " ".join(config["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in run_options and "MLFLOW_TRACKING_URI=http" in run_options
    (head,) = [c for c in config["head_start_ray_commands"] if "--head" in c]
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head and "--metrics-export-port=" in head
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    # The tokens (the cluster's, the endpoint's) are copied from files outside the repository, never written
    # in the config; every node's Ray processes get the endpoint's in their environment.
    assert config["file_mounts"] == {"/home/ray/.ray/auth_token": "~/.ray/raygbm-cluster.token",
                                     "/home/ray/.ray/endpoint_token": "~/.ray/raygbm-endpoint.token"}
    assert "chmod 600 ~/.ray/auth_token ~/.ray/endpoint_token" in config["head_setup_commands"] + config["worker_setup_commands"]
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAYGBM_ENDPOINT_TOKEN=$(cat ~/.ray/endpoint_token)" in c for c in starts)
    assert not re.search(r"RAY_AUTH_TOKEN=|[0-9a-f]{32}", path.read_text())


def test_ray_up_check_refuses_a_misspelt_field():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(CLOUD[0].read_text())
    raw["idle_timeout_minute"] = raw.pop("idle_timeout_minutes")
    with pytest.raises(Exception, match="idle_timeout_minute"):
        validate_config(prepare_config(raw))


PRODUCTION = "pipelines/configs/cluster.yaml"


def naming_the_demo_config(folder: Path) -> list[str]:
    """The files under ``folder`` (configs, scripts, docs) that name the demo's pipeline config."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".yaml", ".yml", ".sh", ".md")]
    return [p.name for p in files if re.search(r"configs/demo\.ya?ml", p.read_text())]


def test_every_cluster_file_names_the_production_config_never_the_demo_one():
    """What runs on a cluster autoscales, needs the endpoint's token and runs the loop: the files in cluster/
    name pipelines/configs/cluster.yaml, never the demo's config."""
    from raygbm.config import load_config

    assert naming_the_demo_config(ROOT / "cluster") == []
    deploying = ["cluster/serve.yaml", "cluster/kuberay/rayservice.yaml", "cluster/kuberay/rayjob.yaml",
                 "cluster/kuberay/raycronjob.yaml", "cluster/README.md"]
    assert [f for f in deploying if PRODUCTION not in (ROOT / f).read_text()] == []
    cfg = load_config(str(ROOT / PRODUCTION), [])
    scaling = cfg.serve.autoscaling
    assert cfg.serve.require_token and cfg.retrain.enabled and scaling is not None and scaling.min_replicas == 1
    assert scaling.max_replicas is None  # from the cluster's size at deploy (raygbm.application)
    assert cfg.monitor.false_alarm_rate == type(cfg.monitor)().false_alarm_rate  # the calibrated default


def test_a_cluster_file_naming_the_demo_config_is_caught(tmp_path):
    """The check above catches a copy of cluster/ whose serve.yaml names the demo config again."""
    shutil.copytree(ROOT / "cluster", tmp_path / "cluster")
    serve_yaml = tmp_path / "cluster" / "serve.yaml"
    serve_yaml.write_text(serve_yaml.read_text().replace(PRODUCTION, "pipelines/configs/demo.yaml"))
    assert naming_the_demo_config(tmp_path / "cluster") == ["serve.yaml"]


def test_every_node_gets_the_fast_ingress_as_raygbm_serve_does():
    """The image (every ray up and KubeRay node) and the local scripts set what raygbm.runtime sets for an
    embedded Ray, and name raygbm-haproxy where pip puts the console script (the image's is checked by its
    own RUN line)."""
    from raygbm.runtime import FAST_INGRESS_ENV

    docker = (ROOT / "cluster" / "image" / "Dockerfile").read_text()
    env = (ROOT / "cluster" / "local" / "env.sh").read_text()
    for name, value in FAST_INGRESS_ENV.items():
        assert f"    {name}={value} \\" in docker, name
        assert f"export {name}=${{{name}:-{value}}}" in env, name
    assert "RAY_SERVE_HAPROXY_BINARY_PATH=/home/ray/anaconda3/bin/raygbm-haproxy" in docker
    assert 'RUN test -x "$RAY_SERVE_HAPROXY_BINARY_PATH"' in docker
    assert "RAY_SERVE_HAPROXY_BINARY_PATH=${RAY_SERVE_HAPROXY_BINARY_PATH:-$VENV/bin/raygbm-haproxy}" in env
