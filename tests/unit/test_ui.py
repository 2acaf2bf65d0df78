"""``raygbm ui`` without a server: where its store and environment come from, and the checks made before
anything starts. The server itself is tested over HTTP in tests/integration/test_mlflow_ui.py."""

from __future__ import annotations

import json
import socket

import pytest
from typer.testing import CliRunner

from raygbm.cli import app
from raygbm.ui import (
    READY_FILE,
    UIError,
    check_port,
    ensure_env,
    env_dir,
    is_ready,
    requirement,
    server_command,
    store_uri,
)


def test_the_environment_holds_the_full_mlflow_at_the_skinny_version(home, monkeypatch):
    from importlib.metadata import version

    assert requirement() == f"mlflow=={version('mlflow-skinny')}"
    monkeypatch.delenv("RAYGBM_UI_ENV", raising=False)
    assert env_dir() == home.resolve() / f"mlflow-ui-{version('mlflow-skinny')}"
    monkeypatch.setenv("RAYGBM_UI_ENV", str(home / "elsewhere"))
    assert env_dir() == (home / "elsewhere").resolve()


def test_an_environment_without_its_ready_file_or_for_another_version_is_not_used(tmp_path):
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)  # what an interrupted create would leave
    assert not is_ready(env, "mlflow==1.0")
    (env / READY_FILE).write_text(json.dumps({"requirement": "mlflow==0.9"}))
    assert not is_ready(env, "mlflow==1.0")
    (env / READY_FILE).write_text(json.dumps({"requirement": "mlflow==1.0"}))
    assert is_ready(env, "mlflow==1.0")


def test_a_failed_create_leaves_nothing_behind(tmp_path):
    env = tmp_path / "env"
    said = []
    with pytest.raises(UIError, match="failed at pip install"):
        ensure_env(env, "raygbm-no-such-package==0.0.0", said.append)
    assert said and not env.exists() and not (tmp_path / "env.partial").exists()


def test_no_store_yet_is_one_line_naming_the_file(home, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UIError, match="no MLflow store at .*mlflow.db yet"):
        store_uri()
    r = CliRunner().invoke(app, ["ui", "--port", "5999"])
    assert r.exit_code == 2 and r.output.startswith("error: no MLflow store at") and not home.exists()


def test_a_tracking_server_is_pointed_to_not_served(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5555")
    r = CliRunner().invoke(app, ["ui"])
    assert r.exit_code == 0 and "its UI is at http://127.0.0.1:5555" in r.output


def test_a_busy_port_is_refused_and_the_server_binds_loopback(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(UIError, match=f"port {s.getsockname()[1]} on 127.0.0.1 is in use"):
            check_port(s.getsockname()[1])
    cmd = server_command(tmp_path / "python", "sqlite:////x/mlflow.db", 5001)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5001"
    assert cmd[cmd.index("--backend-store-uri") + 1] == "sqlite:////x/mlflow.db"
