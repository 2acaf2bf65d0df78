"""The endpoint: a Ray Serve application with a FastAPI ingress serving a registered model bundle.

- ``POST /predict``: one record (JSON object) or a list of records → prediction, score, model version
  and a prediction id per record. Parsed strictly (``raygbm.request``) from the raw body: no pydantic
  model on the hot path, numpy rows, ``num_threads=1`` LightGBM per replica, and ``@serve.batch``
  merging concurrent requests into one ``predict`` call.
- ``GET /healthz`` (the process is up), ``GET /readyz`` (a model is loaded), ``GET /model`` (version,
  metrics, request schema with allowed categories), OpenAPI at ``/docs``.
- Model swaps: the model to serve is the deployment's ``user_config`` (name, version, pinned manifest
  hash); changing it calls ``reconfigure`` on each replica in place, which loads and verifies the new
  bundle before switching, so requests in flight finish on the old model and none fail. Deployed as
  "the champion", replicas also poll the registry's alias (``serve.champion_poll_s``) and switch the
  same way when a promotion moves it.
- Hardening: bodies over ``max_body_bytes`` get 413 (checked on Content-Length and while reading, Serve
  itself has no limit); invalid input gets 4xx with a message that never echoes the input; every
  request has a time budget (``request_timeout_s``) enforced in the handler, whatever timeout header
  the client sent to Serve's proxy.
"""


import asyncio
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from raygbm.config import MonitorConfig, ServeConfig
from raygbm.errors import RaygbmError

APP_NAME = "raygbm"


MONITOR_ACTOR = "raygbm-drift-monitor"
FLUSH_ROWS = 512  # rows a replica buffers before sending them to the drift monitor ...
FLUSH_S = 0.25  # ... or after this long


def _model_config(registry_cfg: Any, version: str | None = None) -> dict[str, Any]:
    """The ``user_config`` naming the model a deployment serves (resolved now, pinned by hash)."""
    from raygbm.paths import home
    from raygbm.registry import Registry, RegistryError, tracking_uri

    reg = Registry(registry_cfg)
    ref = reg.get(version)
    if ref is None:
        raise RegistryError(f"no champion model yet for {registry_cfg.model_name!r}: run `raygbm run` first")
    return {
        "model_name": ref.name,
        "version": ref.version,
        "manifest_sha256": ref.tags.get("manifest_sha256"),
        "tracking_uri": tracking_uri(),
        "home": str(home().resolve()),
        # Deployed as "the champion": replicas keep following the alias (serve.champion_poll_s).
        "follow": version is None or version == "champion",
    }


