"""Putting the endpoint on a Ray cluster: deploy, swap the model, and Serve's app builder.

``deploy`` and ``swap_model`` run in the deploying process (the CLI, a test, a script) with Ray up;
``raygbm.application`` adds the loop's controller to the app they build (``loop``: a bound deployment,
opaque here) and holds the app builder that ``serve deploy cluster/serve.yaml`` imports. Everything a
replica needs from the deploying side (absolute paths, the tracking URI, the token's hash) is resolved
here, because a replica's working directory and environment are the cluster's.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from raygbm.config import MonitorConfig, RegistryConfig, ServeConfig
from raygbm.errors import RaygbmError
from raygbm.monitoring.actor import resolved_monitor, start_monitor
from raygbm.serving.model_slot import ModelSpec

APP_NAME = "raygbm"


def model_spec(registry_cfg: RegistryConfig, version: str | None = None) -> ModelSpec:
    """The model a deployment serves (resolved now, pinned by hash): its ``user_config``."""
    from raygbm.paths import home
    from raygbm.registry.store import Registry, RegistryError, tracking_uri

    ref = Registry(registry_cfg).get(version)
    if ref is None:
        raise RegistryError(f"no champion model yet for {registry_cfg.model_name!r}: run `raygbm run` first")
    # Deployed as "the champion": replicas keep following the alias (serve.champion_poll_s).
    return ModelSpec(model_name=ref.name, version=ref.version, tracking_uri=tracking_uri(), home=str(home().resolve()),
                     manifest_sha256=ref.tags.get("manifest_sha256"), follow=version is None or version == "champion")


def build_app(serve_cfg: ServeConfig, monitor_cfg: MonitorConfig, model: ModelSpec,
              token_sha256: str | None = None, code_version: str | None = None, loop: Any = None) -> Any:
    """The Serve application: the ``ModelServer`` deployment sized by ``serve`` (autoscaled when
    ``serve.autoscaling`` is set), serving ``model``; with ``loop`` (the loop's bound controller
    deployment) the app holds it too, and ``GET /retrain`` asks it.

    With ``token_sha256`` every route but the probes needs ``Authorization: Bearer <token>``; only the
    token's hash travels in the deployment's arguments (visible in Serve's config), never the token.
    ``code_version`` (see :func:`code_version`) lets a later ``serve.run`` that changes only the model
    reconfigure the live replicas instead of replacing them.
    """
    from raygbm.paths import home
    from raygbm.serving.app import ModelServer

    out_dir = Path(serve_cfg.batch_output_dir).expanduser() if serve_cfg.batch_output_dir else home() / "batch-jobs"
    serve_cfg = serve_cfg.model_copy(update={"batch_output_dir": str(out_dir.resolve())})
    monitor_cfg = resolved_monitor(monitor_cfg)  # replicas write the prediction log's write-ahead files there
    sizing = ({"autoscaling_config": serve_cfg.autoscaling.model_dump()} if serve_cfg.autoscaling
              else {"num_replicas": serve_cfg.num_replicas})
    server = ModelServer.options(
        user_config=model.to_user_config(), ray_actor_options={"num_cpus": serve_cfg.replica_cpus},
        # Serve writes an access-log line per request from the replica's event loop, buffered and flushed
        # 1,000 at a time with a rollover check per line: a stall of every request in flight once a
        # second under load. Off unless asked for.
        logging_config={"enable_access_log": serve_cfg.access_log},
        # A replica stopping (shutdown, scale-down, redeploy) answers what it holds first; checked often so
        # that an idle one goes at once.
        graceful_shutdown_timeout_s=serve_cfg.drain_s, graceful_shutdown_wait_loop_s=0.1, **sizing)
    if code_version:
        pin(server, code_version)
    return server.bind(serve_cfg.model_dump(mode="json"), monitor_cfg.model_dump(mode="json"), token_sha256, loop)


def pin(deployment: Any, version: str) -> None:
    """Give ``deployment`` (from ``.options()``) an explicit version. Ray 2.60 took ``version`` out of
    ``options()`` but still sends ``_version`` to the controller, which compares it to decide between
    reconfiguring live replicas and replacing them."""
    deployment._version = version


def versioned(*parts: Any) -> str:
    """A deployment version: raygbm's code (every module of the package) and ``parts`` (JSON), hashed."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for src in sorted(package.rglob("*.py")):
        h.update(str(src.relative_to(package)).encode() + b"\0" + src.read_bytes())
    h.update(json.dumps(list(parts), sort_keys=True).encode())
    return h.hexdigest()[:16]


def code_version(serve_cfg: ServeConfig, monitor_cfg: MonitorConfig, token_sha256: str | None,
                 with_loop: bool = False) -> str:
    """What a replica is built from (raygbm's code, the serve and monitor config, the token's hash), hashed.

    ``serve.run`` gives a deployment without an explicit version a random one, so every run would be a
    rolling update: new replica processes, each reloading the model, and (with HAProxy) the old ones
    draining. With this version a run that changes only ``user_config`` (the model) is a lightweight
    update: Serve calls ``reconfigure`` on the live replicas.
    """
    return versioned(serve_cfg.model_dump(mode="json"), monitor_cfg.model_dump(mode="json"), token_sha256, with_loop)


def token_sha256(serve_cfg: ServeConfig) -> str | None:
    """The sha256 of ``RAYGBM_ENDPOINT_TOKEN`` when ``serve.require_token`` is on."""
    if not serve_cfg.require_token:
        return None
    token = os.environ.get("RAYGBM_ENDPOINT_TOKEN", "")
    if len(token) < 16:
        raise RaygbmError("serve.require_token is on: set RAYGBM_ENDPOINT_TOKEN to a secret of at least 16 characters")
    return hashlib.sha256(token.encode()).hexdigest()


def _run_pinned(serve_cfg: ServeConfig, monitor_cfg: MonitorConfig, model: ModelSpec, loop: Any = None) -> None:
    """``serve.run`` of the app under its :func:`code_version`, a failed deployment reported as one line
    (the replica's own error)."""
    from ray import serve

    token = token_sha256(serve_cfg)
    app = build_app(serve_cfg, monitor_cfg, model, token, code_version(serve_cfg, monitor_cfg, token, loop is not None),
                    loop)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        cause = next((ln for ln in reversed(lines) if "Error:" in ln), lines[0] if lines else str(exc))
        raise RaygbmError(f"deploying the endpoint failed: {cause}") from None


def deploy(registry_cfg: RegistryConfig, serve_cfg: ServeConfig, monitor_cfg: MonitorConfig,
           version: str | None = None, loop: Any = None) -> str:
    """Start Serve's HTTP proxy on ``serve.host:port`` and deploy the model (and ``loop``, the loop's bound
    controller, when given); returns the URL. Ray must be up."""
    from ray import serve

    model = model_spec(registry_cfg, version)
    token_sha256(serve_cfg)  # a missing token fails before anything starts
    if monitor_cfg.enabled:
        start_monitor(monitor_cfg)
    # The proxy logs every request too (see the deployment's logging_config).
    serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port},
                logging_config={"enable_access_log": serve_cfg.access_log})
    _run_pinned(serve_cfg, monitor_cfg, model, loop)
    return f"http://{serve_cfg.host}:{serve_cfg.port}"


def swap_model(registry_cfg: RegistryConfig, serve_cfg: ServeConfig, monitor_cfg: MonitorConfig,
               version: str | None = None, monitor_on: bool = True, loop: Any = None) -> str:
    """Point the running app at another version (default: the current champion) without downtime:
    only ``user_config`` changes, so Serve calls ``reconfigure`` on the live replicas. ``monitor_on``
    pauses or resumes drift monitoring the same way. ``loop``: the app's loop controller, as deployed
    (``serve.run`` replaces the whole app: one left out is removed)."""
    model = replace(model_spec(registry_cfg, version), monitor=monitor_on)
    _run_pinned(serve_cfg, monitor_cfg, model, loop)
    return model.version
