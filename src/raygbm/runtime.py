"""Starting (or joining) Ray. Only entry points call this; importing raygbm never starts Ray."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from raygbm.config import ResourcesConfig, ServeConfig

# Ray's switch between a single-node local instance (its macOS and Windows default) and a node that other
# nodes may join (its Linux default). Read once, when ``ray`` is first imported.
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray(resources: ResourcesConfig | None = None, serve: ServeConfig | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (or the job's own), else start an embedded local Ray.

    Token auth is on by default, and an embedded Ray listens on 127.0.0.1 only (see ``loopback_node``)
    and bounds the HTTP reads of the endpoint it will serve with ``serve``'s limits (see
    ``serving.http_guard``); the dashboard stays on because Ray Train's placement-group cleanup polls
    its State API (ray-project/ray#54305).
    """
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return
    if not os.environ.get("RAY_ADDRESS"):
        loopback_node()
        bounded_http_reads(serve or ServeConfig())
        if (serve or ServeConfig()).fast_ingress:
            enable_fast_ingress()
    import ray

    enable_token_auth()
    resources = resources or ResourcesConfig()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING, log_to_driver=False)
    else:
        ensure_private_token()
        free_agent_port()
        ray.init(
            # "local": a new instance even when another Ray runs on this host (without it, ray.init joins
            # any local instance it finds, e.g. one left by `ray start`, and then refuses num_cpus).
            address="local",
            num_cpus=resources.num_cpus,
            object_store_memory=resources.object_store_memory_mb * 1024 * 1024
            if resources.object_store_memory_mb
            else None,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        keep_embedded_ray()


def keep_embedded_ray() -> None:
    """Start ``raygbm.watchdog`` for this process: if it dies without stopping its embedded Ray (SIGKILL),
    the keeper stops Ray's processes within seconds (it exits only after this process does)."""
    import subprocess

    subprocess.Popen([sys.executable, "-m", "raygbm.watchdog", str(os.getpid())], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def free_agent_port() -> None:
    """Let an embedded Ray's dashboard agent take a free port instead of the fixed 52365.

    ``ray.init`` has no argument for it, and ``RayParams`` defaults it to ``DEFAULT_DASHBOARD_AGENT_LISTEN_PORT``
    (ray/_private/parameter.py, Ray 2.60), so a second Ray on the host (another `raygbm serve`, a test
    session beside `make demo`) cannot bind it and its Jobs API answers "No available agent to submit job".
    0 is Ray's own "any free port": the agent reads back the port it bound and registers it with the GCS
    (ray/dashboard/agent.py), where the dashboard finds it. Every other port of an embedded Ray is already
    picked free. This changes that one default for the Ray processes this process starts.
    """
    from ray._private.parameter import RayParams

    init = RayParams.__init__
    names = init.__code__.co_varnames[1:init.__code__.co_argcount]
    defaults = list(init.__defaults__ or ())
    index = names.index("dashboard_agent_listen_port") - (len(names) - len(defaults))
    defaults[index] = 0
    init.__defaults__ = tuple(defaults)


def loopback_node() -> None:
    """Make the local Ray this process is about to start a single-node instance on 127.0.0.1.

    Ray binds its gRPC servers (GCS, raylet, every worker and actor), its agents and its metrics
    exporters on loopback only when the node's IP is 127.0.0.1; but on Linux it turns a local node's
    127.0.0.1 into the host's network address so that other nodes can join. An embedded Ray never has
    other nodes, so take Ray's single-node mode unless the user set the variable. Ray reads it when
    ``ray`` is imported (a Ray imported earlier gets the same value set on its constant), and the
    processes Ray starts inherit it.
    """
    os.environ.setdefault(SINGLE_NODE_ENV, "0")
    if "ray" in sys.modules:  # imported already (a library user, a test session): Ray read the variable then
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ[SINGLE_NODE_ENV].lower() in ("1", "true")


# Serve calls the function this names in each process that starts an HTTP server, before starting it.
HTTP_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
HTTP_CALLBACK = "raygbm.serving.http_guard:install"
HTTP_LIMITS_ENV = "RAYGBM_HTTP_LIMITS"
HTTP_LIMIT_FIELDS = ("read_timeout_s", "max_headers", "max_header_bytes", "max_body_bytes", "max_batch_body_bytes")


def bounded_http_reads(serve: ServeConfig) -> None:
    """``serve``'s HTTP read limits for every HTTP server Serve will start on the Ray this process is
    about to start: Ray's processes inherit this environment (see ``serving.http_guard``)."""
    os.environ.setdefault(HTTP_CALLBACK_ENV, HTTP_CALLBACK)
    os.environ[HTTP_LIMITS_ENV] = json.dumps(serve.model_dump(include=set(HTTP_LIMIT_FIELDS)))


def replica_grpc_on_node_address() -> None:
    """In a Serve replica: bind the replica's inter-deployment gRPC server on the node's address (127.0.0.1
    on a loopback node) instead of every interface.

    Serve starts that server after the deployment's constructor returns, on the hard-coded address
    ``[::]:0`` (Ray 2.60, ``ray.serve._private.replica``). Callers reach the replica at the node's
    address, so nothing else changes. Call from the deployment's constructor; a no-op on a node whose
    address is IPv6 (Ray's own bind stays).
    """
    import ray
    from ray.serve._private import replica

    node_ip = ray.util.get_node_ip_address()
    if ":" in node_ip or getattr(replica, "_raygbm_grpc_bound", False):
        return
    bind = replica.add_port_to_grpc_server

    def on_node_address(server: object, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{node_ip}:" + address.removeprefix("[::]:")
        return bind(server, address)

    replica.add_port_to_grpc_server = on_node_address
    replica._raygbm_grpc_bound = True


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def direct_ingress_on_node_address() -> None:
    """In a Serve replica on a node with a network address: bind the replica's own HTTP server (fast
    ingress) on the node's address when the endpoint's host is a loopback one.

    Every node's HAProxy reaches a replica on another node at that node's address (Ray 2.60,
    ``ray.serve._private.haproxy``, ``_target_to_server``), but Serve binds the replica's server on
    ``http_options.host`` (``ray.serve._private.replica``, ``start_http_server``): with ``127.0.0.1``
    (cluster/serve.yaml) no other node could reach it, where the node's address keeps it off every other
    interface. ``raygbm.haproxy_launch`` points the node's own HAProxy at that address too (Ray's names
    same-node replicas 127.0.0.1). Call from the deployment's constructor; a no-op on a loopback node, with
    another host, or without direct ingress.
    """
    import ray
    from ray.serve._private import replica

    node_ip = ray.util.get_node_ip_address()
    if node_ip in LOOPBACK_HOSTS or getattr(replica, "_raygbm_node_address", False):
        return
    start = replica.start_asgi_http_server

    async def on_node_address(app: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        if options.host in LOOPBACK_HOSTS:
            options = options.model_copy(update={"host": node_ip})
        return await start(app, options, *args, **kwargs)

    replica.start_asgi_http_server = on_node_address
    replica._raygbm_node_address = True


# Serve's HAProxy + direct ingress (serve.fast_ingress), as every node must have it when Ray starts there:
# Serve reads these when its controller, proxies and replicas start. cluster/local/env.sh and the image
# (cluster/image/Dockerfile) set the same (tests/unit/test_cluster_files.py).
FAST_INGRESS_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Serve's throughput settings (direct ingress, user code on the replica's event loop, frozen GC).
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # They also hold the replicas' log lines until 1,000 have come (or an error): with Serve's access log
    # off (serve.access_log) that is hours of silence, warnings included.
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
    # A stopping direct-ingress replica keeps serving this long so the load balancer can drop it first.
    # Ray's 30 s suits an external balancer's health checks; the HAProxy here runs on the same node and
    # the Serve controller reloads it within a second, so 30 s only delays every scale-down and shutdown.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}


def enable_fast_ingress() -> None:
    """Ray Serve's HAProxy + direct ingress for a Ray this process is about to start (``FAST_INGRESS_ENV``),
    with HAProxy started through raygbm.haproxy_launch: no socket on every interface, 503 for a lost replica,
    bounded reads."""
    for name, value in FAST_INGRESS_ENV.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("RAY_SERVE_HAPROXY_BINARY_PATH", haproxy_launcher())
    # Serve's Python proxy stays on as HAProxy's backup server (for when no replica is up), on a fixed
    # port (8500, RAY_SERVE_FALLBACK_PROXY_HTTP_PORT) that a second endpoint on the host cannot bind.
    os.environ.setdefault("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", str(free_port()))


# Where ``free_port`` picks: below the kernel's range for port-0 binds (Linux's default 32768-60999) and
# above Ray's worker ports (``min_worker_port``/``max_worker_port``, 10002-19999). Such a port is bound
# seconds after it is picked (Ray's fallback proxy, once Ray and Serve have started); a port from the
# kernel's range can meanwhile go to any process binding port 0, Ray's own servers included (CI: the second
# of two endpoints on a host failed with "Failed to bind to address '127.0.0.1:44049'").
PICK_PORTS = (20000, 32767)


def ephemeral_ports() -> tuple[int, int] | None:
    """The kernel's range for port-0 binds, where known (Linux)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, for a server of Ray's that has a fixed default: a random one of
    ``PICK_PORTS`` outside the kernel's port-0 range (the OS's own pick if none is free there)."""
    import random
    import socket

    ephemeral = ephemeral_ports()
    pick = random.SystemRandom()
    for _ in range(64):
        port = pick.randint(*PICK_PORTS)
        if ephemeral is not None and ephemeral[0] <= port <= ephemeral[1]:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:  # taken
                continue
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def haproxy_launcher() -> str:
    """The ``raygbm-haproxy`` console script beside this interpreter (the package's own install)."""
    import shutil

    beside = Path(sys.executable).with_name("raygbm-haproxy")
    found = str(beside) if beside.exists() else shutil.which("raygbm-haproxy")
    if not found:
        raise RuntimeError("raygbm-haproxy is not installed beside raygbm (pip install raygbm installs both)")
    return found


def enable_token_auth() -> None:
    """``RAY_AUTH_MODE=token`` unless the user chose otherwise.

    Ray reads the mode into its C++ config when ``ray`` is imported, so setting the variable afterwards
    also needs the config reloaded, as Ray itself does when it turns token auth on.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config

    Config.initialize("")


def ensure_private_token() -> Path | None:
    """Make sure the token file a new local cluster uses exists and is readable by its owner only.

    Ray would generate ``~/.ray/auth_token`` itself, but with the process umask (often world-readable).
    """
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path


class StopSignals:
    """SIGTERM (systemd, Docker, Kubernetes) and SIGINT (Ctrl-C) caught from construction on, for an entry
    point that runs until stopped. Construct it after ``ray.init``: Ray's core installs handlers in this
    process that, on SIGTERM, print a native stack dump and abort instead of letting the entry point shut
    down; these Python handlers replace them."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.received.append(signal.Signals(signum).name)
        self._stop.set()

    def wait(self) -> str:
        """Block until a stop signal has come (at once if one came already); returns its name."""
        while not self._stop.wait(1.0):
            pass
        return self.received[0]


def stop_serving() -> None:
    """Serve's applications deleted first, then Serve and Ray: deleting an application stops routing to it
    while its replicas answer the requests they hold (their ``graceful_shutdown_timeout_s``, ``serve.drain_s``)
    and the proxy, still up, delivers the answers. ``serve.shutdown`` alone stops the proxies at the same
    time as the replicas, and the requests in flight lose their connections. An embedded Ray stops with this
    process; a cluster named by ``RAY_ADDRESS`` keeps running."""
    import ray
    from ray import serve

    try:
        for name in list(serve.status().applications):
            serve.delete(name)
    finally:
        serve.shutdown()
        ray.shutdown()