def build_app(serve_cfg: ServeConfig, monitor_cfg: MonitorConfig, model: dict[str, Any], token_sha256: str | None = None,
              code_version: str | None = None) -> Any:
    """The Serve application: one ingress deployment (autoscaled when ``serve.autoscaling`` is set).

    With ``token_sha256`` every route but the probes needs ``Authorization: Bearer <token>``; only the
    token's hash travels in the deployment's arguments (visible in Serve's config), never the token.
    ``code_version`` (see :func:`code_version`) lets a later ``serve.run`` that changes only the model
    reconfigure the live replicas instead of replacing them.
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from ray import serve

    from raygbm.evaluate import features_matrix
    from raygbm.paths import home
    from raygbm.request import RequestError

    # Resolved here, in the deploying process: a replica's cwd and environment are the cluster's.
    out_dir = Path(serve_cfg.batch_output_dir).expanduser() if serve_cfg.batch_output_dir else home() / "batch-jobs"
    serve_cfg = serve_cfg.model_copy(update={"batch_output_dir": str(out_dir.resolve())})

    api = FastAPI(title="raygbm", description="LightGBM model served by raygbm", version="1")
    served: dict[str, Any] = {"schema": None}  # the loaded model's request schema, for /openapi.json

    def openapi() -> dict[str, Any]:
        # The /predict body is parsed by hand (raygbm.request), so its schema is added here from the
        # loaded model: clients and fuzzers see the real fields, types and known categories.
        if api.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
            if served["schema"] is not None:
                body = doc["paths"]["/predict"]["post"].setdefault("requestBody", {"required": True, "content": {}})
                body["content"]["application/json"] = {"schema": served["schema"].json_schema()}
            api.openapi_schema = doc
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]

    @api.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default handler echoes the input back (and fails with a 500 on a bare NaN).
        where = [".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()][:5]
        return JSONResponse({"error": "invalid request", "fields": where}, status_code=422)

    if token_sha256:
        import hashlib
        import hmac

        @api.middleware("http")
        async def _auth(request: Request, call_next: Any) -> Any:
            if request.url.path not in ("/healthz", "/readyz"):
                given = request.headers.get("authorization", "")
                token = given[7:] if given.lower().startswith("bearer ") else ""
                if not hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), token_sha256):
                    return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                        headers={"www-authenticate": "Bearer"})
            return await call_next(request)

    @api.exception_handler(RequestError)
    async def _bad(_request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @serve.deployment(
        name="ModelServer",
        max_ongoing_requests=256,
        ray_actor_options={"num_cpus": serve_cfg.replica_cpus},
        health_check_period_s=2,
        # Serve writes an access-log line per request from the replica's event loop, buffered and flushed
        # 1,000 at a time with a rollover check per line: a ~20-30 ms stall of every request in flight,
        # once a second at 1,000 requests/s (the p99 at concurrency 1). Off unless asked for.
        logging_config={"enable_access_log": serve_cfg.access_log},
        **({"autoscaling_config": serve_cfg.autoscaling.model_dump()} if serve_cfg.autoscaling
           else {"num_replicas": serve_cfg.num_replicas}),
    )
    @serve.ingress(api)
    class ModelServer:
        def __init__(self, settings: dict[str, Any], monitor: dict[str, Any]):
            self.settings = ServeConfig.model_validate(settings)
            self.monitor_cfg = MonitorConfig.model_validate(monitor)
            self.model: Any = None
            self.version: str | None = None
            self.served = 0
            self.unseen = 0
            self.dropped = 0  # monitor batches dropped since the last one delivered
            self.monitor = _monitor_handle() if self.monitor_cfg.enabled else None
            self.monitor_on = self.monitor is not None
            self._buffer: list[tuple[Any, np.ndarray, np.ndarray, np.ndarray]] = []
            self._buffered = 0
            self._flusher: Any = None
            self._batched.set_max_batch_size(self.settings.max_batch_size)
            self._batched.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
            import threading

            self._switch_lock = threading.Lock()
            self.user_config: dict[str, Any] = {}
            self.champion_check: dict[str, Any] = {"checked_at": None, "error": None}
            self._registry: Any = None  # the registry the follower reads, for (model name, tracking URI) ...
            self._registry_key: tuple[str, str] | None = None  # ... this key
            if self.settings.champion_poll_s > 0:
                # A thread, not a task on Serve's event loop: registry calls and model loading block, and
                # requests must keep being answered by the current model meanwhile.
                threading.Thread(target=self._follow_champion, name="raygbm-champion", daemon=True).start()

        def reconfigure(self, user_config: dict[str, Any]) -> None:
            """Load (and verify) the named model, then switch to it: in-flight requests keep the old one.
            ``monitor: false`` pauses sending to the drift monitor without restarting replicas;
            ``follow: true`` (deployed as "the champion") keeps following the registry's alias."""
            self.monitor_on = self.monitor is not None and bool(user_config.get("monitor", True))
            if self._follows(user_config):
                # A replica started after a promotion (autoscaling, a restart) gets the deployment's
                # original user_config: start on the alias's current version, like its peers.
                user_config = self._current_champion(user_config)
            with self._switch_lock:
                self.user_config = user_config
                if user_config.get("version") != self.version:
                    self._switch(_load_model(user_config, self.settings))

        def _follows(self, user_config: dict[str, Any]) -> bool:
            return bool(user_config.get("follow")) and self.settings.champion_poll_s > 0

        def _current_champion(self, user_config: dict[str, Any], quiet: bool = True) -> dict[str, Any]:
            """``user_config`` pointed at the registry's current champion (unchanged if there is none)."""
            from raygbm.config import RegistryConfig
            from raygbm.registry import Registry

            key = (user_config["model_name"], user_config["tracking_uri"])
            try:
                if self._registry_key != key:
                    self._registry = Registry(RegistryConfig(model_name=key[0]), uri=key[1])
                    self._registry_key = key
                ref = self._registry.get(None)
            except Exception:
                if not quiet:
                    raise
                return user_config  # unreachable registry: serve what was deployed; the follower retries
            if ref is None or ref.version == user_config.get("version"):
                return user_config
            return {**user_config, "version": ref.version, "manifest_sha256": ref.tags.get("manifest_sha256")}

        def _follow_champion(self) -> None:
            """Every ``serve.champion_poll_s``: when this replica serves "the champion" and the registry's
            alias has moved, load and verify that version beside the current one, then switch (no request
            fails: a request holds the model it started with). A failed check keeps the current model and
            shows in ``GET /model``."""
            import time

            while True:
                time.sleep(self.settings.champion_poll_s)
                uc = self.user_config
                if not self._follows(uc):
                    continue
                try:
                    target = self._current_champion(uc, quiet=False)
                    if target["version"] != self.version:
                        model = _load_model(target, self.settings)
                        with self._switch_lock:
                            if self.user_config is uc:  # no redeploy or pinning happened meanwhile
                                self.user_config = target
                                self._switch(model)
                    self.champion_check = {"checked_at": time.time(), "error": None}
                except Exception as exc:  # keep serving the current model; report why the check failed
                    self.champion_check = {"checked_at": time.time(), "error": f"{type(exc).__name__}: {exc}"}

        def _switch(self, model: Any) -> None:
            self.model = model
            self.version = model.version
            served["schema"] = self.model.schema
            api.openapi_schema = None  # regenerate /docs for the new model
            if self.monitor is not None and self.model.reference is not None:
                import ray

                # Idempotent per version: the first replica to load a model sets the reference.
                ray.get(self.monitor.set_reference.remote(self.model.version, self.model.reference, self.model.names,
                                                          list(self.model.schema.fields), self.model.name))

        def _to_monitor(self, model: Any, features: np.ndarray, scores: np.ndarray, missing: np.ndarray) -> None:
            """Buffer rows for the monitor; they leave in one call per ``FLUSH_ROWS`` rows or ``FLUSH_S``
            seconds (a Ray call per request would cost more than the prediction)."""
            buf = self._buffer
            if buf and buf[0][0] is not model:
                self._flush()
            buf.append((model, features, scores, missing))
            self._buffered += len(features)
            if self._buffered >= FLUSH_ROWS:
                self._flush()
            elif self._flusher is None:
                self._flusher = asyncio.get_running_loop().call_later(FLUSH_S, self._flush)

        def _flush(self) -> None:
            """Fire and forget: nothing waits on the monitor; when its queue is full the batch is dropped
            and counted (and the count travels with the next batch that gets through)."""
            from ray.exceptions import PendingCallsLimitExceeded

            if self._flusher is not None:
                self._flusher.cancel()
                self._flusher = None
            buf, self._buffer, self._buffered = self._buffer, [], 0
            if not buf:
                return
            model = buf[0][0]
            missing = np.concatenate([b[3] for b in buf])
            features = np.concatenate([b[1] for b in buf])
            scores = np.concatenate([b[2] for b in buf])
            try:
                self.monitor.observe.remote(model.version, features, scores, missing, self.dropped, time.time())
                self.dropped = 0
            except PendingCallsLimitExceeded:
                self.dropped += 1

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
        async def _batched(self, items: list[tuple[Any, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
            # One LightGBM call for every request that arrived together (grouped by model during a swap).
            groups: dict[int, list[int]] = {}
            for i, (model, _, _) in enumerate(items):
                groups.setdefault(id(model), []).append(i)
            out: list[Any] = [None] * len(items)
            for idx in groups.values():
                model = items[idx[0]][0]
                rows = np.concatenate([items[i][1] for i in idx])
                scores = model.booster.predict(rows, num_threads=1)
                start = 0
                for i in idx:
                    n = len(items[i][1])
                    out[i] = scores[start:start + n]
                    start += n
                if self.monitor_on and model.reference is not None:
                    self._to_monitor(model, rows, scores, np.concatenate([items[i][2] for i in idx]))
            return out

        @api.post("/predict", summary="Score one record or a list of records",
                  openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                      "description": "one record or a list of records; see GET /model for the fields"}}}}})
        async def predict(self, request: Request) -> JSONResponse:
            model = self.model
            if model is None:
                return JSONResponse({"error": "no model loaded yet"}, status_code=503)
            body = await _read_body(request, self.settings.max_body_bytes)
            parsed = model.schema.parse(body)
            try:
                scores = await asyncio.wait_for(self._batched((model, parsed.features, parsed.missing)),
                                                self.settings.request_timeout_s)
            except asyncio.TimeoutError:
                return JSONResponse({"error": f"prediction took longer than {self.settings.request_timeout_s}s"}, status_code=503)
            self.served += len(parsed.features)
            self.unseen += parsed.unseen
            results = model.results(scores)
            if body.lstrip()[:1] == b"{":
                return JSONResponse({**results[0], "model_version": model.version})
            return JSONResponse({"predictions": results, "model_version": model.version})

        @api.post("/predict/batch", summary="Score a table (Arrow IPC or CSV body), or start a job over a Parquet dataset",
                  description="An Arrow IPC stream or CSV body is scored and answered in the same format. A JSON "
                  "body {\"input\": PARQUET_DIR_OR_URI} starts a Ray Data job over that dataset (under "
                  "serve.batch_input_roots) and answers 202 with its id; GET /predict/batch/{id} tells its status and "
                  "output folder (input columns plus prediction and score).",
                  openapi_extra={"requestBody": {"required": True, "content": {
                      ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}},
                      "text/csv": {"schema": {"type": "string"}},
                      "application/json": {"schema": {"type": "object", "required": ["input"],
                                                      "additionalProperties": False,
                                                      "properties": {"input": {"type": "string"}}}}}}})
        async def predict_batch(self, request: Request) -> Any:
            from fastapi.responses import Response

            model = self.model
            if model is None:
                return JSONResponse({"error": "no model loaded yet"}, status_code=503)
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind == "application/json":
                return _submit_batch_job(await _read_body(request, 64 * 1024), model, self.settings)
            if kind not in (ARROW_STREAM, "text/csv"):
                raise RequestError(f"content type must be {ARROW_STREAM}, text/csv or application/json (a Parquet job)", 415)
            body = await _read_body(request, self.settings.max_batch_body_bytes)
            table = _read_table(body, kind, model.bundle.preprocessor.schema.types)
            if table.num_rows > self.settings.max_batch_rows:
                raise RequestError(f"{table.num_rows} rows; the limit is {self.settings.max_batch_rows}", 413)
            try:
                feats = model.bundle.features(table)
            except RaygbmError as exc:
                raise RequestError(str(exc), 422) from None
            # Off the event loop: a large table would otherwise block every other request.
            X = features_matrix(model.booster, feats)
            scores = await asyncio.wait_for(asyncio.to_thread(model.booster.predict, X, num_threads=1),
                                            self.settings.request_timeout_s)
            if self.monitor_on and model.reference is not None:
                missing = np.column_stack([np.asarray(table.column(c).is_null()) for c in model.schema.fields])
                self._to_monitor(model, X, scores, missing)
            self.served += table.num_rows
            prediction, score = model.bundle.predictions(scores)
            out = pa.table({"prediction": prediction, "score": score})
            return Response(_write_table(out, kind), media_type=kind, headers={"x-model-version": model.version})

        @api.get("/predict/batch/{job_id}", summary="Status of a Parquet batch job")
        async def batch_job(self, job_id: str) -> JSONResponse:
            return _batch_job_status(job_id, self.settings)

        @api.get("/drift", summary="Drift windows of served traffic against the training reference")
        async def drift(self) -> JSONResponse:
            if self.monitor is None:
                return JSONResponse({"error": "drift monitoring is off (monitor.enabled: false)"}, status_code=404)
            if self.model is not None and self.model.reference is None:
                return JSONResponse({"error": f"model v{self.model.version} has no reference profile (registered "
                                     "before drift monitoring); retrain to monitor it"}, status_code=404)
            # This replica's buffered rows first: calls from one caller run in order on the actor.
            self._flush()
            from ray.exceptions import RayActorError

            try:
                return JSONResponse(await asyncio.wait_for(self.monitor.report.remote(), self.settings.request_timeout_s))
            except (RayActorError, asyncio.TimeoutError):
                # ActorUnavailableError is a RayActorError: Ray is restarting the monitor from its log.
                return JSONResponse({"error": "the drift monitor is restarting; retry shortly"}, status_code=503,
                                    headers={"retry-after": "1"})

        @api.get("/healthz")
        async def healthz(self) -> dict[str, str]:
            return {"status": "ok"}

        @api.get("/readyz")
        async def readyz(self) -> JSONResponse:
            if self.model is None:
                return JSONResponse({"status": "loading"}, status_code=503)
            return JSONResponse({"status": "ready", "model_version": self.model.version})

        @api.get("/model")
        async def model_info(self) -> JSONResponse:
            m = self.model
            if m is None:
                return JSONResponse({"error": "no model loaded yet"}, status_code=503)
            b = m.bundle
            return JSONResponse({"name": m.name, "version": m.version, "task": b.task, "metrics": b.metrics,
                                 "classes": b.preprocessor.label_classes_, "threshold": b.threshold,
                                 "request_schema": m.schema.json_schema(),
                                 "served_rows": self.served, "unseen_categories": self.unseen,
                                 "follows_champion": self._follows(self.user_config),
                                 "champion_check": self.champion_check})

    server = ModelServer.options(user_config=model)
    if code_version:
        # Ray 2.60 took ``version`` out of ``options()`` but still sends ``_version`` to the controller,
        # which compares it to decide between reconfiguring live replicas and replacing them.
        server._version = code_version
    return server.bind(serve_cfg.model_dump(mode="json"), monitor_cfg.model_dump(mode="json"))


