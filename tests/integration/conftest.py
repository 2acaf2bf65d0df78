"""One local Ray for the whole integration session (never two at once on this host)."""

from __future__ import annotations

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
    install of a minute or more, mostly one process waiting on disk) is built while the first tests run.
    ``raygbm ui`` takes the same lock and finds it ready; if this build fails, the UI test builds it again
    and reports the failure."""
    if not any(item.fspath.basename == "test_mlflow_ui.py" for item in request.session.items):
        yield
        return
    from raygbm.ui import UIError, ensure_env, requirement
    from tests.helpers import UI_ENV

    def build() -> None:
        try:
            ensure_env(UI_ENV, requirement(), lambda line: None)
        except UIError:
            pass

    builder = threading.Thread(target=build, name="mlflow-ui-env", daemon=True)
    builder.start()
    yield
    builder.join()


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
