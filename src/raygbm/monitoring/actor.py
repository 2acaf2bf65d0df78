"""The drift monitor as one named Ray actor: ``DriftMonitorActor`` wires a ``DriftMonitorCore`` per model
version, that version's ``WindowLog`` and the Prometheus metrics (``DriftMetrics``); and the loop's data
side: the model name's ``PredictionLog``, the join of label feedback to it (written to the labelled
store) and each window's performance (``WindowPerformance``). ``start_monitor``
creates the actor (the deploying process), ``monitor_handle`` finds it (the endpoint's replicas).
Nothing here imports Ray until it is called."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from raygbm.config import MonitorConfig
from raygbm.monitoring.feedback import LabelSpec, encoded, join
from raygbm.monitoring.labelled import MODEL_VERSION, PREDICTION_ID, labelled_dir, read_labelled, write_labelled
from raygbm.monitoring.performance import WindowPerformance
from raygbm.monitoring.prediction_log import PredictionLog
from raygbm.monitoring.wal import wal_dir
from raygbm.monitoring.window_log import WindowLog
from raygbm.monitoring.windows import ClosedWindow, DriftMonitorCore
from raygbm.paths import write_text_atomic

MONITOR_ACTOR = "raygbm-drift-monitor"
PREDICTION_FEATURE = "__prediction__"  # the ``feature`` tag value of the prediction's drift metrics
CURRENT_FILE = "current.json"  # in ``log_dir``: the model name and version a restarted actor continues
LOOP_FILE = "loop.json"  # in a version's folder: its raw fields, their types, the label and the threshold


class DriftMetrics:
    """The monitor's metrics, exported through Ray's metrics agent (Prometheus format, with Ray's own)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        self.statistic = Gauge("raygbm_drift_statistic", "drift statistic of the latest closed window",
                               tag_keys=("model_version", "feature", "statistic"))
        self.flag = Gauge("raygbm_drift_flag", "1 if the feature drifted in the latest closed window",
                          tag_keys=("model_version", "feature"))
        self.verdict = Gauge("raygbm_drift_verdict", "1 if the latest closed window drifted", tag_keys=("model_version",))
        self.alert = Gauge("raygbm_drift_alert", "1 if drift persists (monitor.alert_after) at the latest closed window",
                           tag_keys=("model_version",))
        self.threshold = Gauge("raygbm_drift_threshold", "threshold of the drift statistic in the latest closed window",
                               tag_keys=("model_version", "feature", "statistic"))
        self.windows = Counter("raygbm_drift_windows_total", "closed drift windows", tag_keys=("model_version", "verdict"))
        self.rows = Counter("raygbm_monitor_rows_total", "rows received by the drift monitor", tag_keys=("model_version",))
        self.dropped = Counter("raygbm_monitor_dropped_batches_total", "batches replicas dropped (monitor behind)",
                               tag_keys=("model_version",))

    def received(self, version: str, rows: int, dropped: int) -> None:
        tags = {"model_version": version}
        self.rows.inc(rows, tags)
        if dropped:
            self.dropped.inc(dropped, tags)

    def publish(self, window: ClosedWindow, version: str) -> None:
        """A closed window: counted, and (when scored) the gauges set to its statistics."""
        self.windows.inc(1, {"model_version": version, "verdict": window["verdict"]})
        if "alert" in window:
            self.alert.set(1.0 if window["alert"] else 0.0, {"model_version": version})
        if window["prediction"] is None:  # insufficient_data: nothing scored
            return
        self.verdict.set(1.0 if window["verdict"] == "drift" else 0.0, {"model_version": version})
        for name, e in [*window["features"].items(), (PREDICTION_FEATURE, window["prediction"])]:
            tags = {"model_version": version, "feature": name, "statistic": e["statistic"]}
            self.statistic.set(float(e["value"]), tags)
            self.threshold.set(float(e["threshold"]), tags)
            self.flag.set(1.0 if e["drift"] else 0.0, {"model_version": version, "feature": name})


def _warm_imports() -> None:
    """Import at deploy time what the first closed window and the first written rows need, so that this
    CPU time does not land on the endpoint's cores while it serves."""
    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401
    import scipy.special  # noqa: F401

    pa.table({"warm": np.zeros(1)})  # pyarrow imports pandas on its first table from a dict


def _version_dir(root: Path, name: str, version: str) -> Path:
    return root / name / f"v{version}"