ARROW_STREAM = "application/vnd.apache.arrow.stream"


_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_JOBS: dict[str, Any] = {}  # this replica's running jobs: id -> the task's ObjectRef


def _batch_dir(settings: ServeConfig) -> Path:
    return Path(settings.batch_output_dir)  # made absolute by build_app, where the deploying process runs


def _allowed_input(source: str, roots: list[str]) -> bool:
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


def _submit_batch_job(body: bytes, model: Any, settings: ServeConfig) -> Any:
    """Start scoring a Parquet dataset as a Ray task running a Ray Data job; answers 202 with the job id."""
    import json

    import ray
    from fastapi.responses import JSONResponse
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raygbm.request import RequestError

    try:
        doc = json.loads(body)
    except ValueError:
        raise RequestError("body is not valid JSON", 400) from None
    if not isinstance(doc, dict) or set(doc) != {"input"} or not isinstance(doc["input"], str) or not doc["input"]:
        raise RequestError('expected {"input": "<Parquet file, folder or URI>"} and nothing else', 422)
    source = doc["input"]
    if not settings.batch_input_roots:
        raise RequestError("Parquet batch jobs are off: list the folders they may read in serve.batch_input_roots", 403)
    if "\x00" in source or len(source) > 4096 or ("://" not in source and not source.startswith("/")):
        raise RequestError("input must be an absolute path or a URI", 422)
    try:
        if not _allowed_input(source, settings.batch_input_roots):
            raise RequestError("input is outside serve.batch_input_roots", 403)
        if "://" not in source and not Path(source).exists():
            raise RequestError("input does not exist", 404)
    except OSError:  # e.g. a name too long for the filesystem
        raise RequestError("input is not a usable path", 422) from None
    job_id = uuid.uuid4().hex
    jobs = _batch_dir(settings)
    jobs.mkdir(parents=True, exist_ok=True)
    _write_status(jobs / f"{job_id}.json", {"job_id": job_id, "status": "running", "input": source,
                                            "model_version": model.version, "started": time.time()})
    # On this replica's node, where the verified bundle is; num_cpus=0 because it only drives the Ray
    # Data job (whose tasks take the CPUs), so it cannot hold a CPU those tasks wait for.
    task = ray.remote(_run_batch_job).options(
        num_cpus=0, max_retries=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False))
    if len(_JOBS) >= 1000:  # forget finished jobs nobody polled (their status files stay)
        done, _ = ray.wait(list(_JOBS.values()), num_returns=len(_JOBS), timeout=0)
        finished = set(done)
        for k in [k for k, r in _JOBS.items() if r in finished]:
            _JOBS.pop(k)
    _JOBS[job_id] = task.remote(job_id, source, str(jobs), str(model.bundle.path), model.version)
    return JSONResponse({"job_id": job_id, "status": "running", "status_url": f"/predict/batch/{job_id}"}, status_code=202)


