"""CLI behaviour that needs no Ray: --version, and clients of the endpoint sending its bearer token."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from typer.testing import CliRunner

from raygbm import __version__
from raygbm.cli import app


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"raygbm {__version__}"


def test_drift_report_sends_the_endpoint_token(tmp_path, monkeypatch):
    token = "t" * 24

    class Drift(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            ok = self.path == "/drift" and self.headers.get("authorization") == f"Bearer {token}"
            window = {"index": 0, "rows": 5, "verdict": "ok", "drifted_features": [], "features": {}, "missing": {},
                      "prediction": None}
            body = json.dumps({"windows": [window]} if ok
                              else {"error": "missing or wrong bearer token"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drift)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        out = tmp_path / "drift.html"
        monkeypatch.delenv("RAYGBM_ENDPOINT_TOKEN", raising=False)
        refused = CliRunner().invoke(app, ["drift-report", "--url", url, "--output", str(out)])
        assert refused.exit_code == 2 and not out.exists()
        monkeypatch.setenv("RAYGBM_ENDPOINT_TOKEN", token)
        result = CliRunner().invoke(app, ["drift-report", "--url", url, "--output", str(out)])
        assert result.exit_code == 0, result.output
        assert "1 windows (0 with drift)" in result.output and out.read_text().startswith("<!doctype html>")
    finally:
        server.shutdown()


def _help(*args: str) -> str:
    """A command's help as plain words (rich draws boxes and wraps lines)."""
    import re

    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", CliRunner().invoke(app, [*args, "--help"]).output).split())


def test_help_names_the_environment_and_serve_shows_a_serve_key():
    text = _help()
    for name in ("RAYGBM_HOME", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAYGBM_ENDPOINT_TOKEN"):
        assert name in text
    serve_help = _help("serve")
    assert "--set serve." in serve_help and "train." not in serve_help


def test_the_demo_registers_under_the_name_the_cli_reads_by_default():
    from pathlib import Path

    from raygbm.config import RegistryConfig, load_config

    demo = load_config(Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "demo.yaml", [])
    assert demo.registry.model_name == RegistryConfig().model_name  # `raygbm models` after `make demo`


def _commands() -> list[str]:
    import typer

    return sorted(typer.main.get_command(app).commands)


def test_no_help_text_shows_a_bool_label_and_every_command_has_an_example():
    commands = _commands()
    assert {"run", "serve", "models", "predict", "ui"} <= set(commands)
    top = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert top.exit_code == 0 and "--version" in top.output and "<bool>" not in top.output, top.output
    for name in commands:
        result = CliRunner().invoke(app, [name, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, f"{name} --help:\n{result.output}"
        assert f"Example: raygbm {name}" in _help(name), f"{name} --help has no example"
    status = CliRunner().invoke(app, ["loop", "status", "--help"], terminal_width=200)
    assert status.exit_code == 0 and "<bool>" not in status.output and "Example: raygbm loop status" in status.output
