"""One local Ray for the whole integration session (never two at once on this host)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def ray_session():
    import ray

    from raygbm.config import ResourcesConfig
    from raygbm.runtime import ensure_ray

    ensure_ray(ResourcesConfig(num_cpus=2))
    yield
    ray.shutdown()


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