def _run_batch_job(job_id: str, source: str, jobs: str, bundle: str, version: str) -> None:
    from raygbm.predict import predict_dataset
    from raygbm.runtime import configure_data_context

    status = Path(jobs) / f"{job_id}.json"
    doc = {"job_id": job_id, "input": source, "model_version": version, "started": time.time()}
    try:
        configure_data_context()
        out = predict_dataset(source, Path(jobs) / job_id, Path(bundle))
        doc.update(status="succeeded", output=str(Path(jobs) / job_id), rows=out["rows"], files=out["files"],
                   seconds=round(out["seconds"], 3))
    except Exception as exc:  # the job's outcome is its status document, never a lost exception
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        doc.update(status="failed", error=msg[:500])
    doc["finished"] = time.time()
    _write_status(status, doc)


def _write_status(path: Path, doc: dict[str, Any]) -> None:
    import json

    from raygbm.paths import write_text_atomic

    write_text_atomic(path, json.dumps(doc))


def _batch_job_status(job_id: str, settings: ServeConfig) -> Any:
    import json

    from fastapi.responses import JSONResponse

    path = _batch_dir(settings) / f"{job_id}.json"
    if not _JOB_ID.match(job_id) or not path.exists():
        return JSONResponse({"error": "no such batch job"}, status_code=404)
    doc = json.loads(path.read_text())
    ref = _JOBS.get(job_id)
    if doc["status"] == "running" and ref is not None:
        import ray

        if ray.wait([ref], timeout=0)[0]:
            try:
                ray.get(ref)
            except Exception as exc:  # the job's process died before it could write its outcome
                doc.update(status="failed", error=f"the job's worker died: {type(exc).__name__}", finished=time.time())
                _write_status(path, doc)
            _JOBS.pop(job_id, None)
        # (a job started by another replica is followed through its status file only)
    elif ref is not None:
        _JOBS.pop(job_id, None)
    return JSONResponse(doc)


