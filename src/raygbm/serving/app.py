"""The endpoint: a FastAPI app and the Ray Serve deployment whose methods are its routes (one module per
surface in ``serving.routes``, over the shared ``serving.replica.ReplicaCore``).

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
import hashlib
import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from raygbm.serving.replica import Replica
from raygbm.serving.request import RequestError
from raygbm.serving.routes import feedback, oip, predict, views

PROBES = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")


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


for surface in (predict, feedback, views, oip):
    api.include_router(surface.router)


@serve.deployment(name="ModelServer", max_ongoing_requests=256, health_check_period_s=2)
@serve.ingress(api)
class ModelServer(predict.PredictRoutes, feedback.FeedbackRoutes, views.ViewRoutes, oip.OIPRoutes):
    """One replica: a model slot, a buffer to the drift monitor, batch jobs (``ReplicaCore``), and the
    routes of every surface."""
