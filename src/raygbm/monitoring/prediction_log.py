"""The prediction log: every served row kept with its prediction id, so that a label arriving later can
be joined to what was served (``loop.feedback``).

Layout, under the monitor's log folder::

    <root>/<model name>/predictions/part-<ms>-<seq>.parquet

A part's columns: the request's raw fields (typed as in the training data, as the request gave them),
``_prediction_id``, ``_model_version``, ``_served_at``, ``_score``, ``_window`` and ``_proba`` (the
``loop.labelled`` names). Rows are buffered and written every ``flush_s`` seconds (and before a join
that needs them on disk is answered, the buffer is searched too), each part staged and renamed; once
the log holds more than ``max_rows`` rows its oldest parts are deleted (so an unlabelled prediction
stays joinable until then). A ``sample_rate`` share of rows is kept. Rows the normal path loses (a
crash, a dropped batch) come back from the replicas' write-ahead files (``monitoring.wal``). The prediction ids (and whether
each was labelled) are kept in memory for the join, about 40 bytes a row. Plain Python: no Ray.
"""

from __future__ import annotations

import itertools
import json
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raygbm.data.features import as_datetime
from raygbm.data.schema import arrow_type
from raygbm.monitoring.labelled import META_TYPES, MODEL_VERSION, PREDICTION_ID, PROBA, SCORE, SERVED_AT, WINDOW
from raygbm.monitoring.wal import SETTLE_S, WalReader

SWEEP_S = 10.0  # how often a flush also reads the write-ahead files for rows the normal path lost

LOG_META = (PREDICTION_ID, MODEL_VERSION, SERVED_AT, SCORE, WINDOW, PROBA)


@dataclass(frozen=True)
class RawRows:
    """Served rows on their way to the log as their request brought them, with their prediction ids:
    exactly one of a JSON body's bytes (``/predict``, parsed again off the request path), decoded records
    (the Open Inference Protocol's rows) or an Arrow table (``/predict/batch``)."""

    ids: Any
    body: bytes | None = None
    records: list[dict[str, Any]] | None = None
    table: pa.Table | None = None


def _to_datetime(v: Any) -> Any:
    """A time as a datetime (UTC where zoned); a value that is no time is returned as sent."""
    try:
        v = as_datetime(v)
    except (ValueError, OverflowError, OSError):
        return v
    if isinstance(v, datetime) and v.tzinfo is not None:
        v = v.astimezone(timezone.utc)
    return v


def _column(values: list[Any], type_name: str | None) -> pa.Array:
    """A raw field's values in its training type; in the type they came in when they do not fit it (an
    integer field sent 2.5: kept as sent, not truncated)."""
    try:
        t = arrow_type(type_name) if type_name else None
    except (ValueError, TypeError):
        t = None
    if t is not None and pa.types.is_timestamp(t):
        values = [None if v is None else _to_datetime(v) for v in values]
        if t.tz is None:
            values = [v.replace(tzinfo=None) if isinstance(v, datetime) else v for v in values]
    elif t is not None and pa.types.is_date(t):  # ISO text or epoch seconds: the (UTC) date
        values = [None if v is None else _to_datetime(v) for v in values]
        values = [v.date() if isinstance(v, datetime) else v for v in values]
    if t is not None and pa.types.is_integer(t) and any(isinstance(v, float) and not v.is_integer() for v in values):
        t = None  # pyarrow would truncate it
    if t is not None and pa.types.is_floating(t):  # integers beyond 2^53 as the features take them (rounded)
        values = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    try:
        return pa.array(values, type=t)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return pa.array(values)


def raw_table(parts: list[RawRows], fields: list[str], types: dict[str, str]) -> pa.Table:
    """Replica parts' rows as one table of the raw fields, in order. JSON bodies are parsed again here
    (off the request path), and a run of them becomes one set of columns: built per part, single-record
    requests would cost more in Arrow's per-column overhead than in parsing."""
    out: list[pa.Table] = []
    records: list[dict[str, Any]] = []
    for part in parts:
        if part.table is None:
            obj = json.loads(part.body) if part.body is not None else part.records
            records.extend([obj] if isinstance(obj, dict) else obj)
            continue
        if records:
            out.append(_records_table(records, fields, types))
            records = []
        out.append(_typed(part.table, fields, types))
    if records:
        out.append(_records_table(records, fields, types))
    return concat_parts(out, types)