def _read_table(body: bytes, kind: str, types: dict[str, str]) -> pa.Table:
    """An Arrow IPC stream or CSV body as a table; CSV columns are read with the training types."""
    from raygbm.request import RequestError

    try:
        if kind == ARROW_STREAM:
            with pa.ipc.open_stream(body) as reader:
                return reader.read_all()
        import pyarrow.csv as pacsv

        column_types = {}
        for c, t in types.items():
            try:
                column_types[c] = pa.type_for_alias(t)
            except ValueError:
                pass  # e.g. timestamps with a zone: let the CSV reader infer them
        return pacsv.read_csv(pa.BufferReader(body), convert_options=pacsv.ConvertOptions(column_types=column_types))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise RequestError(f"body is not a valid {'Arrow IPC stream' if kind == ARROW_STREAM else 'CSV table'}: "
                           f"{str(exc).splitlines()[0][:200]}", 400) from None


def _write_table(table: pa.Table, kind: str) -> bytes:
    sink = pa.BufferOutputStream()
    if kind == ARROW_STREAM:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sink)
    return sink.getvalue().to_pybytes()


async def _read_body(request: Any, limit: int) -> bytes:
    from raygbm.request import RequestError

    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise RequestError(f"body larger than {limit} bytes", 413)
        except ValueError:
            raise RequestError("bad Content-Length", 400) from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"body larger than {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class ServedModel:
    """A loaded bundle as a replica serves it: the request schema and the drift reference with it."""

    name: str
    version: str
    bundle: Any  # raygbm.bundle.Bundle: booster, preprocessor, metrics, threshold, prediction mapping
    schema: Any  # raygbm.request.RequestSchema
    reference: dict[str, Any] | None

    @property
    def booster(self) -> Any:
        return self.bundle.booster

    @property
    def names(self) -> list[str]:
        return self.bundle.booster.feature_name()

    def results(self, scores: np.ndarray) -> list[dict[str, Any]]:
        """Per record: prediction (the label's own value), score, an id; and class probabilities for
        multiclass. The same mapping as the batch path (``Bundle.labelled``)."""
        prediction, score = self.bundle.labelled(scores)
        out = [{"prediction": p, "score": s, "prediction_id": uuid.uuid4().hex}
               for p, s in zip(prediction, score.tolist())]
        if self.bundle.task == "multiclass":
            for o, row in zip(out, scores.tolist()):
                o["probabilities"] = row
        return out


