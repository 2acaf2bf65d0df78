"""The loop as part of the deployed application: ``LoopController``, a one-replica Serve deployment bound
into the app beside ``ModelServer`` (``raygbm.application``), so ``raygbm serve``, ``serve deploy
cluster/serve.yaml`` and a RayService all run the same loop wherever the endpoint runs.

Why a deployment (not a thread of the CLI, not a detached actor): Serve's controller restarts its replica
when the process dies or ``check_health`` fails, a redeploy with another config replaces it, and deleting
the app stops it; a detached actor would outlive ``serve delete`` and keep submitting jobs. A restarted
controller resumes from the state file (``monitoring.loop_state``): the triggers it recorded are not
fired again and a trigger's job keeps its submission id, which the Jobs API refuses twice, so a restart
never submits a duplicate job. Its replica is placed on the head node, where the Jobs API is.
"""

# No ``from __future__ import annotations``: Serve ships the deployment class by value.
import logging
import os
from typing import Any

from ray import serve

from raygbm.config import PipelineConfig

log = logging.getLogger(__name__)

# Ray's resource on the head node only (``ray._common.constants.HEAD_NODE_RESOURCE_NAME``).
HEAD_NODE = "node:__internal_head__"


@serve.deployment(name="LoopController", num_replicas=1, max_ongoing_requests=16, health_check_period_s=5,
                  graceful_shutdown_timeout_s=5,
                  ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE: 0.001}})
class LoopController:
    """Runs ``loop.runner.LoopRunner`` (triggers, jobs, gate, rollback) in a thread of its replica.

    ``cfg``: the whole pipeline config (as JSON), ``env``: what the retraining jobs and the registry need
    from the deploying side (``RAYGBM_HOME``, ``MLFLOW_TRACKING_URI``), since a replica's environment is
    the cluster's.
    """

    def __init__(self, cfg: dict[str, Any], env: dict[str, str]):
        from raygbm.loop.runner import start_loop
        from raygbm.runtime import replica_grpc_on_node_address

        replica_grpc_on_node_address()  # as every replica of ours: no server on every interface
        os.environ.update(env)
        self.cfg = PipelineConfig.model_validate(cfg)
        self.runner = start_loop(self.cfg)

    async def status(self) -> dict[str, Any]:
        """What ``GET /retrain`` answers: the loop's record and this controller's health."""
        from raygbm.monitoring.loop_state import public

        return {**public(self.runner.state.read()), "controller": self.runner.health()}

    def check_health(self) -> None:
        if not self.runner.alive():  # Serve replaces a replica whose loop thread ended
            raise RuntimeError("the loop's thread is not running")

    def __del__(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.stop()
