"""One local Ray for the whole integration session (never two at once on this host)."""

from __future__ import annotations

import subprocess
import threading

import pytest


@pytest.fixture(scope="session", autouse=True)
def ray_session():
    import ray

    from raygbm.config import ResourcesConfig, ServeConfig
    from raygbm.runtime import ensure_ray

    # Serve's proxy takes its HTTP limits when Ray starts; the deployments of this session check their own
    # (smaller) body limits in the replica, so the proxy's are a ceiling above every test's.
    ensure_ray(ResourcesConfig(num_cpus=2), ServeConfig(max_body_bytes=8_000_000))
    yield
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def ui_env_built_alongside(request):
    """When test_mlflow_ui is collected, its MLflow UI environment (created on a machine's first use: a pip
    install of a minute or more, mostly one process waiting on disk) is built while the first tests run;
    then, when the `mlflow models serve` test is collected, the clean environment of a registered model
    (``tests.helpers.model_env``: the same full MLflow, from pip's cache by then, and the requirements a
    model is saved with). The tests take the same locks and find them ready; if a build fails here, the
    test builds it again and reports the failure."""
    names = {item.name for item in request.session.items}
    ui = any(item.fspath.basename == "test_mlflow_ui.py" for item in request.session.items)
    model = any("mlflow_models_serve" in name for name in names)
    if not (ui or model):
        yield
        return
    from raygbm.registry.mlflow_model import requirements
    from raygbm.ui import UIError, ensure_env, requirement
    from tests.helpers import UI_ENV, model_env

    def build() -> None:
        try:
            if ui:
                ensure_env(UI_ENV, requirement(), lambda line: None)
            if model:
                model_env([requirement(), *requirements()])
        except (UIError, AssertionError, OSError, subprocess.SubprocessError):
            pass

    builder = threading.Thread(target=build, name="mlflow-ui-env", daemon=True)
    builder.start()
    yield
    builder.join()


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
