"""``POST /feedback`` (labels for served predictions, parsed here by ``serving.feedback`` and joined in the
monitor actor) and ``GET /feedback`` (the join's coverage)."""

# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at run time.
import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from raygbm.monitoring.feedback import LabelSpec
from raygbm.serving.feedback import parse_json, parse_table
from raygbm.serving.replica import JSON_TYPES, ReplicaCore
from raygbm.serving.request import RequestError, read_body
from raygbm.serving.tables import ARROW_STREAM, CSV, TABLE_TYPES, content_type

router = APIRouter()


class FeedbackRoutes(ReplicaCore):
    @router.post("/feedback", summary="Labels for served predictions, by prediction_id",
              description="A JSON {\"prediction_id\", \"label\"} or a list of them, or a CSV / Arrow IPC table with "
              "those two columns; the label in the training label's own values. Answers {accepted, unknown_ids, "
              "duplicates} (the last label of a prediction wins).",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"description": "{prediction_id, label} or a list of them"}},
                  ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}, CSV: {"schema": {"type": "string"}}}}})
    async def feedback(self, request: Request) -> JSONResponse:
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

    @router.get("/feedback", summary="How many logged predictions have labels (the join's coverage)")
    async def feedback_summary(self) -> JSONResponse:
        if self.monitor is None:
            raise RequestError("drift monitoring is off (monitor.enabled: false)", 404)
        return JSONResponse(await self._ask_monitor(lambda: self.monitor.feedback_summary.remote()))
