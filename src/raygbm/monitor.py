"""Drift monitoring: a reference profile computed at training time, and windows of served traffic
compared against it.

Per numeric feature: PSI and Jensen–Shannon distance over the reference's quantile bins; per
categorical feature: chi-square (p-value) and JS distance over the reference's category codes; per
raw field: the change in missing rate; and the same for the model's scores (prediction drift). A window
(``window_size`` rows) is closed when full; its verdict is "drift" when any feature or the prediction
crosses its threshold. The core here is plain numpy (unit-tested without Ray); ``DriftMonitorActor`` is
the Ray actor the endpoint's replicas send batches to, off the request path.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raygbm.config import MonitorConfig

REFERENCE_FILE = "reference.json"
FORMAT = "raygbm.reference/1"
_EPS = 1e-4


def _bins(values: np.ndarray, n: int) -> list[float]:
    """Interior cut points at reference quantiles (unique, so a constant feature has one bin)."""
    qs = np.quantile(values, np.linspace(0, 1, n + 1)[1:-1]) if len(values) else np.array([])
    return sorted(set(float(q) for q in qs))


def _hist(values: np.ndarray, cuts: list[float]) -> np.ndarray:
    idx = np.searchsorted(np.asarray(cuts), values, side="right")
    return np.bincount(idx, minlength=len(cuts) + 1).astype(np.float64)


def reference_profile(features: np.ndarray, names: list[str], categorical: list[str], scores: np.ndarray,
                      missing_rate: dict[str, float], bins: int = 10, max_categories: int = 50) -> dict[str, Any]:
    """What the monitor compares against: computed from the training split's features and the model's
    scores on the validation split. JSON-serialisable (stored in the model bundle)."""
    feats: dict[str, Any] = {}
    for j, name in enumerate(names):
        col = features[:, j]
        col = col[~np.isnan(col)]
        if name in categorical:
            codes, counts = np.unique(col.astype(np.int64), return_counts=True)
            order = np.argsort(-counts)[:max_categories]
            kept = {int(codes[i]): float(counts[i]) for i in order}
            other = float(counts.sum() - sum(kept.values()))
            total = float(counts.sum()) or 1.0
            feats[name] = {"kind": "categorical", "codes": list(kept), "probs": [v / total for v in kept.values()] + [other / total]}
        else:
            cuts = _bins(col, bins)
            h = _hist(col, cuts)
            feats[name] = {"kind": "numeric", "cuts": cuts, "probs": (h / max(h.sum(), 1)).tolist()}
    s = scores.reshape(len(scores), -1)
    top = s.max(axis=1) if s.shape[1] > 1 else s[:, 0]
    cuts = _bins(top, bins)
    h = _hist(top, cuts)
    return {"format": FORMAT, "features": feats, "prediction": {"cuts": cuts, "probs": (h / max(h.sum(), 1)).tolist()},
            "missing_rate": missing_rate, "rows": int(features.shape[0])}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.clip(expected, _EPS, None)
    a = np.clip(actual, _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    p = p / max(p.sum(), 1e-12)
    q = q / max(q.sum(), 1e-12)
    m = (p + q) / 2

    def kl(x: np.ndarray, y: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / y[mask])))

    return math.sqrt(max(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0))


def chi_square_pvalue(expected_probs: np.ndarray, counts: np.ndarray) -> float:
    from scipy.special import chdtrc  # chi-square survival function (scipy.stats costs 3x the import)

    n = counts.sum()
    if n == 0:
        return 1.0
    exp = np.clip(expected_probs, _EPS, None)
    exp = exp / exp.sum() * n
    stat = float(np.sum((counts - exp) ** 2 / exp))
    return float(chdtrc(max(len(counts) - 1, 1), stat))


@dataclass
class _Window:
    rows: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)


class DriftMonitorCore:
    """Accumulates served rows into windows and scores each closed window against the reference."""

    def __init__(self, reference: dict[str, Any], names: list[str], config: MonitorConfig, fields: list[str] | None = None,
                 labels: dict[str, Any] | None = None):
        self.reference = reference
        self.labels = labels or {}  # added to every closed window (e.g. its model version)
        self.names = names  # the model's features: the columns of ``features``
        self.fields = fields or []  # the request's raw fields: the columns of the ``missing`` mask
        self.config = config
        self.closed: deque[dict[str, Any]] = deque(maxlen=config.keep_windows)
        self.index = 0
        self.dropped_batches = 0
        self.rows_seen = 0
        # Persistence hooks (the actor's WindowLog): rows as they are assigned to a window, and windows
        # as they close.
        self.on_rows: Any = None
        self.on_close: Any = None
        self._new()

    def _new(self) -> None:
        w = _Window()
        for name in self.names:
            ref = self.reference["features"].get(name)
            if ref is not None:
                size = len(ref["probs"])
                w.counts[name] = np.zeros(size)
        w.counts["__prediction__"] = np.zeros(len(self.reference["prediction"]["probs"]))
        self.window = w

    def observe(self, features: np.ndarray, scores: np.ndarray, missing: np.ndarray | None = None, ts: float | None = None) -> None:
        """Add a batch (``missing``: rows × ``fields`` booleans, null in the request); closes and scores
        as many windows as fill up (or, with ``window_seconds``, as many as time closes)."""
        ts = time.time() if ts is None else ts
        self.tick(ts)
        start = 0
        n = len(features)
        while start < n:
            take = min(self.config.window_size - self.window.rows, n - start)
            part = slice(start, start + take)
            part_missing = missing[part] if missing is not None else None
            if self.on_rows is not None:
                self.on_rows(self.index, ts, features[part], scores[part], part_missing)
            self._add(features[part], scores[part], part_missing, ts)
            start += take
            if self.window.rows >= self.config.window_size:
                self._close("rows")
        self.rows_seen += n

    def tick(self, now: float | None = None) -> None:
        """Close the open window if ``window_seconds`` have passed since its first row."""
        ws = self.config.window_seconds
        now = time.time() if now is None else now
        if ws and self.window.first_ts is not None and now - self.window.first_ts >= ws:
            self._close("time")

    def _add(self, features: np.ndarray, scores: np.ndarray, missing: np.ndarray | None, ts: float) -> None:
        w = self.window
        w.first_ts = ts if w.first_ts is None else w.first_ts
        w.last_ts = ts
        w.rows += len(features)
        for j, name in enumerate(self.names):
            ref = self.reference["features"].get(name)
            if ref is None:
                continue
            col = features[:, j]
            if ref["kind"] == "numeric":
                w.counts[name] += _hist(col[~np.isnan(col)], ref["cuts"])
            else:
                codes = ref["codes"]
                lookup = {c: i for i, c in enumerate(codes)}
                idx = np.fromiter((lookup.get(int(v), len(codes)) for v in col), dtype=np.int64, count=len(col))
                w.counts[name] += np.bincount(idx, minlength=len(codes) + 1)
        s = scores.reshape(len(scores), -1)
        top = s.max(axis=1) if s.shape[1] > 1 else s[:, 0]
        w.counts["__prediction__"] += _hist(top, self.reference["prediction"]["cuts"])
        if missing is not None and len(missing):
            for k, v in zip(self.fields, missing.sum(axis=0)):
                w.missing[k] = w.missing.get(k, 0) + int(v)

    def _threshold(self, name: str, statistic: str) -> float:
        per = self.config.thresholds.get(name, {})
        return float(per.get(statistic, getattr(self.config, statistic)))

    def _close(self, by: str) -> None:
        w = self.window
        if by == "time" and w.rows < self.config.min_window_rows:
            doc = {"index": self.index, "rows": w.rows, "first_ts": w.first_ts, "last_ts": w.last_ts,
                   "closed_by": by, "verdict": "insufficient_data", "drifted_features": [], "features": {},
                   "missing": {}, "prediction": None}
            self._closed(doc)
            return
        out_feats: dict[str, Any] = {}
        drifted = []
        for name in self.names:
            ref = self.reference["features"].get(name)
            if ref is None:
                continue
            counts = w.counts[name]
            probs = np.asarray(ref["probs"])
            actual = counts / max(counts.sum(), 1)
            if ref["kind"] == "numeric":
                value, stat = psi(probs, actual), "psi"
                flag = value > self._threshold(name, "psi")
                extra = {"js_distance": js_distance(probs, actual)}
            else:
                value, stat = chi_square_pvalue(probs, counts), "chi2_pvalue"
                js = js_distance(probs, actual)
                # A p-value alone flags negligible shifts once windows are large: require both.
                flag = value < self._threshold(name, "chi2_pvalue") and js > self._threshold(name, "js_distance")
                extra = {"js_distance": js}
            entry = {"statistic": stat, "value": value, "threshold": self._threshold(name, "psi" if stat == "psi" else "chi2_pvalue"),
                     "drift": bool(flag), **extra, "current": [round(float(x), 6) for x in actual]}
            out_feats[name] = entry
            if flag:
                drifted.append(name)
        missing = {}
        for name, ref_rate in self.reference.get("missing_rate", {}).items():
            rate = w.missing.get(name, 0) / max(w.rows, 1)
            delta = rate - float(ref_rate)
            flag = abs(delta) > self._threshold(name, "missing_rate_delta")
            missing[name] = {"statistic": "missing_rate_delta", "value": delta, "rate": rate,
                             "threshold": self._threshold(name, "missing_rate_delta"), "drift": bool(flag)}
            if flag:
                drifted.append(f"{name} (missing)")
        pc = w.counts["__prediction__"]
        pref = np.asarray(self.reference["prediction"]["probs"])
        pvalue = psi(pref, pc / max(pc.sum(), 1))
        pflag = pvalue > self.config.prediction_psi
        prediction = {"statistic": "psi", "value": pvalue, "threshold": self.config.prediction_psi, "drift": bool(pflag),
                      "js_distance": js_distance(pref, pc / max(pc.sum(), 1)),
                      "current": [round(float(x), 6) for x in pc / max(pc.sum(), 1)]}
        self._closed({
            "index": self.index, "rows": w.rows, "first_ts": w.first_ts, "last_ts": w.last_ts, "closed_by": by,
            "verdict": "drift" if drifted or pflag else "ok",
            "drifted_features": drifted, "features": out_feats, "missing": missing, "prediction": prediction,
        })

    def _closed(self, doc: dict[str, Any]) -> None:
        doc.update(self.labels)
        self.closed.append(doc)
        if self.on_close is not None:
            self.on_close(doc)
        self.index += 1
        self._new()

    def restore(self, windows: list[dict[str, Any]], rows: list[tuple[float, np.ndarray, np.ndarray, np.ndarray | None]]) -> None:
        """Continue from persisted state: the closed windows, then the open window's logged rows replayed
        (``(ts, features, scores, missing)`` batches, in order)."""
        self.closed.extend(windows)  # a deque: only the last keep_windows stay
        if windows:
            self.index = int(windows[-1]["index"]) + 1
        self.rows_seen = sum(int(w["rows"]) for w in windows)
        hooks, self.on_rows, self.on_close = (self.on_rows, self.on_close), None, None
        try:
            for ts, features, scores, missing in rows:
                self.observe(features, scores, missing, ts)
        finally:
            self.on_rows, self.on_close = hooks

    def report(self) -> dict[str, Any]:
        """The stable JSON document behind ``GET /drift``."""
        self.tick()
        return {
            "window_size": self.config.window_size,
            "window_seconds": self.config.window_seconds,
            "rows_seen": self.rows_seen,
            "open_window_rows": self.window.rows,
            "dropped_batches": self.dropped_batches,
            "windows": list(self.closed),
            "reference": {"features": self.reference["features"], "prediction": self.reference["prediction"]},
        }


class WindowLog:
    """One model version's monitoring on disk, so windows survive a restart of the monitor (or the cluster).

    ``meta.json``: the reference and column names; ``windows.jsonl``: each closed window as it closes;
    ``rows/part-<first>-<last>-<seq>.parquet``: served rows (the model's features, scores, null masks
    and their window index; a ``sample_rate`` share of them), written every ``flush_s`` seconds and on
    ``flush()``, each part renamed into place when complete. Parts whose windows fell out of the kept
    ones are deleted, so the log stays about ``keep_windows × window_size`` rows.
    """

    def __init__(self, root: Path, names: list[str], fields: list[str], sample_rate: float = 1.0,
                 flush_s: float = 5.0, keep_windows: int = 100):
        self.root = Path(root)
        self.names, self.fields = names, fields
        self.sample_rate, self.flush_s, self.keep_windows = sample_rate, flush_s, keep_windows
        self._rng = np.random.default_rng()
        self._buf: list[tuple[int, float, np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._last_flush = time.time()
        self._seq = 0
        self.error: str | None = None  # the last write that failed

    def save_meta(self, reference: dict[str, Any]) -> None:
        import json

        from raygbm.paths import write_text_atomic

        (self.root / "rows").mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.root / "meta.json",
                          json.dumps({"reference": reference, "names": self.names, "fields": self.fields}))

    @staticmethod
    def load_meta(root: Path) -> dict[str, Any] | None:
        import json

        path = Path(root) / "meta.json"
        return json.loads(path.read_text()) if path.exists() else None

    def add_rows(self, window: int, ts: float, features: np.ndarray, scores: np.ndarray, missing: np.ndarray | None) -> None:
        if self.sample_rate < 1.0:
            keep = self._rng.random(len(features)) < self.sample_rate
            features, scores = features[keep], scores[keep]
            missing = missing[keep] if missing is not None else None
        if len(features):
            self._buf.append((window, ts, features, scores, missing))
        if time.time() - self._last_flush >= self.flush_s:
            self.flush()

    def add_window(self, doc: dict[str, Any]) -> None:
        import json

        try:
            with open(self.root / "windows.jsonl", "a") as f:
                f.write(json.dumps(doc) + "\n")
            self._prune(int(doc["index"]) + 1 - self.keep_windows)
        except OSError as exc:  # e.g. a full disk: monitoring goes on in memory, GET /drift says so
            self.error = f"{self.root}: {exc.strerror or exc}"

    def flush(self) -> None:
        self._last_flush = time.time()
        buf, self._buf = self._buf, []
        if not buf:
            return
        try:
            self._write(buf)
        except OSError as exc:
            self.error = f"{self.root}: {exc.strerror or exc}"

    def _write(self, buf: list[tuple[int, float, np.ndarray, np.ndarray, np.ndarray | None]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        cols: dict[str, Any] = {
            "window": np.concatenate([np.full(len(b[2]), b[0], dtype=np.int64) for b in buf]),
            "ts": np.concatenate([np.full(len(b[2]), b[1]) for b in buf]),
        }
        features = np.concatenate([b[2] for b in buf])
        for j, name in enumerate(self.names):
            cols[f"feature.{name}"] = features[:, j]
        scores = np.concatenate([b[3].reshape(len(b[3]), -1) for b in buf])
        for k in range(scores.shape[1]):
            cols["score" if scores.shape[1] == 1 else f"score.{k}"] = scores[:, k]
        if self.fields and all(b[4] is not None for b in buf):
            missing = np.concatenate([b[4] for b in buf])
            for j, name in enumerate(self.fields):
                cols[f"missing.{name}"] = missing[:, j]
        self._seq += 1
        name = f"part-{buf[0][0]:08d}-{buf[-1][0]:08d}-{int(self._last_flush * 1000):013d}-{self._seq:04d}.parquet"
        rows = self.root / "rows"
        rows.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), rows / f".{name}.tmp")
        (rows / f".{name}.tmp").replace(rows / name)

    def _prune(self, oldest_kept: int) -> None:
        for part in (self.root / "rows").glob("part-*.parquet"):
            if int(part.name.split("-")[2]) < oldest_kept:
                part.unlink(missing_ok=True)

    def load_windows(self) -> list[dict[str, Any]]:
        import json

        path = self.root / "windows.jsonl"
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash
        return out[-self.keep_windows:]

    def load_rows(self, from_window: int) -> list[tuple[float, np.ndarray, np.ndarray, np.ndarray | None]]:
        """Logged rows of windows ``from_window`` on, as ``(ts, features, scores, missing)`` batches in order."""
        import pyarrow.parquet as pq

        out = []
        for part in sorted((self.root / "rows").glob("part-*.parquet"), key=lambda p: p.name.split("-")[3:]):
            if int(part.name.split("-")[2]) < from_window:
                continue
            t = pq.read_table(part)
            keep = np.asarray(t.column("window")) >= from_window
            if not keep.any():
                continue
            t = t.filter(keep)
            ts = np.asarray(t.column("ts"))
            features = np.column_stack([np.asarray(t.column(f"feature.{n}"), dtype=np.float64) for n in self.names])
            score_cols = [c for c in t.column_names if c == "score" or c.startswith("score.")]
            scores = np.column_stack([np.asarray(t.column(c)) for c in score_cols])
            scores = scores[:, 0] if scores.shape[1] == 1 else scores
            missing = (np.column_stack([np.asarray(t.column(f"missing.{n}")) for n in self.fields])
                       if self.fields and f"missing.{self.fields[0]}" in t.column_names else None)
            # One batch per distinct timestamp keeps each row's time (first/last_ts, time windows).
            for value in np.unique(ts):
                m = ts == value
                out.append((float(value), features[m], scores[m], missing[m] if missing is not None else None))
        out.sort(key=lambda b: b[0])
        return out


class DriftMonitorActor:
    """The Ray actor behind the endpoint's monitoring (created by ``raygbm.serve.start_monitor``).

    Replicas call ``observe`` without waiting for it; a new model version (a swap) starts new windows
    against that model's reference. With ``log_dir`` set, each version's windows and rows are kept on
    disk (``WindowLog``) and a restarted actor (Ray restarts it after a crash) continues where it was.
    """

    def __init__(self, config: dict[str, Any]):
        from ray.util.metrics import Counter, Gauge

        self.config = MonitorConfig.model_validate(config)
        self.version: str | None = None
        self.core: DriftMonitorCore | None = None
        self.log: WindowLog | None = None
        self.published = 0  # closed windows already exported as metrics
        # Exported through Ray's metrics agent (Prometheus format, with Ray's own metrics).
        self.m_stat = Gauge("raygbm_drift_statistic", "drift statistic of the latest closed window",
                            tag_keys=("model_version", "feature", "statistic"))
        self.m_flag = Gauge("raygbm_drift_flag", "1 if the feature drifted in the latest closed window",
                            tag_keys=("model_version", "feature"))
        self.m_verdict = Gauge("raygbm_drift_verdict", "1 if the latest closed window drifted", tag_keys=("model_version",))
        self.m_windows = Counter("raygbm_drift_windows_total", "closed drift windows", tag_keys=("model_version", "verdict"))
        self.m_rows = Counter("raygbm_monitor_rows_total", "rows received by the drift monitor", tag_keys=("model_version",))
        self.m_dropped = Counter("raygbm_monitor_dropped_batches_total", "batches replicas dropped (monitor behind)",
                                 tag_keys=("model_version",))
        self.restored_rows = 0
        self.log_error: str | None = None
        # Imported now, at deploy time, not when the first window closes or the first rows are written
        # (about a CPU-second, which would land on the endpoint's cores while it serves).
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401
        import scipy.special  # noqa: F401

        pa.table({"warm": np.zeros(1)})  # pyarrow imports pandas on its first table from a dict
        current = self._root() / "current.json" if self._root() else None
        if current is not None and current.exists():
            import json

            cur = json.loads(current.read_text())
            meta = WindowLog.load_meta(self._root() / cur["name"] / f"v{cur['version']}")
            if meta is not None:
                self.set_reference(cur["version"], meta["reference"], meta["names"], meta["fields"], cur["name"])

    def _root(self) -> Path | None:
        return Path(self.config.log_dir) if self.config.log_dir else None

    def ping(self) -> bool:
        return True

    def set_reference(self, version: str, reference: dict[str, Any], names: list[str], fields: list[str],
                      name: str = "model") -> None:
        if version == self.version:
            return
        if self.log is not None:
            self.log.flush()
        self.version = version
        self.core = DriftMonitorCore(reference, names, self.config, fields, {"model_version": version})
        self.published = 0
        self.log = None
        root = self._root()
        if root is None:
            return
        import json

        log = WindowLog(root / name / f"v{version}", names, fields, self.config.log_sample_rate,
                        self.config.log_flush_s, self.config.keep_windows)
        try:
            log.save_meta(reference)
            # The version's earlier windows and its open window's rows (after a restart or a redeploy).
            windows = log.load_windows()
            rows = log.load_rows(int(windows[-1]["index"]) + 1 if windows else 0)
        except OSError as exc:  # monitoring goes on in memory; GET /drift says why nothing is kept
            self.log_error = f"{root}: {exc.strerror or exc}"
            return
        self.core.restore(windows, rows)
        self.restored_rows = sum(len(r[1]) for r in rows)
        self.published = max(self.core.index - 1, 0)  # a restarted actor's gauges show the latest window again
        self.core.on_rows, self.core.on_close = log.add_rows, log.add_window
        self.log = log
        from raygbm.paths import write_text_atomic

        write_text_atomic(root / "current.json", json.dumps({"name": name, "version": version}))

    def observe(self, version: str, features: np.ndarray, scores: np.ndarray, missing: np.ndarray | None,
                dropped: int = 0, ts: float | None = None) -> None:
        if self.core is None or version != self.version:
            return  # a batch scored by the previous model during a swap
        self.core.dropped_batches += dropped
        self.core.observe(features, scores, missing, ts)
        tags = {"model_version": version}
        self.m_rows.inc(len(features), tags)
        if dropped:
            self.m_dropped.inc(dropped, tags)
        self._publish_closed()

    def _publish_closed(self) -> None:
        core, version = self.core, self.version
        new = core.index - self.published
        for w in list(core.closed)[-new:] if new else []:  # in order: the gauges end on the latest
            self._publish(w, version)
        self.published = core.index

    def _publish(self, window: dict[str, Any], version: str) -> None:
        self.m_windows.inc(1, {"model_version": version, "verdict": window["verdict"]})
        if window["prediction"] is None:  # insufficient_data: nothing scored
            return
        self.m_verdict.set(1.0 if window["verdict"] == "drift" else 0.0, {"model_version": version})
        for name, e in [*window["features"].items(), ("__prediction__", window["prediction"])]:
            self.m_stat.set(float(e["value"]), {"model_version": version, "feature": name, "statistic": e["statistic"]})
            self.m_flag.set(1.0 if e["drift"] else 0.0, {"model_version": version, "feature": name})

    def report(self) -> dict[str, Any]:
        """The current version's windows; also the point where buffered rows reach the log."""
        if self.core is None:
            return {"model_version": None, "windows": []}
        self.core.tick()
        self._publish_closed()
        if self.log is not None:
            self.log.flush()
        return {"model_version": self.version, "log_dir": str(self.log.root) if self.log else None,
                "log_error": self.log_error or (self.log.error if self.log else None), "restored_rows": self.restored_rows, **self.core.report()}