def concat_parts(tables: list[pa.Table], types: dict[str, str]) -> pa.Table:
    """Tables of the same columns as one. A column whose types differ between them (a value kept as sent)
    is cast, unchecked, to its training type in every table, or where that fails to text: a mix never
    fails the log."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    names = tables[0].column_names
    columns: dict[str, list[Any]] = {f: [t.column(f) for t in tables] for f in names}
    for f, cols in columns.items():
        if len({c.type for c in cols}) > 1:
            try:
                want = arrow_type(types[f])
                columns[f] = [c.cast(want, safe=False) for c in cols]
            except (KeyError, ValueError, pa.ArrowException):
                columns[f] = [c.cast(pa.string()) for c in cols]
    return pa.concat_tables([pa.table({f: columns[f][i] for f in names}) for i in range(len(tables))])


def _records_table(records: list[dict[str, Any]], fields: list[str], types: dict[str, str]) -> pa.Table:
    return pa.table({f: _column([r.get(f) for r in records], types.get(f)) for f in fields})


def _typed(table: pa.Table, fields: list[str], types: dict[str, str]) -> pa.Table:
    """A table body's raw fields cast to their training types (a column that does not cast kept as sent)."""
    cols = {}
    for f in fields:
        col = table.column(f)
        try:
            want = arrow_type(types[f]) if f in types else None
            # Numbers into a float type unchecked (integers beyond 2^53 round, as the features take them).
            cols[f] = col.cast(want, safe=not pa.types.is_floating(want)) if want is not None else col
        except (pa.ArrowException, ValueError, TypeError):
            cols[f] = col
    return pa.table(cols)


@dataclass
class Segment:
    """A part of the log (``path`` None: the rows still buffered in memory)."""

    path: Path | None
    ids: pa.Array
    labelled: np.ndarray  # bool per row: a label was joined to it


