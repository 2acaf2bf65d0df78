"""The deployed application, whole: the endpoint (``serving``), the drift monitor and, when
``retrain.enabled``, the loop's controller (``loop.service``). ``raygbm serve``, ``serve deploy
cluster/serve.yaml`` (``import_path: raygbm.application:app_builder``) and a KubeRay RayService all build
it here, so the loop runs wherever the endpoint runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from raygbm.config import PipelineConfig, ServeConfig, load_config
from raygbm.errors import ConfigError
from raygbm.paths import home


def check(cfg: PipelineConfig) -> None:
    """What the app refuses before anything starts: the loop without the endpoint's token (labels sent to
    /feedback choose the next champion, so whoever sends them must hold the token), and a required token
    that is not set."""
    from raygbm.serving.deploy import token_sha256

    if cfg.retrain.enabled and not cfg.serve.require_token:
        raise ConfigError("retrain.enabled needs serve.require_token: true (the loop retrains on /feedback labels, "
                          "so only clients with RAYGBM_ENDPOINT_TOKEN may send them)")
    token_sha256(cfg.serve)


def cluster_max_replicas(serve_cfg: ServeConfig) -> ServeConfig:
    """``serve.autoscaling.max_replicas: null`` resolved from the cluster's size now: as many replicas as
    its CPUs hold (at least ``min_replicas``, at least 1). Ray must be up."""
    scaling = serve_cfg.autoscaling
    if scaling is None or scaling.max_replicas is not None:
        return serve_cfg
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1))
    most = max(1, scaling.min_replicas, int(cpus // max(serve_cfg.replica_cpus, 0.001)))
    return serve_cfg.model_copy(update={"autoscaling": scaling.model_copy(update={"max_replicas": most})})


def loop_app(cfg: PipelineConfig) -> Any:
    """The loop's controller bound for the app (None when ``retrain.enabled`` is off), its version pinned
    to raygbm's code and the config: a redeploy that changes neither keeps the running controller."""
    if not cfg.retrain.enabled:
        return None
    from raygbm.loop.service import LoopController
    from raygbm.registry.store import tracking_uri
    from raygbm.serving.deploy import pin, versioned

    doc = cfg.model_dump(mode="json")
    env = {"RAYGBM_HOME": str(home()), "MLFLOW_TRACKING_URI": tracking_uri()}
    controller = LoopController.options()
    pin(controller, versioned(doc, env))  # as serving.deploy.build_app pins ModelServer's
    return controller.bind(doc, env)


def resolved(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with what is resolved at deploy time (the autoscaling ceiling from the cluster's size)."""
    return cfg.model_copy(update={"serve": cluster_max_replicas(cfg.serve)})


def deploy(cfg: PipelineConfig, version: str | None = None) -> str:
    """The app on the Ray this process is connected to: the endpoint on ``serve.host:port`` serving
    ``version`` (default: the champion, followed), and the loop when ``retrain.enabled``; returns the URL."""
    from raygbm.serving.deploy import deploy as deploy_endpoint

    check(cfg)
    cfg = resolved(cfg)
    return deploy_endpoint(cfg.registry, cfg.serve, cfg.monitor, version, loop_app(cfg))


def app_builder(args: dict[str, Any]) -> Any:
    """Serve's app builder (``import_path: raygbm.application:app_builder`` in ``cluster/serve.yaml``).

    ``args``: ``config`` (a pipeline config path; relative to ``$RAYGBM_PROJECT``, which ``cluster/local``
    sets, else to the working directory), ``set`` (a list of ``key=value`` overrides) and ``model`` (a
    version, default the champion). The registry is found as the CLI finds it (``RAYGBM_HOME`` /
    ``MLFLOW_TRACKING_URI`` in the cluster's environment).
    """
    from raygbm.monitoring.actor import start_monitor
    from raygbm.serving.deploy import build_app, model_spec, token_sha256

    config = args.get("config")
    if config and not Path(config).is_absolute():
        # The Serve controller's working directory is the cluster's, not the project's.
        config = str(Path(os.environ.get("RAYGBM_PROJECT") or Path.cwd()) / config)
    cfg = load_config(config, list(args.get("set", [])))
    check(cfg)
    cfg = resolved(cfg)
    model = args.get("model", "champion")
    spec = model_spec(cfg.registry, None if model == "champion" else str(model))
    if cfg.monitor.enabled:
        start_monitor(cfg.monitor)
    return build_app(cfg.serve, cfg.monitor, spec, token_sha256(cfg.serve), loop=loop_app(cfg))
