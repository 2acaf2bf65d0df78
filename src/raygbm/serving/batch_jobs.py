"""Parquet batch jobs started from the endpoint: ``POST /predict/batch`` with ``{"input": PATH_OR_URI}``.

A job is a Ray task on the replica's node that runs a Ray batch scoring job (``raygbm.predict``) into a
folder per job; its state is a JSON status file beside that folder, so any replica (or a person) can
tell how a job went. Inputs are restricted to ``serve.batch_input_roots``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from raygbm.paths import write_text_atomic
from raygbm.serving.request import RequestError

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_TRACKED = 1000  # running jobs a replica follows before it forgets finished ones nobody polled


def allowed_input(source: str, roots: list[str]) -> bool:
    """``source`` lies under one of ``roots``: local paths compared after resolving ``..`` and links,
    URIs by prefix (and never with a ``..`` segment)."""
    if "://" in source:
        if ".." in source.split("://", 1)[1].split("/"):
            return False
        return any(r.rstrip("/") and (source == r.rstrip("/") or source.startswith(r.rstrip("/") + "/"))
                   for r in roots if "://" in r)
    path = Path(source).resolve()
    allowed = [Path(r).resolve() for r in roots if "://" not in r]
    return any(path == root or root in path.parents for root in allowed)


def job_input(body: bytes, roots: list[str]) -> str:
    """The dataset a job request names, checked against ``roots`` (a :class:`RequestError` otherwise)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("body is not valid JSON", 400) from None
    except RecursionError:
        raise RequestError("body is nested too deeply", 400) from None
    if not isinstance(doc, dict) or set(doc) != {"input"} or not isinstance(doc["input"], str) or not doc["input"]:
        raise RequestError('expected {"input": "<Parquet file, folder or URI>"} and nothing else', 422)
    source = doc["input"]
    if not roots:
        raise RequestError("Parquet batch jobs are off: list the folders they may read in serve.batch_input_roots", 403)
    if "\x00" in source or len(source) > 4096 or ("://" not in source and not source.startswith("/")):
        raise RequestError("input must be an absolute path or a URI", 422)
    try:
        if not allowed_input(source, roots):
            raise RequestError("input is outside serve.batch_input_roots", 403)
        if "://" not in source and not Path(source).exists():
            raise RequestError("input does not exist", 404)
    except OSError:  # e.g. a name too long for the filesystem
        raise RequestError("input is not a usable path", 422) from None
    return source


def run_batch_job(job_id: str, source: str, jobs: str, bundle: str, version: str) -> None:
    """The job itself (a Ray task): score ``source`` into ``jobs/<job_id>``, then write the status file."""
    from raygbm.predict import predict_dataset

    doc = {"job_id": job_id, "input": source, "model_version": version, "started": time.time()}
    try:
        out = predict_dataset(source, Path(jobs) / job_id, Path(bundle))
        doc.update(status="succeeded", output=str(Path(jobs) / job_id), rows=out["rows"], files=out["files"],
                   seconds=round(out["seconds"], 3))
    except Exception as exc:  # the job's outcome is its status document, never a lost exception
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        doc.update(status="failed", error=msg[:500])
    doc["finished"] = time.time()
    write_text_atomic(Path(jobs) / f"{job_id}.json", json.dumps(doc))


class BatchJobs:
    """The jobs one replica starts (and the status files of every replica's jobs under ``output_dir``)."""

    def __init__(self, output_dir: str, input_roots: list[str]):
        self.output_dir = Path(output_dir)  # absolute: resolved where the app was deployed
        self.input_roots = input_roots
        self.running: dict[str, Any] = {}  # this replica's jobs: id -> the task's ObjectRef

    def submit(self, body: bytes, bundle: Path, version: str) -> dict[str, str]:
        """Start scoring the dataset ``body`` names with the bundle at ``bundle``; the 202 answer."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        source = job_input(body, self.input_roots)
        job_id = uuid.uuid4().hex
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._write(job_id, {"job_id": job_id, "status": "running", "input": source, "model_version": version,
                             "started": time.time()})
        # On this replica's node, where the verified bundle is; num_cpus=0 because it only drives the Ray
        # Data job (whose tasks take the CPUs), so it cannot hold a CPU those tasks wait for.
        task = ray.remote(run_batch_job).options(
            num_cpus=0, max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False))
        self._forget_finished()
        self.running[job_id] = task.remote(job_id, source, str(self.output_dir), str(bundle), version)
        return {"job_id": job_id, "status": "running", "status_url": f"/predict/batch/{job_id}"}

    def status(self, job_id: str) -> dict[str, Any] | None:
        """A job's status document (None: no such job); a job whose process died is marked failed."""
        path = self.output_dir / f"{job_id}.json"
        if not JOB_ID.match(job_id) or not path.exists():
            return None
        doc = json.loads(path.read_text())
        ref = self.running.get(job_id)
        if ref is None:  # a job started by another replica is followed through its status file only
            return doc
        import ray

        if doc["status"] == "running" and not ray.wait([ref], timeout=0)[0]:
            return doc
        if doc["status"] == "running":
            try:
                ray.get(ref)
            except Exception as exc:  # the job's process died before it could write its outcome
                doc.update(status="failed", error=f"the job's worker died: {type(exc).__name__}", finished=time.time())
                self._write(job_id, doc)
        self.running.pop(job_id, None)
        return doc

    def _forget_finished(self) -> None:
        """Past ``MAX_TRACKED`` jobs, drop the finished ones nobody polled (their status files stay)."""
        if len(self.running) < MAX_TRACKED:
            return
        import ray

        done, _ = ray.wait(list(self.running.values()), num_returns=len(self.running), timeout=0)
        finished = set(done)
        self.running = {k: r for k, r in self.running.items() if r not in finished}

    def _write(self, job_id: str, doc: dict[str, Any]) -> None:
        write_text_atomic(self.output_dir / f"{job_id}.json", json.dumps(doc))