def _load_model(user_config: dict[str, Any], settings: ServeConfig) -> ServedModel:
    """Fetch the bundle from the registry (cached locally), verify it against the pinned manifest hash."""
    from raygbm.bundle import Bundle
    from raygbm.config import RegistryConfig
    from raygbm.registry import Registry, local_bundle
    from raygbm.request import RequestSchema

    # Explicit store and cache: a replica's environment is the cluster's, not the deploying CLI's.
    reg = Registry(RegistryConfig(model_name=user_config["model_name"]), uri=user_config["tracking_uri"])
    ref, path = local_bundle(reg, user_config["version"], Path(user_config["home"]) / "models")
    if user_config.get("manifest_sha256") and ref.tags.get("manifest_sha256") != user_config["manifest_sha256"]:
        raise RaygbmError(f"model v{ref.version}: registry manifest hash differs from the one deployed")
    b = Bundle.load(path, user_config.get("manifest_sha256"))
    import json

    from raygbm.monitor import REFERENCE_FILE

    # Bundles registered before drift monitoring existed have no reference: served, not monitored.
    reference = json.loads((path / REFERENCE_FILE).read_text()) if (path / REFERENCE_FILE).exists() else None
    return ServedModel(ref.name, ref.version, b, RequestSchema(b.preprocessor, settings.max_rows), reference)


