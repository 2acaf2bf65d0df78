"""The Open Inference Protocol (KServe V2, Triton, MLServer) under ``/v2``: health, server and model metadata,
``POST /v2/models/{name}/infer``. ``serving.oip`` parses requests and writes answers; the same checks,
limits, token and drift logging as ``/predict``."""

# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at run time.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from raygbm.monitoring.prediction_log import RawRows
from raygbm.serving import oip
from raygbm.serving.model_slot import ServedModel, new_ids
from raygbm.serving.replica import ReplicaCore
from raygbm.serving.request import read_body

router = APIRouter()


class OIPRoutes(ReplicaCore):
    @router.get("/v2", summary="Open Inference Protocol: server metadata")
    async def oip_server(self) -> JSONResponse:
        return JSONResponse(oip.server_metadata())

    @router.get("/v2/health/live", summary="Open Inference Protocol: liveness")
    async def oip_live(self) -> JSONResponse:
        return JSONResponse({"live": True})

    @router.get("/v2/health/ready", summary="Open Inference Protocol: readiness (a model is loaded)")
    async def oip_ready(self) -> JSONResponse:
        ready = self.slot.model is not None
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @router.get("/v2/models/{name}", summary="Open Inference Protocol: model metadata (inputs and outputs)")
    @router.get("/v2/models/{name}/versions/{version}", summary="Open Inference Protocol: model metadata")
    async def oip_model(self, request: Request) -> JSONResponse:
        return JSONResponse(oip.model_metadata(self._oip_model(request)))

    @router.get("/v2/models/{name}/ready", summary="Open Inference Protocol: model readiness")
    @router.get("/v2/models/{name}/versions/{version}/ready", summary="Open Inference Protocol: model readiness")
    async def oip_model_ready(self, request: Request) -> JSONResponse:
        return JSONResponse({"name": self._oip_model(request).name, "ready": True})

    @router.post("/v2/models/{name}/infer", summary="Open Inference Protocol: score input tensors",
              openapi_extra={"requestBody": oip.INFER_BODY})
    @router.post("/v2/models/{name}/versions/{version}/infer", summary="Open Inference Protocol: score input tensors",
              openapi_extra={"requestBody": oip.INFER_BODY})
    async def oip_infer(self, request: Request) -> JSONResponse:
        model = self._oip_model(request)
        infer = oip.parse_infer(await read_body(request, self.settings.max_body_bytes), request.headers, model)
        ids = new_ids(len(infer.parsed.features))
        scores = await self._within_budget(self._batched((model, infer.parsed.features, infer.parsed.missing,
                                                          RawRows(ids, records=infer.records))))
        self.served_rows += len(infer.parsed.features)
        self.unseen += infer.parsed.unseen
        return JSONResponse(oip.infer_response(model, model.results(scores, ids), infer))

    def _oip_model(self, request: Request) -> ServedModel:
        model = self._loaded()
        oip.check_served(model, request.path_params["name"], request.path_params.get("version"))
        return model