class DriftMonitorActor:
    """The Ray actor behind the endpoint's monitoring (created by ``start_monitor``).

    Replicas call ``observe`` without waiting for it; a new model version (a swap) starts new windows
    against that model's reference. With ``log_dir`` set, each version's windows and rows are kept on
    disk (``WindowLog``) and a restarted actor (Ray restarts it after a crash) continues where it was.
    """

    def __init__(self, config: dict[str, Any]):
        self.config = MonitorConfig.model_validate(config)
        self.version: str | None = None
        self.core: DriftMonitorCore | None = None
        self.log: WindowLog | None = None
        self.published = 0  # closed windows already exported as metrics
        self.metrics = DriftMetrics()
        self.restored_rows = 0
        self.log_error: str | None = None
        self.name: str | None = None
        self.spec: LabelSpec | None = None
        self.predictions: PredictionLog | None = None  # the current model name's
        self.perf: WindowPerformance | None = None
        self.received = {"accepted": 0, "unknown_ids": 0, "duplicates": 0, "requests": 0}
        self._log_close: Any = None
        _warm_imports()
        self._resume()

    def _root(self) -> Path | None:
        return Path(self.config.log_dir) if self.config.log_dir else None

    def _resume(self) -> None:
        """Continue the model version the log was following (after Ray restarted this actor)."""
        root = self._root()
        if root is None or not (root / CURRENT_FILE).exists():
            return
        cur = json.loads((root / CURRENT_FILE).read_text())
        meta = WindowLog.load_meta(_version_dir(root, cur["name"], cur["version"]))
        if meta is not None:
            self.set_reference(cur["version"], meta["reference"], meta["names"], meta["fields"], cur["name"])

    def ping(self) -> bool:
        return True

    def pid(self) -> int:
        import os

        return os.getpid()

    def set_reference(self, version: str, reference: dict[str, Any], names: list[str], fields: list[str],
                      name: str = "model", loop: dict[str, Any] | None = None) -> None:
        """A model version to monitor (idempotent). ``loop``: what its prediction log needs (the raw fields,
        their types, the label, the threshold); a restarted actor reads it back from the version's folder."""
        if version == self.version:
            return
        if self.log is not None:
            self.log.flush()
        self.version = version
        self.core = DriftMonitorCore(reference, names, self.config, fields, {"model_version": version})
        self.published = 0
        self.log = None
        root = self._root()
        if root is not None:
            self._open_log(root, name, version, reference, names, fields)
        self._start_loop(name, version, reference, loop)

    def _open_log(self, root: Path, name: str, version: str, reference: dict[str, Any], names: list[str],
                  fields: list[str]) -> None:
        """Attach the version's log to the new core, after replaying what it holds."""
        core = self.core
        log = WindowLog(_version_dir(root, name, version), names, fields, self.config.log_sample_rate,
                        self.config.log_flush_s, self.config.keep_windows)
        try:
            log.save_meta(reference)
            # The version's earlier windows and its open window's rows (after a restart or a redeploy).
            windows = log.load_windows()
            rows = log.load_rows(int(windows[-1]["index"]) + 1 if windows else 0)
        except OSError as exc:  # monitoring goes on in memory; GET /drift says why nothing is kept
            self.log_error = f"the drift window log: {exc.strerror or type(exc).__name__}"
            return
        core.restore(windows, rows)
        self.restored_rows = sum(len(r[1]) for r in rows)
        self.published = max(core.index - 1, 0)  # a restarted actor's gauges show the latest window again
        core.on_rows, core.on_close = log.add_rows, log.add_window
        self.log = log
        write_text_atomic(root / CURRENT_FILE, json.dumps({"name": name, "version": version}))

    # ---- the loop's data side

    def _start_loop(self, name: str, version: str, reference: dict[str, Any], loop: dict[str, Any] | None) -> None:
        """The performance of the new version's windows, and the model name's prediction log."""
        cfg, root = self.config.feedback, self._root()
        vdir = _version_dir(root, name, version) if root is not None else None
        if loop is None and vdir is not None and (vdir / LOOP_FILE).exists():
            loop = json.loads((vdir / LOOP_FILE).read_text())
        self.core.on_close, self._log_close = self._closed, self.core.on_close
        if loop is None:
            self.spec = self.perf = None
            return
        self.spec = LabelSpec(**loop["label"])
        self.perf = WindowPerformance(self.spec.task, float(loop["threshold"]), reference.get("performance"),
                                      cfg.bound_rate, cfg.min_labelled_rows, self.config.keep_windows)
        if root is None or not cfg.enabled:
            self.predictions = None
            return
        try:
            write_text_atomic(vdir / LOOP_FILE, json.dumps(loop))
            if self.name != name or self.predictions is None:
                if self.predictions is not None:
                    self.predictions.flush()
                self.predictions = PredictionLog(root / name / "predictions", loop["fields"], loop["types"],
                                                 cfg.log_sample_rate, self.config.log_flush_s, cfg.max_rows,
                                                 _labelled_ids(root, name), wal_dir(root, name))
            earlier = read_labelled(root, name, versions=[version])  # labels that arrived before a restart
        except OSError as exc:
            self.log_error = f"the prediction log: {exc.strerror or type(exc).__name__}"
            return
        self.name = name
        if earlier is not None:
            self.perf.add_labels(*encoded(earlier, self.spec))

    def _closed(self, doc: ClosedWindow) -> None:
        """A window closed: its estimated performance kept with it (in the log too), then the log's hook."""
        if self.perf is not None:
            doc["performance"] = {"estimated": self.perf.closed(int(doc["index"]))}  # type: ignore[typeddict-unknown-key]
        if self._log_close is not None:
            self._log_close(doc)

    def feedback(self, ids: Any, labels: Any) -> dict[str, Any]:
        """Labels joined to the prediction log, the joined rows written to the labelled store; the counts
        (or ``error``: nothing to join against, or the store could not be written)."""
        log, spec = self.predictions, self.spec
        if log is None or spec is None:
            return {"error": "the prediction log is off (monitor.feedback.enabled, monitor.log_dir)", "status": 404}
        joined = join(log, ids, labels, spec)
        if joined.table is not None:
            try:
                write_labelled(self._root(), self.name, joined.table)
            except OSError as exc:
                self.log_error = f"the labelled store: {exc.strerror or type(exc).__name__}"
                return {"error": "the labelled store could not be written", "status": 503}
            import pyarrow.compute as pc

            mine = joined.table.filter(pc.equal(joined.table.column(MODEL_VERSION), self.version))
            if self.perf is not None and mine.num_rows:
                self.perf.add_labels(*encoded(mine, spec))
        for k, v in joined.counts().items():
            self.received[k] += v
        self.received["requests"] += 1
        return joined.counts()

    def feedback_summary(self) -> dict[str, Any]:
        """The join coverage: predictions logged and labelled, and the labels received so far."""
        if self.predictions is None:
            return {"enabled": False}
        return {"enabled": True, "model_name": self.name, **self.predictions.summary(), "received": dict(self.received)}

    def observe(self, version: str, features: np.ndarray, scores: np.ndarray, missing: np.ndarray | None,
                dropped: int = 0, ts: float | None = None, raw: list[Any] | None = None) -> None:
        """Served rows: into the drift windows, the performance estimate and (with ``raw``, the request
        parts in row order) the prediction log."""
        if self.core is None or version != self.version:
            return  # a batch scored by the previous model during a swap
        core = self.core
        ts = time.time() if ts is None else ts
        core.tick(ts)  # first, so the windows the rows fall in are known before they are added
        windows = core.index + (core.window.rows + np.arange(len(features))) // self.config.window_size
        if self.perf is not None:
            self.perf.add_scores(windows, scores)
        core.dropped_batches += dropped
        core.observe(features, scores, missing, ts)
        if raw is not None and self.predictions is not None:
            self.predictions.add(version, ts, raw, scores, windows)
        self.metrics.received(version, len(features), dropped)
        self._publish_closed()

    def _publish_closed(self) -> None:
        core, version = self.core, self.version
        new = core.index - self.published
        for w in list(core.closed)[-new:] if new else []:  # in order: the gauges end on the latest
            self.metrics.publish(w, version)
        self.published = core.index

    def report(self) -> dict[str, Any]:
        """The current version's windows; also the point where buffered rows reach the log."""
        if self.core is None:
            return {"model_version": None, "windows": []}
        self.core.tick()
        self._publish_closed()
        if self.log is not None:
            self.log.flush()
        if self.predictions is not None:
            self.predictions.flush()
        doc = self.core.report()
        if self.perf is not None:
            doc["windows"] = [{**w, "performance": self.perf.describe(int(w["index"]), int(w["rows"]),
                                                                       w.get("performance", {}).get("estimated"))}
                              for w in doc["windows"]]
        # No server paths here (GET /drift shows it): whether the windows are logged, and a failure by role.
        return {"model_version": self.version, "logging": self.log is not None,
                "log_error": self.log_error or (self.log.error if self.log else None), "restored_rows": self.restored_rows,
                **doc, "feedback": self.feedback_summary()}


def _labelled_ids(root: Path, name: str) -> Any:
    """Every prediction id of ``name``'s labelled store (which logged predictions were labelled before)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(labelled_dir(root, name).glob("part-*.parquet"))
    if not parts:
        return None
    return pa.concat_arrays([pq.read_table(p, columns=[PREDICTION_ID]).column(0).combine_chunks() for p in parts])


def monitor_handle() -> Any:
    """The running monitor actor (``start_monitor`` created it)."""
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

    actor = ray.remote(DriftMonitorActor).options(
        name=MONITOR_ACTOR, namespace="raygbm", get_if_exists=True, lifetime="detached", num_cpus=0,
        max_pending_calls=monitor_cfg.max_pending_batches, max_restarts=-1,
    ).remote(resolved_monitor(monitor_cfg).model_dump(mode="json"))
    ray.get(actor.ping.remote())
    return actor
