"""The endpoint: a FastAPI app and the Ray Serve deployment whose methods are its routes.

- ``POST /predict``: one record (JSON object) or a list of records → prediction, score, model version and
  a prediction id per record; parsed strictly from the raw body (``serving.request``), scored by
  ``num_threads=1`` LightGBM, with ``@serve.batch`` merging concurrent requests into one ``predict`` call.
- ``POST /predict/batch``: an Arrow IPC or CSV table scored and answered in the same format, or a JSON
  ``{"input": ...}`` starting a Parquet job (``serving.batch_jobs``); ``GET /predict/batch/{id}``.
- ``GET /drift`` (the monitor's windows), ``GET /retrain`` (the loop's record), ``GET /model``, ``GET /healthz``,
  ``GET /readyz``, ``/docs``.
- ``POST /feedback``: labels for served predictions, by ``prediction_id`` (JSON, a list, or a CSV/Arrow
  table), joined to the monitor's prediction log; ``GET /feedback``: the join's coverage.
- The Open Inference Protocol (KServe V2, Triton, MLServer) under ``/v2``: health, server and model
  metadata, ``POST /v2/models/{name}/infer`` (``serving.oip`` parses and answers; same checks, limits,
  token and drift logging as ``/predict``).

The model lives in a :class:`~raygbm.serving.model_slot.ModelSlot`: ``reconfigure`` (a new
``user_config``) loads and verifies the new version before switching, so a swap fails no request.
Hardening: bodies over their limit get 413; bad input gets a 4xx that never echoes it; every request has a
time budget (``serve.request_timeout_s``) whatever timeout header the client sent to Serve's proxy.
"""

# No ``from __future__ import annotations`` here: Serve ships the deployment class by value, and FastAPI
# must still resolve the routes' annotations (``Request``) in the replica.
import asyncio
import hashlib
import hmac
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.background import BackgroundTask

from raygbm.config import MonitorConfig, ServeConfig
from raygbm.runtime import loopback_replica_grpc
from raygbm.serving import oip
from raygbm.serving.batch_jobs import BatchJobs
from raygbm.serving.model_slot import ModelSlot, ServedModel, new_ids, table_ids
from raygbm.serving.monitor_buffer import MonitorBuffer
from raygbm.serving.request import RequestError, read_body
from raygbm.serving.tables import (
    ARROW_STREAM,
    CSV,
    LARGE_BODY_BYTES,
    TABLE_TYPES,
    content_type,
    read_table,
    release_memory,
    write_table,
)

PROBES = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")
JSON_TYPES = ("application/json", "")  # a client that names no type gets the JSON parser too
JOB_BODY_BYTES = 64 * 1024


class RaygbmAPI(FastAPI):
    """FastAPI with the ``/predict`` body's schema taken from the loaded model: the body is parsed by hand
    (``serving.request``), so clients and fuzzers would otherwise not see the real fields."""

    _documented: Any = None  # the request schema the cached document was built with

    def openapi(self) -> dict[str, Any]:
        schema = Replica.request_schema
        if self.openapi_schema is None or self._documented is not schema:
            self.openapi_schema = None
            doc = super().openapi()
            if schema is not None:
                body = doc["paths"]["/predict"]["post"].setdefault("requestBody", {"required": True, "content": {}})
                body["content"]["application/json"] = {"schema": schema}
            self._documented = schema
        return self.openapi_schema


api = RaygbmAPI(title="raygbm", description="LightGBM model served by raygbm", version="1")


class Replica:
    """What the app-level hooks (the token check, the OpenAPI document) need from the replica process's
    one ``ModelServer``. Serve freezes a copy of ``api`` when it decorates the deployment and ships the
    deployment class by value (module globals copied), so neither can carry it: this class is shipped by
    reference, and its attributes are the replica process's own."""

    token_sha256: str | None = None
    request_schema: dict[str, Any] | None = None
    scoring: int = 0  # POST requests (scoring or starting a job) this replica holds now


