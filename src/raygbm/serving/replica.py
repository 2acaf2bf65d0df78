"""What every route of a replica shares: the model slot, the buffer to the drift monitor, batch jobs, the
request budget and ``@serve.batch`` scoring. ``ReplicaCore`` is the base of each surface's routes
(``serving.routes``); ``serving.app`` puts them together as the deployment."""

# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at run time.
import asyncio
import os
import time
from typing import Any

import numpy as np
from ray import serve

from raygbm.config import MonitorConfig, ServeConfig
from raygbm.monitoring.wal import WalWriter, frame, wal_dir
from raygbm.runtime import direct_ingress_on_node_address, replica_grpc_on_node_address
from raygbm.serving.batch_jobs import BatchJobs
from raygbm.serving.model_slot import ModelSlot, ModelSpec, ServedModel
from raygbm.serving.monitor_buffer import MonitorBuffer
from raygbm.serving.request import RequestError

JSON_TYPES = ("application/json", "")  # a client that names no type gets the JSON parser too


class Replica:
    """What the app-level hooks (the token check, the OpenAPI document) need from the replica process's
    one ``ModelServer``. Serve freezes a copy of the app when it decorates the deployment and ships the
    deployment class by value (module globals copied), so neither can carry it: this class is shipped by
    reference, and its attributes are the replica process's own."""

    token_sha256: str | None = None
    request_schema: dict[str, Any] | None = None
    scoring: int = 0  # POST requests (scoring or starting a job) this replica holds now


class ReplicaCore:
    """One replica's state and the helpers its routes share."""

    def __init__(self, settings: dict[str, Any], monitor: dict[str, Any], token_sha256: str | None = None,
                 loop: Any = None):
        self.settings = ServeConfig.model_validate(settings)
        self.loop = loop  # the app's loop controller (a DeploymentHandle), when the loop is on
        self.monitor_cfg = MonitorConfig.model_validate(monitor)
        self.served_rows = 0
        self.unseen = 0
        self.monitor = self._monitor_actor()
        self.monitor_on = self.monitor is not None
        self.logging = self.monitor_cfg.feedback.enabled  # the prediction log (rows sent with their request)
        self.buffer = MonitorBuffer(self._send_to_monitor, self._monitor_full())
        self.wal: dict[str, WalWriter] = {}  # per model name: the prediction log's write-ahead file
        self.slot = ModelSlot(self.settings.max_rows, self.settings.champion_poll_s, self._on_switch)
        self.jobs = BatchJobs(self.settings.batch_output_dir, self.settings.batch_input_roots)
        self._batched.set_max_batch_size(self.settings.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        Replica.token_sha256 = token_sha256
        self.slot.start_following()
        replica_grpc_on_node_address()
        direct_ingress_on_node_address()

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
        """A new ``user_config`` (a ``ModelSpec``): the model to serve (see ``ModelSlot``); ``monitor: false``
        pauses sending to the drift monitor without restarting replicas."""
        spec = ModelSpec.of(user_config)
        self.monitor_on = self.monitor is not None and spec.monitor
        self.slot.reconfigure(spec)

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

    def _write_ahead(self, model: ServedModel, parts: list[Any], scores: list[np.ndarray]) -> int | None:
        """Served rows on their way to the prediction log, first written to this replica's write-ahead file
        (``monitoring.wal``): one write for every request of a batch. The fd to fsync, when that is on."""
        log_dir = self.monitor_cfg.log_dir
        if log_dir is None:
            return None
        writer = self.wal.get(model.name)
        if writer is None:
            writer = self.wal[model.name] = WalWriter(wal_dir(log_dir, model.name), self.monitor_cfg.feedback.fsync)
        ts = time.time()
        return writer.append(b"".join(frame(model.version, ts, raw, s) for raw, s in zip(parts, scores)))

    async def _ask_monitor(self, call: Any) -> dict[str, Any]:
        """A monitor call's answer within the request budget; 503 while the monitor is busy or restarting."""
        from ray.exceptions import PendingCallsLimitExceeded, RayActorError

        try:
            return await asyncio.wait_for(call(), self.settings.request_timeout_s)
        except (RayActorError, PendingCallsLimitExceeded, asyncio.TimeoutError):
            raise RequestError("the drift monitor is busy or restarting; retry shortly", 503) from None

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _batched(self, items: list[tuple[ServedModel, np.ndarray, np.ndarray, Any]]) -> list[np.ndarray]:
        """One LightGBM call for every request that arrived together (grouped by model during a swap)."""
        groups: dict[int, list[int]] = {}
        for i, (model, _, _, _) in enumerate(items):
            groups.setdefault(id(model), []).append(i)
        out: list[Any] = [None] * len(items)
        sync: set[int] = set()
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
                if raw is not None and (fd := self._write_ahead(model, raw, [out[i] for i in idx])) is not None:
                    sync.add(fd)
                self.buffer.add(model.version, rows, scores, np.concatenate([items[i][2] for i in idx]), raw)
        for fd in sync:  # group commit: one disk flush for every request of the batch
            await asyncio.to_thread(os.fsync, fd)
        return out
