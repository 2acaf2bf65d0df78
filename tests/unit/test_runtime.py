import os
import stat

from raygbm.runtime import ensure_private_token


def test_token_file_is_created_private(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "ray" / "auth_token"))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    p = ensure_private_token()
    assert p is not None and len(p.read_text()) == 64
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    first = p.read_text()
    os.chmod(p, 0o644)  # an existing, too-open token is tightened and kept
    assert ensure_private_token().read_text() == first
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_import_does_nothing():
    import subprocess
    import sys

    code = ("import raygbm, raygbm.cli, raygbm.data.preprocess, raygbm.data.features, raygbm.data.schema, "
            "raygbm.training.tune, raygbm.registry.register, raygbm.serving.deploy, raygbm.monitoring.actor, sys;"
            " print('ray' in sys.modules and __import__('ray').is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False"


def test_code_version_changes_with_what_replicas_are_built_from_only():
    from raygbm.config import MonitorConfig, ServeConfig
    from raygbm.serving.deploy import code_version

    base = code_version(ServeConfig(), MonitorConfig(), None)
    assert base == code_version(ServeConfig(), MonitorConfig(), None)  # a model swap keeps the replicas
    assert len({base, code_version(ServeConfig(max_rows=10), MonitorConfig(), None),
                code_version(ServeConfig(), MonitorConfig(window_size=50), None),
                code_version(ServeConfig(), MonitorConfig(), "ab" * 32)}) == 4


def test_an_embedded_ray_is_a_loopback_node_even_when_ray_was_imported_first(monkeypatch):
    """Ray reads its single-node switch when it is imported: ``loopback_node`` must also reach a Ray that a
    library user (or a test session) imported before asking raygbm to start it."""
    from ray._private import ray_constants, services

    from raygbm.runtime import SINGLE_NODE_ENV, loopback_node

    monkeypatch.delenv(SINGLE_NODE_ENV, raising=False)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    loopback_node()
    assert services.get_node_ip_address() == "127.0.0.1"
    monkeypatch.setenv(SINGLE_NODE_ENV, "1")  # the user's own choice wins
    loopback_node()
    assert ray_constants.ENABLE_RAY_CLUSTER is True


def test_free_port_is_bindable_and_outside_the_kernels_port_0_range():
    import socket

    from raygbm.runtime import PICK_PORTS, ephemeral_ports, free_port

    ephemeral = ephemeral_ports()
    ports = {free_port() for _ in range(20)}
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # still free
        if ephemeral is not None and not (ephemeral[0] <= PICK_PORTS[0] and PICK_PORTS[1] <= ephemeral[1]):
            assert PICK_PORTS[0] <= port <= PICK_PORTS[1] and not ephemeral[0] <= port <= ephemeral[1], port
    assert len(ports) > 1  # a random pick: two endpoints starting together seldom pick the same