@api.exception_handler(RequestValidationError)
async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default handler echoes the input back (and fails with a 500 on a bare NaN).
    where = [".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()][:5]
    return JSONResponse({"error": "invalid request", "fields": where}, status_code=422)


@api.exception_handler(RequestError)
async def _bad(_request: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


def token_ok(authorization: str, token_sha256: str) -> bool:
    """``Authorization: Bearer <token>`` whose sha256 is ``token_sha256`` (compared in constant time)."""
    token = authorization[7:] if authorization.lower().startswith("bearer ") else ""
    return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), token_sha256)


class BearerToken:
    """Every route but the probes needs ``Authorization: Bearer <token>`` when the replica was given the
    token's hash. A plain ASGI middleware: Starlette's ``@app.middleware("http")`` wraps every request in
    extra tasks and streams, which costs the endpoint a third of a millisecond per request even when no
    token is asked for."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        expected = Replica.token_sha256
        if expected and scope["type"] == "http" and scope["path"] not in PROBES:
            given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
            if not token_ok(given, expected):
                response = JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                        headers={"www-authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Scoring:
    """Counts the POST requests the replica holds, from their first byte to their answer (``GET /model``
    shows it: what a stopping replica or a slow client is holding)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        Replica.scoring += 1
        try:
            await self.app(scope, receive, send)
        finally:
            Replica.scoring -= 1


api.add_middleware(Scoring)
api.add_middleware(BearerToken)


_BATCH_BODY = {"required": True, "content": {
    ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}},
    CSV: {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "object", "required": ["input"], "additionalProperties": False,
                                    "properties": {"input": {"type": "string"}}}}}}