class PredictionLog:
    """One model name's prediction log (see the module docstring). A failed write sets ``error`` and
    never raises: serving and monitoring go on."""

    def __init__(self, root: Path, fields: list[str], types: dict[str, str], sample_rate: float = 1.0,
                 flush_s: float = 5.0, max_rows: int = 200_000, labelled_ids: pa.Array | None = None,
                 wal: Path | None = None):
        self.root = Path(root)
        self.fields, self.types = fields, types
        self.sample_rate, self.flush_s, self.max_rows = sample_rate, flush_s, max_rows
        self._buf: list[pa.Table] = []
        self._last_flush = time.time()
        self._seq = itertools.count()
        self.error: str | None = None
        self.unlogged = 0  # served rows that could not be logged (a failed conversion)
        self._buf_labelled: np.ndarray | None = None  # whether each buffered row was labelled
        self.segments: list[Segment] = self._load(labelled_ids)
        # The replicas' write-ahead files (``monitoring.wal``): rows the normal path lost come back from them.
        self.wal = WalReader(wal) if wal is not None else None
        # Ids put in from the files, whose rows may still arrive by the normal path (then not logged twice);
        # forgotten after a minute, when nothing on its way can still be.
        self.recovered: dict[str, float] = {}
        self.recovered_rows = 0
        self._pruned_through = 0.0  # the latest serving time of a deleted part: older records are not put back
        self._last_sweep = time.time()
        self.recover()  # after a crash: everything the files hold that the log does not

    def _load(self, labelled_ids: pa.Array | None) -> list[Segment]:
        import pyarrow.parquet as pq

        out = []
        for path in sorted(self.root.glob("part-*.parquet")):
            try:
                ids = pq.read_table(path, columns=[PREDICTION_ID]).column(0).combine_chunks()
            except (OSError, pa.ArrowException):
                continue  # an unreadable part (e.g. cut short by a full disk) is left out of the join
            done = np.asarray(pc.is_in(ids, value_set=labelled_ids)) if labelled_ids is not None else np.zeros(len(ids), bool)
            out.append(Segment(path, ids, done))
        return out

    # ---- writing

    def add(self, version: str, ts: float, parts: list[RawRows], scores: np.ndarray, windows: np.ndarray | None) -> None:
        """Rows served by ``version`` (``parts`` in the order of ``scores``' rows), a ``sample_rate`` share kept
        (chosen by prediction id, so that a row read back from a write-ahead file gets the same choice)."""
        table = self._table(version, ts, parts, scores, windows)
        if table is not None and self.recovered:  # a batch's ids against the dict: not the dict against them
            ids = table.column(PREDICTION_ID).to_pylist()
            seen = np.fromiter((i in self.recovered for i in ids), bool, len(ids))
            if seen.any():
                for i in np.asarray(ids, dtype=object)[seen]:
                    self.recovered.pop(i, None)
                table = table.filter(pa.array(~seen))
        if table is not None and table.num_rows:
            self._buf.append(table)
        if time.time() - self._last_flush >= self.flush_s:
            self.flush()

    def _table(self, version: str, ts: float, parts: list[RawRows], scores: np.ndarray,
               windows: np.ndarray | None) -> pa.Table | None:
        try:
            raw = raw_table(parts, self.fields, self.types)
            ids = pa.concat_arrays([p.ids.cast(pa.string()) if isinstance(p.ids, pa.Array) else pa.array(p.ids, pa.string())
                                    for p in parts])
        except (pa.ArrowException, ValueError, TypeError, KeyError, OverflowError):
            self.unlogged += len(scores)
            return None
        if len(ids) != len(scores) or raw.num_rows != len(scores):
            self.unlogged += len(scores)
            return None
        table = raw.append_column(PREDICTION_ID, ids)
        for name, col in _meta_columns(version, ts, scores, windows).items():
            table = table.append_column(name, col)
        if self.sample_rate < 1.0:
            table = table.filter(pa.array(sampled(ids, self.sample_rate)))
        return table

    def recover(self, before: float | None = None) -> int:
        """Rows of the write-ahead files that the log lacks, put in (their drift window unknown); how many.
        ``before``: leave records served from then on to the normal path."""
        if self.wal is None:
            return 0
        try:
            records = [r for r in self.wal.read(before) if r.ts > self._pruned_through]
        except OSError as exc:
            self.error = f"the prediction log's write-ahead files: {exc.strerror or type(exc).__name__}"
            return 0
        if not records:
            return 0
        ids = pa.array([i for r in records for i in r.ids], pa.string())
        missing = self.lookup(ids) < 0
        keep = sampled(ids, self.sample_rate) if self.sample_rate < 1.0 else None  # the rows the log samples
        added, start = 0, 0
        for r in records:
            part = slice(start, start + len(r.ids))
            start += len(r.ids)
            want = missing[part] if keep is None else missing[part] & keep[part]
            if not want.any():
                continue
            try:
                raw = RawRows(**r.parts())
            except (ValueError, pa.ArrowException):
                self.unlogged += int(want.sum())
                continue
            table = self._table(r.version, r.ts, [raw], r.scores, None)
            if table is None:
                continue
            # ``_table`` holds the sampled rows only: the mask over those.
            table = table.filter(pa.array(want[:table.num_rows] if keep is None else want[keep[part]]))
            if table.num_rows:
                self._buf.append(table)
                now = time.time()
                self.recovered.update((i, now) for i in table.column(PREDICTION_ID).to_pylist())
                added += table.num_rows
        self.recovered_rows += added
        return added

    def ensure(self, ids: pa.Array) -> None:
        """Before a join: ids the log does not hold are looked for in the write-ahead files (a row answered
        moments ago may still be on its way here)."""
        if self.wal is not None and (self.lookup(ids) < 0).any():
            self.recover()

    def flush(self) -> None:
        """Write the buffered rows as one part, then delete the oldest parts beyond ``max_rows``."""
        import pyarrow.parquet as pq

        self._last_flush = time.time()
        sweep = self.wal is not None and self._last_flush - self._last_sweep >= SWEEP_S
        if sweep:
            self._last_sweep = self._last_flush
            self.recover(before=self._last_flush - SETTLE_S)
            self.recovered = {i: t for i, t in self.recovered.items() if self._last_flush - t < 60}
        if not self._buf:
            if sweep:
                self.wal.delete_settled()
            return
        try:
            table = concat_parts(self._buf, self.types)
        except (pa.ArrowException, ValueError) as exc:  # never expected: concat_parts falls back to text
            self.error = f"the prediction log: buffered rows could not be combined ({type(exc).__name__}); dropped"
            self._buf, self._buf_labelled = [], None
            return
        labelled = self._buffered().labelled
        self.root.mkdir(parents=True, exist_ok=True)
        part = self.root / f"part-{int(self._last_flush * 1000):013d}-{next(self._seq):06d}.parquet"
        tmp = part.with_name(f".{part.name}.tmp")
        try:
            pq.write_table(table, tmp)
            tmp.replace(part)
        except OSError as exc:  # e.g. a full disk: the rows stay joinable in memory until the next try
            self.error = f"the prediction log: {exc.strerror or type(exc).__name__}"
            tmp.unlink(missing_ok=True)
            return
        self._buf, self._buf_labelled = [], None
        self.segments.append(Segment(part, table.column(PREDICTION_ID).combine_chunks(), labelled))
        self._prune()
        if sweep:  # what the settled files held is in a written part now
            self.wal.delete_settled()

    def _prune(self) -> None:
        total = sum(len(s.ids) for s in self.segments)
        while len(self.segments) > 1 and total - len(self.segments[0].ids) >= self.max_rows:
            old = self.segments.pop(0)
            total -= len(old.ids)
            if old.path is not None:
                self._pruned_through = max(self._pruned_through, _latest_served(old.path))
                old.path.unlink(missing_ok=True)

    # ---- the join

    def _buffered(self) -> Segment:
        ids = (pa.concat_arrays([t.column(PREDICTION_ID).combine_chunks() for t in self._buf])
               if self._buf else pa.array([], pa.string()))
        old = self._buf_labelled
        done = np.zeros(len(ids), bool)
        if old is not None:
            done[:min(len(old), len(done))] = old[:len(done)]
        self._buf_labelled = done
        return Segment(None, ids, done)

    def _all(self) -> tuple[list[Segment], np.ndarray]:
        segs = [*self.segments, self._buffered()]
        return segs, np.cumsum([0] + [len(s.ids) for s in segs])

    def lookup(self, ids: pa.Array) -> np.ndarray:
        """Each id's position in the log (-1: not there). Each part's ids are scanned against a hash of
        the asked ids (small), never the other way round: no index of the whole log is built or kept."""
        segs, starts = self._all()
        pos = np.full(len(ids), -1, dtype=np.int64)
        for seg, start in zip(segs, starts):
            hit = np.asarray(pc.is_in(seg.ids, value_set=ids))
            if not hit.any():
                continue
            rows = np.flatnonzero(hit)
            asked = np.asarray(pc.index_in(seg.ids.filter(pa.array(hit)), value_set=ids), dtype=np.int64)
            pos[asked] = start + rows
        # index_in gives each matched log row its id's first place in ``ids``: later repeats too
        if len(ids) and (pos >= 0).any():
            first = np.asarray(pc.index_in(ids, value_set=ids), dtype=np.int64)
            pos = pos[first]
        return pos

    def rows(self, positions: np.ndarray) -> tuple[pa.Table, np.ndarray]:
        """The logged rows at ``positions`` (in that order) and whether each was labelled before; marks
        them labelled."""
        segs, starts = self._all()
        seg_of = np.searchsorted(starts, positions, side="right") - 1
        pieces, order, before = [], [], np.zeros(len(positions), bool)
        for k in np.unique(seg_of):
            pick = np.flatnonzero(seg_of == k)
            local = positions[pick] - starts[k]
            seg = segs[k]
            pieces.append(self._read(seg).take(pa.array(local)))
            before[pick] = seg.labelled[local]
            seg.labelled[local] = True
            order.append(pick)
        if not pieces:
            return pa.table({}), before
        table = pa.concat_tables(pieces, promote_options="permissive")
        inverse = np.argsort(np.concatenate(order))
        return table.take(pa.array(inverse)), before

    def _read(self, seg: Segment) -> pa.Table:
        import pyarrow.parquet as pq

        if seg.path is None:
            return pa.concat_tables(self._buf, promote_options="permissive")
        return pq.read_table(seg.path)

    def summary(self) -> dict[str, Any]:
        segs = [*self.segments, self._buffered()]
        logged = sum(len(s.ids) for s in segs)
        labelled = int(sum(int(s.labelled.sum()) for s in segs))
        return {"logged_predictions": logged, "labelled_predictions": labelled,
                "coverage": labelled / logged if logged else None, "parts": len(self.segments),
                "unlogged_rows": self.unlogged, "recovered_rows": self.recovered_rows, "log_error": self.error}


