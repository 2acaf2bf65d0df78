"""The loop's driver in `raygbm serve`'s process: every ``retrain.check_s`` it checks the watched promotion
(rollback), reads GET /drift and the champion's realized performance, and lets the ``Controller`` submit a
retraining Ray Job. A background thread of the serving entry point, never in a replica's request path."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from raygbm.config import PipelineConfig
from raygbm.errors import DataError
from raygbm.loop.decisions import performance_drop
from raygbm.loop.retrain import holdout_metric, labelled_root
from raygbm.loop.rollback import check_rollback
from raygbm.loop.triggers import Controller, Trigger
from raygbm.monitoring.labelled import read_labelled, training_rows
from raygbm.monitoring.loop_state import LoopState, submission_problem
from raygbm.paths import home
from raygbm.registry.store import Registry
from raygbm.serving.client import Endpoint

log = logging.getLogger(__name__)


def realized_trigger(cfg: PipelineConfig) -> Trigger | None:
    """The champion's gate metric on the last ``retrain.performance_rows`` labelled rows it served, worse
    than its registered test metric by more than ``retrain.performance_drop``. One trigger id per block of
    that many rows, so a persisting drop triggers again only on new labels."""
    if cfg.retrain.performance_drop is None:
        return None
    registry = Registry(cfg.registry)
    champ = registry.get()
    if champ is None:
        return None
    rows = read_labelled(labelled_root(cfg.monitor), cfg.registry.model_name, versions=[champ.version])
    n = cfg.retrain.performance_rows
    if rows is None or rows.num_rows < n:
        return None
    metric = champ.gate_metric
    expected = champ.tags.get(f"test_{metric}")
    value = holdout_metric(registry, champ.version, training_rows(rows.slice(rows.num_rows - n)), metric)
    if value is None or expected is None:
        return None
    reason = performance_drop(metric, value, float(expected), cfg.retrain.performance_drop)
    if reason is None:
        return None
    return Trigger(f"performance-v{champ.version}-r{rows.num_rows // n}", "performance",
                   f"champion v{champ.version}: {reason} on its last {n} labelled rows")


def drift_fetcher(url: str, headers: dict[str, str] | None = None) -> Callable[[], dict[str, Any] | None]:
    """GET /drift of the endpoint (None when it does not answer: monitoring off, restarting)."""
    endpoint = Endpoint(url, headers)

    def fetch() -> dict[str, Any] | None:
        try:
            return endpoint.get_json("/drift")
        except DataError:
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

    def tick(self) -> dict[str, Any] | None:
        check_rollback(self.cfg.retrain, self.cfg.registry, self.state, labelled_root(self.cfg.monitor))
        entry = self.controller.tick(self.fetch_drift(), realized_trigger(self.cfg))
        if entry is not None:  # what the loop did, where the person running the endpoint sees it
            problem = submission_problem(self.state.read())
            self.say(f"loop: cannot submit the retraining: {problem}" if problem else
                     f"loop: trigger {entry['id']} ({entry['reason']}): {entry['outcome']}")
        return entry

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.retrain.check_s):
            try:
                self.tick()
            except Exception:  # a failed check (registry, store) must not end the loop; the next one retries
                log.exception("loop check failed")

    def start(self) -> "LoopRunner":
        self.thread = threading.Thread(target=self._run, name="raygbm-loop", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def start_loop(cfg: PipelineConfig, url: str, headers: dict[str, str] | None = None,
               say: Callable[[str], None] = log.warning) -> LoopRunner:
    """The loop for an endpoint at ``url`` on the Ray this process is connected to; ``say`` shows what it does."""
    from raygbm.loop.jobs import JobSubmitter

    jobs = JobSubmitter(cfg)
    controller = Controller(cfg.retrain, LoopState(home(), cfg.registry.model_name), jobs.submit, jobs.status)
    return LoopRunner(cfg, controller, drift_fetcher(url, headers), say).start()