@serve.deployment(name="ModelServer", max_ongoing_requests=256, health_check_period_s=2)
@serve.ingress(api)
class ModelServer:
    """One replica: a model slot, a buffer to the drift monitor, batch jobs, and the routes."""

    def __init__(self, settings: dict[str, Any], monitor: dict[str, Any], token_sha256: str | None = None):
        self.settings = ServeConfig.model_validate(settings)
        self.monitor_cfg = MonitorConfig.model_validate(monitor)
        self.served_rows = 0
        self.unseen = 0
        self.monitor = self._monitor_actor()
        self.monitor_on = self.monitor is not None
        self.logging = self.monitor_cfg.feedback.enabled  # the prediction log (rows sent with their request)
        self.buffer = MonitorBuffer(self._send_to_monitor, self._monitor_full())
        self.slot = ModelSlot(self.settings.max_rows, self.settings.champion_poll_s, self._on_switch)
        self.jobs = BatchJobs(self.settings.batch_output_dir, self.settings.batch_input_roots)
        self._batched.set_max_batch_size(self.settings.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        Replica.token_sha256 = token_sha256
        self.slot.start_following()
        loopback_replica_grpc()

    # ---- wiring

    def _monitor_actor(self) -> Any:
        from raygbm.monitoring.actor import monitor_handle

        return monitor_handle() if self.monitor_cfg.enabled else None

    @staticmethod
    def _monitor_full() -> tuple[type[BaseException], ...]:
        from ray.exceptions import PendingCallsLimitExceeded

        return (PendingCallsLimitExceeded,)

    def _send_to_monitor(self, *batch: Any) -> None:
        self.monitor.observe.remote(*batch)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A new ``user_config``: the model to serve (see ``ModelSlot``); ``monitor: false`` pauses sending
        to the drift monitor without restarting replicas."""
        self.monitor_on = self.monitor is not None and bool(user_config.get("monitor", True))
        self.slot.reconfigure(user_config)

    def _on_switch(self, model: ServedModel) -> None:
        Replica.request_schema = model.schema.json_schema()
        if self.monitor is not None and model.reference is not None:
            import ray

            # Idempotent per version: the first replica to load a model sets the reference.
            ray.get(self.monitor.set_reference.remote(model.version, model.reference, model.names,
                                                      list(model.schema.fields), model.name, model.loop_spec()))

    def _loaded(self) -> ServedModel:
        model = self.slot.model
        if model is None:
            raise RequestError("no model loaded yet", 503)
        return model

    async def _within_budget(self, work: Any) -> Any:
        try:
            return await asyncio.wait_for(work, self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(f"prediction took longer than {self.settings.request_timeout_s}s", 503) from None

    def _monitored(self, model: ServedModel) -> bool:
        return self.monitor_on and model.reference is not None

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _batched(self, items: list[tuple[ServedModel, np.ndarray, np.ndarray, Any]]) -> list[np.ndarray]:
        """One LightGBM call for every request that arrived together (grouped by model during a swap)."""
        groups: dict[int, list[int]] = {}
        for i, (model, _, _, _) in enumerate(items):
            groups.setdefault(id(model), []).append(i)
        out: list[Any] = [None] * len(items)
        for idx in groups.values():
            model = items[idx[0]][0]
            rows = np.concatenate([items[i][1] for i in idx])
            scores = model.booster.predict(rows, num_threads=1)
            start = 0
            for i in idx:
                out[i] = scores[start:start + len(items[i][1])]
                start += len(items[i][1])
            if self._monitored(model):
                raw = [items[i][3] for i in idx] if self.logging else None
                self.buffer.add(model.version, rows, scores, np.concatenate([items[i][2] for i in idx]), raw)
        return out

    # ---- routes

    @api.post("/predict", summary="Score one record or a list of records",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "description": "one record or a list of records; see GET /model for the fields"}}}}})
    async def predict(self, request: Request) -> JSONResponse:
        model = self._loaded()
        kind = content_type(request.headers)
        if kind in TABLE_TYPES:
            raise RequestError(f"{kind} bodies go to /predict/batch; /predict takes application/json", 415)
        if kind not in JSON_TYPES:
            raise RequestError("content type must be application/json", 415)
        body = await read_body(request, self.settings.max_body_bytes)
        parsed = model.schema.parse(body)
        ids = new_ids(len(parsed.features))
        scores = await self._within_budget(self._batched((model, parsed.features, parsed.missing, ("json", body, ids))))
        self.served_rows += len(parsed.features)
        self.unseen += parsed.unseen
        results = model.results(scores, ids)
        if parsed.single:
            return JSONResponse({**results[0], "model_version": model.version})
        return JSONResponse({"predictions": results, "model_version": model.version})

    @api.post("/predict/batch", summary="Score a table (Arrow IPC or CSV body), or start a job over a Parquet dataset",
              description="An Arrow IPC stream or CSV body is scored and answered in the same format. A JSON "
              "body {\"input\": PARQUET_DIR_OR_URI} starts a Ray batch job over that dataset (under "
              "serve.batch_input_roots) and answers 202 with its id; GET /predict/batch/{id} tells its status and "
              "output folder (input columns plus prediction and score).",
              openapi_extra={"requestBody": _BATCH_BODY})
    async def predict_batch(self, request: Request) -> Response:
        model = self._loaded()
        kind = content_type(request.headers)
        if kind == "application/json":
            job = self.jobs.submit(await read_body(request, JOB_BODY_BYTES), model.bundle.path, model.version)
            return JSONResponse(job, status_code=202)
        if kind not in TABLE_TYPES:
            raise RequestError(f"content type must be {ARROW_STREAM}, {CSV} or application/json (a Parquet job)", 415)
        body = await read_body(request, self.settings.max_batch_body_bytes)
        # Off the event loop: parsing and scoring a large table would otherwise block every other request.
        table, X, scores = await self._within_budget(asyncio.to_thread(self._score_table, model, body, kind))
        ids = table_ids(table.num_rows)
        if self._monitored(model):
            missing = np.column_stack([np.asarray(table.column(c).is_null()) for c in model.schema.fields])
            raw = [("table", table.select(list(model.schema.fields)), ids)] if self.logging else None
            self.buffer.add(model.version, X, scores, missing, raw)
        self.served_rows += table.num_rows
        return Response(write_table(model.prediction_table(scores, ids), kind), media_type=kind,
                        headers={"x-model-version": model.version},
                        background=BackgroundTask(release_memory) if len(body) >= LARGE_BODY_BYTES else None)

    def _score_table(self, model: ServedModel, body: bytes, kind: str) -> tuple[Any, np.ndarray, np.ndarray]:
        """A table body read, checked by the same rules as JSON records, transformed and scored."""
        table = read_table(body, kind, model.bundle.preprocessor.schema.types, model.schema.max_columns)
        model.schema.check_table(table, self.settings.max_batch_rows)
        X = model.table_matrix(table)
        return table, X, model.booster.predict(X, num_threads=1)

    @api.get("/predict/batch/{job_id}", summary="Status of a Parquet batch job")
    async def batch_job(self, job_id: str) -> JSONResponse:
        doc = self.jobs.status(job_id)
        if doc is None:
            return JSONResponse({"error": "no such batch job"}, status_code=404)
        return JSONResponse(doc)

    @api.get("/drift", summary="Drift windows of served traffic against the training reference")
    async def drift(self) -> JSONResponse:
        from ray.exceptions import RayActorError

        if self.monitor is None:
            return JSONResponse({"error": "drift monitoring is off (monitor.enabled: false)"}, status_code=404)
        model = self.slot.model
        if model is not None and model.reference is None:
            return JSONResponse({"error": f"model v{model.version} has no drift reference profile in its bundle; "
                                 "retrain it to monitor it"}, status_code=404)
        self.buffer.flush()  # this replica's rows first: calls from one caller run in order on the actor
        try:
            return JSONResponse(await asyncio.wait_for(self.monitor.report.remote(), self.settings.request_timeout_s))
        except (RayActorError, asyncio.TimeoutError):
            # ActorUnavailableError is a RayActorError: Ray is restarting the monitor from its log.
            return JSONResponse({"error": "the drift monitor is restarting; retry shortly"}, status_code=503,
                                headers={"retry-after": "1"})

    # ---- feedback (the loop's labels): parsed here, joined in the monitor actor

    @api.post("/feedback", summary="Labels for served predictions, by prediction_id",
              description="A JSON {\"prediction_id\", \"label\"} or a list of them, or a CSV / Arrow IPC table with "
              "those two columns; the label in the training label's own values. Answers {accepted, unknown_ids, "
              "duplicates} (the last label of a prediction wins).",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"description": "{prediction_id, label} or a list of them"}},
                  ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}, CSV: {"schema": {"type": "string"}}}}})
    async def feedback(self, request: Request) -> JSONResponse:
        from raygbm.monitoring.feedback import LabelSpec
        from raygbm.serving.feedback import parse_json, parse_table

        model = self._loaded()
        if not (self.logging and self._monitored(model)):
            raise RequestError("the prediction log is off (monitor.feedback.enabled), so labels cannot be joined", 404)
        kind, spec = content_type(request.headers), LabelSpec.of(model.bundle.preprocessor)
        if kind in TABLE_TYPES:
            body = await read_body(request, self.settings.max_batch_body_bytes)
            ids, labels = await asyncio.to_thread(parse_table, body, kind, spec, self.settings.max_batch_rows)
        elif kind in JSON_TYPES:
            ids, labels = parse_json(await read_body(request, self.settings.max_body_bytes), spec, self.settings.max_rows)
        else:
            raise RequestError(f"content type must be application/json, {ARROW_STREAM} or {CSV}", 415)
        self.buffer.flush()  # this replica's predictions reach the monitor first (calls keep their order)
        doc = await self._ask_monitor(lambda: self.monitor.feedback.remote(ids, labels))
        return JSONResponse(doc, status_code=doc.pop("status", 200) if "error" in doc else 200)

    @api.get("/feedback", summary="How many logged predictions have labels (the join's coverage)")
    async def feedback_summary(self) -> JSONResponse:
        if self.monitor is None:
            raise RequestError("drift monitoring is off (monitor.enabled: false)", 404)
        return JSONResponse(await self._ask_monitor(lambda: self.monitor.feedback_summary.remote()))

    async def _ask_monitor(self, call: Any) -> dict[str, Any]:
        """A monitor call's answer within the request budget; 503 while the monitor is busy or restarting."""
        from ray.exceptions import PendingCallsLimitExceeded, RayActorError

        try:
            return await asyncio.wait_for(call(), self.settings.request_timeout_s)
        except (RayActorError, PendingCallsLimitExceeded, asyncio.TimeoutError):
            raise RequestError("the drift monitor is busy or restarting; retry shortly", 503) from None

    @api.get("/retrain", summary="The loop: retraining triggers, jobs and decisions (promoted, rejected, rolled back)")
    async def retrain_state(self) -> JSONResponse:
        from raygbm.monitoring.loop_state import LoopState, public

        config = getattr(self.slot, "user_config", None)
        if not config:
            raise RequestError("no model loaded yet", 503)
        return JSONResponse(public(LoopState(config["home"], config["model_name"]).read()))

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        if self.slot.model is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "model_version": self.slot.model.version})

    @api.get("/model")
    async def model_info(self) -> JSONResponse:
        return JSONResponse({**self._loaded().info(), "served_rows": self.served_rows, "requests_in_flight": Replica.scoring,
                             "unseen_categories": self.unseen,
                             "follows_champion": self.slot.follows(), "champion_check": self.slot.champion_check})

    # ---- the Open Inference Protocol (KServe V2): parsing and answers in serving.oip

    @api.get("/v2", summary="Open Inference Protocol: server metadata")
    async def oip_server(self) -> JSONResponse:
        return JSONResponse(oip.server_metadata())

    @api.get("/v2/health/live", summary="Open Inference Protocol: liveness")
    async def oip_live(self) -> JSONResponse:
        return JSONResponse({"live": True})

    @api.get("/v2/health/ready", summary="Open Inference Protocol: readiness (a model is loaded)")
    async def oip_ready(self) -> JSONResponse:
        ready = self.slot.model is not None
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get("/v2/models/{name}", summary="Open Inference Protocol: model metadata (inputs and outputs)")
    @api.get("/v2/models/{name}/versions/{version}", summary="Open Inference Protocol: model metadata")
    async def oip_model(self, request: Request) -> JSONResponse:
        return JSONResponse(oip.model_metadata(self._oip_model(request)))

    @api.get("/v2/models/{name}/ready", summary="Open Inference Protocol: model readiness")
    @api.get("/v2/models/{name}/versions/{version}/ready", summary="Open Inference Protocol: model readiness")
    async def oip_model_ready(self, request: Request) -> JSONResponse:
        return JSONResponse({"name": self._oip_model(request).name, "ready": True})

    @api.post("/v2/models/{name}/infer", summary="Open Inference Protocol: score input tensors",
              openapi_extra={"requestBody": oip.INFER_BODY})
    @api.post("/v2/models/{name}/versions/{version}/infer", summary="Open Inference Protocol: score input tensors",
              openapi_extra={"requestBody": oip.INFER_BODY})
    async def oip_infer(self, request: Request) -> JSONResponse:
        model = self._oip_model(request)
        infer = oip.parse_infer(await read_body(request, self.settings.max_body_bytes), request.headers, model)
        ids = new_ids(len(infer.parsed.features))
        scores = await self._within_budget(self._batched((model, infer.parsed.features, infer.parsed.missing,
                                                          ("records", infer.records, ids))))
        self.served_rows += len(infer.parsed.features)
        self.unseen += infer.parsed.unseen
        return JSONResponse(oip.infer_response(model, model.results(scores, ids), infer))

    def _oip_model(self, request: Request) -> ServedModel:
        model = self._loaded()
        oip.check_served(model, request.path_params["name"], request.path_params.get("version"))
        return model