def _monitor_handle() -> Any:
    import ray

    return ray.get_actor(MONITOR_ACTOR, namespace="raygbm")


def resolved_monitor(monitor_cfg: MonitorConfig) -> MonitorConfig:
    """``log_dir`` made absolute where the deploying process runs (the actor's cwd and env are the cluster's)."""
    from raygbm.paths import home

    log_dir = Path(monitor_cfg.log_dir).expanduser() if monitor_cfg.log_dir else home() / "monitor"
    return monitor_cfg.model_copy(update={"log_dir": str(log_dir.resolve())})


def start_monitor(monitor_cfg: MonitorConfig) -> Any:
    """The named drift-monitor actor (created once; a redeploy reuses it and keeps its windows). Ray
    restarts it if its process dies; it then reloads its windows from ``monitor.log_dir``."""
    import ray

    from raygbm.monitor import DriftMonitorActor

    actor = ray.remote(DriftMonitorActor).options(
        name=MONITOR_ACTOR, namespace="raygbm", get_if_exists=True, lifetime="detached", num_cpus=0,
        max_pending_calls=monitor_cfg.max_pending_batches, max_restarts=-1,
    ).remote(resolved_monitor(monitor_cfg).model_dump(mode="json"))
    ray.get(actor.ping.remote())
    return actor


def deploy(registry_cfg: Any, serve_cfg: ServeConfig, monitor_cfg: MonitorConfig, version: str | None = None) -> str:
    """Start Serve's HTTP proxy on ``serve.host:port`` and deploy the model; returns the URL. Ray must be up."""
    from ray import serve

    model = _model_config(registry_cfg, version)
    token = _token_sha256(serve_cfg)
    if monitor_cfg.enabled:
        start_monitor(monitor_cfg)
    # The proxy logs every request too (see the deployment's logging_config).
    serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port},
                logging_config={"enable_access_log": serve_cfg.access_log})
    _run_pinned(serve_cfg, monitor_cfg, model, token)
    return f"http://{serve_cfg.host}:{serve_cfg.port}"


