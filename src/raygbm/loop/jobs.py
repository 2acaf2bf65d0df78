"""Retraining as a Ray Job: ``raygbm retrain`` submitted through the Jobs API of the Ray this process is
connected to (the embedded one's dashboard, or a cluster's), never run inside a serving replica.

The Jobs API client sends Ray's auth token itself when token auth is on (``RAY_AUTH_MODE=token``, the token
from ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``, as ``ensure_ray`` set them up). The trigger's id is the
job's submission id: Ray refuses a second job with the same one, so a trigger submits at most once.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from raygbm.config import PipelineConfig
from raygbm.loop.triggers import Trigger
from raygbm.paths import home


def dashboard_address() -> str:
    """The Jobs API of the Ray this process is connected to (``ray.init`` first; a driver or, like the loop's
    controller, a replica: a worker process knows the address through the GCS's key-value store)."""
    from ray._private.services import get_webui_url_from_internal_kv
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url() or get_webui_url_from_internal_kv()
    if not url:
        from raygbm.errors import JobsApiUnreachable

        raise JobsApiUnreachable("this Ray has no dashboard, so no Jobs API to submit a retraining to")
    return url if "://" in url else f"http://{url}"


def submission_id(model_name: str, trigger_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"raygbm-retrain-{model_name}-{trigger_id}")


def write_job_config(cfg: PipelineConfig, folder: Path) -> Path:
    """The pipeline config the job reads (the whole tree, so it retrains exactly as configured), staged."""
    folder.mkdir(parents=True, exist_ok=True)
    # The job runs in its own working directory: local paths made absolute.
    local = lambda v: v if v is None or "://" in v else str(Path(v).expanduser().resolve())  # noqa: E731
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"source": local(cfg.data.source),
                                            "extra_shards": [local(e) for e in cfg.data.extra_shards]}),
        "monitor": cfg.monitor.model_copy(update={"log_dir": local(cfg.monitor.log_dir)})})
    path = folder / "retrain-config.yaml"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    tmp.replace(path)
    return path


def entrypoint(config_path: Path, trigger: Trigger) -> str:
    """The job's command: this interpreter on an embedded Ray (same machine), ``python`` on a cluster (the
    head's environment, e.g. cluster/local's venv). ``--ok-if-rejected``: a challenger the gate rejects is
    the loop's decision (recorded in its state), so the job still succeeds."""
    python = "python" if os.environ.get("RAY_ADDRESS") else sys.executable
    args = [python, "-m", "raygbm.cli", "retrain", "--config", str(config_path), "--trigger", trigger.id,
            "--reason", trigger.reason, "--kind", trigger.kind, "--ok-if-rejected"]
    return " ".join(shlex.quote(a) for a in args)


class JobSubmitter:
    """Submits retraining jobs for one pipeline config and reads their status. The Jobs API client is made
    on first use: a dashboard that is not up yet fails a submission (retried by the controller), not the
    controller's start."""

    def __init__(self, cfg: PipelineConfig, address: str | None = None, folder: Path | None = None):
        self.cfg, self.address, self._client = cfg, address, None
        self.folder = folder or home() / "loop" / cfg.registry.model_name
        self.config_path = write_job_config(cfg, self.folder)

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self.address or dashboard_address())
        return self._client

    def submit(self, trigger: Trigger) -> str:
        sid = submission_id(self.cfg.registry.model_name, trigger.id)
        env = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI",) if k in os.environ}
        env["RAYGBM_HOME"] = str(home())
        try:
            return self.client.submit_job(entrypoint=entrypoint(self.config_path, trigger), submission_id=sid,
                                          runtime_env={"env_vars": env},
                                          metadata={"raygbm": "retrain", "trigger": trigger.id})
        except RuntimeError as exc:
            if "already exists" in str(exc):  # this trigger's job was submitted before (another controller)
                return sid
            raise

    def status(self, job_id: str) -> str:
        return str(self.client.get_job_status(job_id).value)

    def info(self, job_id: str) -> dict[str, Any]:
        job = self.client.get_job_info(job_id)
        return {"id": job_id, "status": str(job.status.value), "message": job.message}