def sampled(ids: pa.Array, rate: float) -> np.ndarray:
    """Whether each prediction id is in the log's ``rate`` sample: by a hash of the id, so the same rows
    are kept however often they are offered."""
    return np.array([zlib.crc32(i.encode()) / 2**32 < rate for i in ids.to_pylist()], dtype=bool)


def _latest_served(path: Path) -> float:
    import pyarrow.parquet as pq

    try:
        return float(pc.max(pq.read_table(path, columns=[SERVED_AT]).column(0)).as_py() or 0.0)
    except (OSError, pa.ArrowException):
        return time.time()  # unreadable: nothing older than now is put back


def _meta_columns(version: str, ts: float, scores: np.ndarray, windows: np.ndarray | None) -> dict[str, pa.Array]:
    n = len(scores)
    multi = scores.ndim == 2
    return {MODEL_VERSION: pa.array([version] * n, pa.string()),
            SERVED_AT: pa.array(np.full(n, ts, dtype=np.float64)),
            SCORE: pa.nulls(n, pa.float64()) if multi else pa.array(np.asarray(scores, dtype=np.float64)),
            WINDOW: pa.nulls(n, pa.int64()) if windows is None else pa.array(np.asarray(windows, dtype=np.int64)),
            PROBA: (pa.array(scores.tolist(), META_TYPES[PROBA]) if multi else pa.nulls(n, META_TYPES[PROBA]))}
