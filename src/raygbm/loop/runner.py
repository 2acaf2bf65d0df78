"""The loop's driver: every ``retrain.check_s`` it checks the watched promotion (rollback), reads the drift
monitor's report (what GET /drift shows) and the champion's realized performance, and lets the
``Controller`` submit a retraining Ray Job. A thread of the app's ``LoopController`` deployment
(``loop.service``), never in a replica's request path."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from raygbm.config import PipelineConfig
from raygbm.loop.decisions import performance_drop
from raygbm.loop.retrain import holdout_metrics, labelled_root
from raygbm.loop.rollback import check_rollback
from raygbm.loop.triggers import Controller, Trigger
from raygbm.loop.watch import trigger_line
from raygbm.monitoring.labelled import read_labelled, training_rows
from raygbm.monitoring.loop_state import LoopState
from raygbm.paths import home
from raygbm.registry.store import Registry

log = logging.getLogger(__name__)


def realized_trigger(cfg: PipelineConfig) -> Trigger | None:
    """The champion's gate metric worse than its registered test metric by more than
    ``retrain.performance_drop`` on each of the last two blocks of ``retrain.performance_rows`` labelled
    rows it served. Two disjoint blocks, not one: a 500-row block's AUC has a spread of about 0.02 and a
    test AUC from 1,500 rows about 0.011, so a 0.05 drop happens by chance in about 1.5% of blocks (a
    retraining set off on unchanged traffic in a third of 24-block streams); both blocks together, about
    the square of that. One trigger id per block, so a persisting drop triggers again only on new labels."""
    if cfg.retrain.performance_drop is None:
        return None
    registry = Registry(cfg.registry)
    champ = registry.get()
    if champ is None:
        return None
    rows = read_labelled(labelled_root(cfg.monitor), cfg.registry.model_name, versions=[champ.version])
    n = cfg.retrain.performance_rows
    if rows is None or rows.num_rows < 2 * n:
        return None
    metric = champ.gate_metric
    expected = champ.tags.get(f"test_{metric}")
    if expected is None:
        return None
    blocks = [training_rows(rows.slice(end - n, n)) for end in (rows.num_rows, rows.num_rows - n)]
    reasons = []
    for value in holdout_metrics(registry, champ.version, blocks, metric):
        reason = None if value is None else performance_drop(metric, value, float(expected), cfg.retrain.performance_drop)
        if reason is None:
            return None
        reasons.append(reason)
    return Trigger(f"performance-v{champ.version}-r{rows.num_rows // n}", "performance",
                   f"champion v{champ.version}: {reasons[0]} on its last {n} labelled rows, and on the {n} before")


def monitor_report(timeout_s: float = 10.0) -> Callable[[], dict[str, Any] | None]:
    """The drift monitor actor's report, as GET /drift answers it (None while it is absent or restarting).
    Asked of the actor directly: the controller runs in the cluster and needs no URL or token."""
    def fetch() -> dict[str, Any] | None:
        import ray

        from raygbm.monitoring.actor import monitor_handle

        try:
            return ray.get(monitor_handle().report.remote(), timeout=timeout_s)
        except Exception:  # no monitor (monitor.enabled: false), or Ray is restarting it
            return None

    return fetch


class LoopRunner:
    """Rollback watch, then triggers, every ``retrain.check_s`` in a daemon thread."""

    def __init__(self, cfg: PipelineConfig, controller: Controller, fetch_drift: Callable[[], dict[str, Any] | None],
                 say: Callable[[str], None] = log.warning):
        self.cfg, self.controller, self.fetch_drift, self.say = cfg, controller, fetch_drift, say
        self.state = LoopState(home(), cfg.registry.model_name)
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.started_at = time.time()
        self.ticks = 0
        self.last_tick: float | None = None
        self.last_error: str | None = None

    def health(self) -> dict[str, Any]:
        """What GET /retrain shows of the controller running this loop."""
        import os
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname(), "started_at": self.started_at,
                "check_s": self.cfg.retrain.check_s, "ticks": self.ticks, "last_tick": self.last_tick,
                "last_error": self.last_error, "alive": self.alive()}

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def tick(self) -> dict[str, Any] | None:
        check_rollback(self.cfg.retrain, self.cfg.registry, self.state, labelled_root(self.cfg.monitor))
        entry = self.controller.tick(self.fetch_drift(), realized_trigger(self.cfg))
        if entry is not None:  # what the loop did, in the controller's log
            self.say(trigger_line(entry))
        return entry

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.retrain.check_s):
            try:
                self.tick()
                self.last_error = None
            except Exception as exc:  # a failed check (registry, store) must not end the loop; the next one retries
                self.last_error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                log.exception("loop check failed")
            self.ticks, self.last_tick = self.ticks + 1, time.time()

    def start(self) -> "LoopRunner":
        self.thread = threading.Thread(target=self._run, name="raygbm-loop", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def start_loop(cfg: PipelineConfig, say: Callable[[str], None] = log.warning) -> LoopRunner:
    """The loop for ``cfg``'s model on the Ray this process is connected to; ``say`` shows what it does."""
    from raygbm.loop.jobs import JobSubmitter

    jobs = JobSubmitter(cfg)
    controller = Controller(cfg.retrain, LoopState(home(), cfg.registry.model_name), jobs.submit, jobs.status,
                            labelled=lambda: labelled_rows(cfg))
    return LoopRunner(cfg, controller, monitor_report(), say).start()


def labelled_rows(cfg: PipelineConfig) -> int:
    """The labelled rows the store holds for ``cfg``'s model (each prediction once)."""
    rows = read_labelled(labelled_root(cfg.monitor), cfg.registry.model_name)
    return 0 if rows is None else rows.num_rows