def code_version(serve_cfg: ServeConfig, monitor_cfg: MonitorConfig, token_sha256: str | None) -> str:
    """What a replica is built from (raygbm's code, the serve and monitor config, the token's hash), hashed.

    ``serve.run`` gives a deployment without an explicit version a random one, so every run would be a
    rolling update: new replica processes, each reloading the model, and (with HAProxy) about 30 s of
    draining the old ones. With this version a run that changes only ``user_config`` (the model) is a
    lightweight update: Serve calls ``reconfigure`` on the live replicas.
    """
    import hashlib
    import json

    h = hashlib.sha256()
    for src in sorted(Path(__file__).parent.glob("*.py")):
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    h.update(json.dumps([serve_cfg.model_dump(mode="json"), monitor_cfg.model_dump(mode="json"), token_sha256],
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def _run_pinned(serve_cfg: ServeConfig, monitor_cfg: MonitorConfig, model: dict[str, Any], token: str | None) -> None:
    """``serve.run`` of the app under its :func:`code_version`, so a run that changes only the model
    reconfigures the live replicas."""
    _run(build_app(serve_cfg, monitor_cfg, model, token, code_version(serve_cfg, monitor_cfg, token)))


def _run(app: Any) -> None:
    """``serve.run``, with a failed deployment reported as one line (the replica's own error)."""
    from ray import serve

    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        cause = next((ln for ln in reversed(lines) if "Error:" in ln), lines[0] if lines else str(exc))
        raise RaygbmError(f"deploying the endpoint failed: {cause}") from None


def swap_model(registry_cfg: Any, serve_cfg: ServeConfig, monitor_cfg: MonitorConfig, version: str | None = None,
               monitor_on: bool = True) -> str:
    """Point the running app at another version (default: the current champion) without downtime:
    only ``user_config`` changes, so Serve calls ``reconfigure`` on the live replicas. ``monitor_on``
    pauses or resumes drift monitoring the same way."""
    model = {**_model_config(registry_cfg, version), "monitor": monitor_on}
    _run_pinned(serve_cfg, monitor_cfg, model, _token_sha256(serve_cfg))
    return model["version"]


def _token_sha256(serve_cfg: ServeConfig) -> str | None:
    import hashlib
    import os

    if not serve_cfg.require_token:
        return None
    token = os.environ.get("RAYGBM_ENDPOINT_TOKEN", "")
    if len(token) < 16:
        raise RaygbmError("serve.require_token is on: set RAYGBM_ENDPOINT_TOKEN to a secret of at least 16 characters")
    return hashlib.sha256(token.encode()).hexdigest()


def app_builder(args: dict[str, Any]) -> Any:
    """Serve's app builder (``import_path: raygbm.serve:app_builder`` in ``cluster/serve.yaml``).

    ``args``: ``config`` (a pipeline config path; relative to ``$RAYGBM_PROJECT``, which
    ``cluster/local`` sets, else to the working directory), ``set`` (a list of ``key=value`` overrides) and
    ``model`` (a version, default the champion). The registry is found as the CLI finds it
    (``RAYGBM_HOME`` / ``MLFLOW_TRACKING_URI`` in the cluster's environment).
    """
    import os

    from raygbm.config import load_config

    config = args.get("config")
    if config and not Path(config).is_absolute():
        # The Serve controller's working directory is the cluster's, not the project's.
        config = str(Path(os.environ.get("RAYGBM_PROJECT") or Path.cwd()) / config)
    cfg = load_config(config, list(args.get("set", [])))
    model = args.get("model", "champion")
    spec = _model_config(cfg.registry, None if model == "champion" else str(model))
    if cfg.monitor.enabled:
        start_monitor(cfg.monitor)
    return build_app(cfg.serve, cfg.monitor, spec, _token_sha256(cfg.serve))
