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
            "raygbm.training.tune, raygbm.registry.register, raygbm.serving.deploy, raygbm.drift.actor, sys;"
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