def _svg_bars(ref: list[float], cur: list[float] | None, labels: list[str]) -> str:
    """Reference (grey) against current (blue) bars as inline SVG."""
    import html

    w, h, n = 320, 90, max(len(ref), 1)
    bw = w / n
    top = max(max(ref or [0]), max(cur or [0]), 1e-9)
    parts = [f'<svg width="{w}" height="{h + 14}" xmlns="http://www.w3.org/2000/svg">']
    for i, r in enumerate(ref):
        rh = h * r / top
        parts.append(f'<rect x="{i * bw:.1f}" y="{h - rh:.1f}" width="{bw * 0.45:.1f}" height="{rh:.1f}" fill="#999"/>')
        if cur is not None and i < len(cur):
            ch = h * cur[i] / top
            parts.append(f'<rect x="{i * bw + bw * 0.45:.1f}" y="{h - ch:.1f}" width="{bw * 0.45:.1f}" height="{ch:.1f}" fill="#36c"/>')
        if i < len(labels):
            parts.append(f'<text x="{i * bw:.1f}" y="{h + 12}" font-size="8">{html.escape(labels[i])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def drift_report_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: every window's verdict, and reference vs latest-window histograms."""
    import html

    windows = report.get("windows", [])
    ref = report.get("reference", {"features": {}, "prediction": {"probs": [], "cuts": []}})
    rows = "".join(
        f"<tr><td>{w['index']}</td><td>{w.get('model_version', '')}</td><td>{w['rows']}</td>"
        f"<td class='{w['verdict']}'>{w['verdict']}</td><td>{html.escape(', '.join(w['drifted_features']))}</td></tr>"
        for w in windows)
    last = windows[-1] if windows else None
    cards = []
    for name, r in ref.get("features", {}).items():
        entry = last["features"].get(name) if last else None
        labels = [f"{c:.3g}" for c in r.get("cuts", [])] if r["kind"] == "numeric" else [str(c) for c in r.get("codes", [])] + ["other"]
        stat = f"{entry['statistic']} {entry['value']:.4g} (threshold {entry['threshold']:g})" if entry else "no window yet"
        flag = " drift" if entry and entry["drift"] else ""
        cards.append(f"<div class='card{flag}'><b>{html.escape(name)}</b> {html.escape(stat)}<br>"
                     f"{_svg_bars(r['probs'], entry['current'] if entry else None, labels)}</div>")
    pred = last["prediction"] if last else None
    cards.append(f"<div class='card{' drift' if pred and pred['drift'] else ''}'><b>prediction</b> "
                 + (f"psi {pred['value']:.4g}" if pred else "") + "<br>"
                 + _svg_bars(ref["prediction"]["probs"], pred["current"] if pred else None,
                             [f"{c:.2g}" for c in ref["prediction"].get("cuts", [])]) + "</div>")
    return (
        "<!doctype html><meta charset='utf-8'><title>raygbm drift report</title><style>"
        "body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px}.drift{color:#c00;border-color:#c00}"
        ".card{display:inline-block;border:1px solid #ccc;margin:4px;padding:6px;vertical-align:top}</style>"
        f"<h1>Drift report</h1><p>model v{html.escape(str(report.get('model_version')))}; window size "
        f"{report.get('window_size')}; {report.get('rows_seen', 0)} rows seen; {report.get('dropped_batches', 0)} "
        "batches dropped. Grey: training reference; blue: latest closed window.</p>"
        f"<table><tr><th>window</th><th>model</th><th>rows</th><th>verdict</th><th>drifted</th></tr>{rows}</table>"
        f"<h2>Latest window</h2>{''.join(cards)}\n"
    )
