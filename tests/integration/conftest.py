"""One local Ray for the whole integration session (never two at once on this host)."""

from __future__ import annotations

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


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
