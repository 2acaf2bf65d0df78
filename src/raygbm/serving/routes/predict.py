"""``POST /predict`` (JSON records, batched across requests by ``@serve.batch``), ``POST /predict/batch`` (an
Arrow IPC or CSV table, or a JSON ``{"input": ...}`` starting a Parquet job) and ``GET /predict/batch/{id}``."""

# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at run time.
import asyncio
import os
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask

from raygbm.monitoring.prediction_log import RawRows
from raygbm.serving.model_slot import ServedModel, new_ids, table_ids
from raygbm.serving.replica import JSON_TYPES, ReplicaCore
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

router = APIRouter()
JOB_BODY_BYTES = 64 * 1024

_BATCH_BODY = {"required": True, "content": {
    ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}},
    CSV: {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "object", "required": ["input"], "additionalProperties": False,
                                    "properties": {"input": {"type": "string"}}}}}}


class PredictRoutes(ReplicaCore):
    @router.post("/predict", summary="Score one record or a list of records",
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
        scores = await self._within_budget(self._batched((model, parsed.features, parsed.missing, RawRows(ids, body=body))))
        self.served_rows += len(parsed.features)
        self.unseen += parsed.unseen
        results = model.results(scores, ids)
        if parsed.single:
            return JSONResponse({**results[0], "model_version": model.version})
        return JSONResponse({"predictions": results, "model_version": model.version})

    @router.post("/predict/batch", summary="Score a table (Arrow IPC or CSV body), or start a job over a Parquet dataset",
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
        table, X, scores, ids, raw = await self._within_budget(asyncio.to_thread(self._score_table, model, body, kind))
        if self._monitored(model):
            missing = np.column_stack([np.asarray(table.column(c).is_null()) for c in model.schema.fields])
            self.buffer.add(model.version, X, scores, missing, raw)
        self.served_rows += table.num_rows
        return Response(write_table(model.prediction_table(scores, ids), kind), media_type=kind,
                        headers={"x-model-version": model.version},
                        background=BackgroundTask(release_memory) if len(body) >= LARGE_BODY_BYTES else None)

    def _score_table(self, model: ServedModel, body: bytes, kind: str) -> tuple[Any, np.ndarray, np.ndarray, Any, Any]:
        """A table body read, checked by the same rules as JSON records, transformed and scored; with the
        prediction log on, its rows written ahead (and fsynced when configured) here, off the event loop."""
        table = read_table(body, kind, model.bundle.preprocessor.schema.types, model.schema.max_columns)
        model.schema.check_table(table, self.settings.max_batch_rows)
        X = model.table_matrix(table)
        scores = model.booster.predict(X, num_threads=1)
        ids = table_ids(table.num_rows)
        raw = None
        if self._monitored(model) and self.logging:
            raw = [RawRows(ids, table=table.select(list(model.schema.fields)))]
            if (fd := self._write_ahead(model, raw, [scores])) is not None:
                os.fsync(fd)
        return table, X, scores, ids, raw

    @router.get("/predict/batch/{job_id}", summary="Status of a Parquet batch job")
    async def batch_job(self, job_id: str) -> JSONResponse:
        doc = self.jobs.status(job_id)
        if doc is None:
            return JSONResponse({"error": "no such batch job"}, status_code=404)
        return JSONResponse(doc)
