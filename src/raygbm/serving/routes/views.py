"""What the endpoint shows: ``GET /drift`` (the monitor's windows), ``GET /retrain`` (the loop's record),
``GET /model``, and the probes ``GET /healthz`` and ``GET /readyz``."""

# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at run time.
import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from raygbm.serving.replica import Replica, ReplicaCore
from raygbm.serving.request import RequestError

router = APIRouter()


class ViewRoutes(ReplicaCore):
    @router.get("/drift", summary="Drift windows of served traffic against the training reference")
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

    @router.get("/retrain", summary="The loop: retraining triggers, jobs and decisions (promoted, rejected, rolled back)")
    async def retrain_state(self) -> JSONResponse:
        """The loop's controller answers when the app has one (wherever it runs); else, and while it
        restarts, the state file (the record of retrainings run by hand, too)."""
        from raygbm.monitoring.loop_state import LoopState, public

        if self.loop is not None:
            try:
                return JSONResponse(await asyncio.wait_for(self.loop.status.remote(), self.settings.request_timeout_s))
            except Exception:  # restarting: Serve is replacing its replica
                pass
        spec = self.slot.spec
        if spec is None:
            raise RequestError("no model loaded yet", 503)
        controller = None if self.loop is None else {"alive": False, "error": "the loop's controller is restarting"}
        return JSONResponse({**public(LoopState(spec.home, spec.model_name).read()), "controller": controller})

    @router.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(self) -> JSONResponse:
        if self.slot.model is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "model_version": self.slot.model.version})

    @router.get("/model")
    async def model_info(self) -> JSONResponse:
        return JSONResponse({**self._loaded().info(), "served_rows": self.served_rows, "requests_in_flight": Replica.scoring,
                             "unseen_categories": self.unseen,
                             "follows_champion": self.slot.follows(), "champion_check": self.slot.champion_check})
