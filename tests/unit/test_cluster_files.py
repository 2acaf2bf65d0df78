"""The files under cluster/ are valid for the tools that read them (no Ray started)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_is_a_valid_serve_deploy_file():
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(doc)
    app = schema.applications[0]
    assert app.import_path == "raygbm.serving.deploy:app_builder" and schema.http_options.host == "127.0.0.1"
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
