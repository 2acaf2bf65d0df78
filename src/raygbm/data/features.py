"""The preprocessor: learned on the training split only, saved as JSON, applied identically to a read
block (a pyarrow Table) and to a single request record (a dict).

Output features: numeric (and derived) columns as float64, categorical columns as int32 codes for
LightGBM's native categorical handling, where code 0 is reserved for missing and unseen categories and
known categories are 1..K in order of training frequency.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timezone
from typing import Any, Mapping
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raygbm.config import DerivedFeature, FeaturesConfig
from raygbm.data.schema import DatasetSchema, arrow_type
from raygbm.data.stats import TableStats
from raygbm.data.stats import to_float64 as _f64
from raygbm.data.task import infer_task, label_classes
from raygbm.errors import DataError

FORMAT = "raygbm.preprocessor/1"
UNSEEN = 0  # the reserved code for missing and unseen categories
TIME_OPS = ("hour", "dayofweek", "month")  # derived features of one time column


# --------------------------------------------------------------------------------------- derived features


def add_derived(table: pa.Table, derived: list[DerivedFeature]) -> pa.Table:
    """Append derived columns (float64) computed from raw columns; missing inputs give missing outputs."""
    for d in derived:
        if d.op in TIME_OPS:
            ts = table.column(d.inputs[0])
            part = {"hour": pc.hour, "dayofweek": pc.day_of_week, "month": pc.month}[d.op](ts)
            col = pc.cast(part, pa.float64())
        else:
            a, b = _f64(table.column(d.inputs[0])), _f64(table.column(d.inputs[1]))
            if d.op == "ratio":
                col = pc.if_else(pc.equal(b, 0.0), pa.scalar(None, pa.float64()), pc.divide(a, b))
            else:
                col = {"difference": pc.subtract, "sum": pc.add, "product": pc.multiply}[d.op](a, b)
        table = table.append_column(d.name, col)
    return table


def as_training_time(col: pa.ChunkedArray | pa.Array, trained: str) -> pa.ChunkedArray | pa.Array:
    """A time column sent for scoring, in the time type the model was trained on, so calendar parts come
    out as in training and as ``transform_record`` takes them: naive times are UTC, zoned times are
    converted to the training zone (or to naive UTC), and a timestamp sent for a date column is its UTC
    date (MLflow and CSV readers hand dates over as timestamps)."""
    try:
        want = arrow_type(trained)
    except ValueError:
        return col
    if col.type == want or not pa.types.is_timestamp(col.type):
        return col
    if pa.types.is_timestamp(want) and want.tz is not None and col.type.tz is None:
        col = pc.assume_timezone(col, "UTC")
    elif pa.types.is_date(want) and col.type.tz is not None:
        col = pc.cast(col, pa.timestamp(col.type.unit))  # the UTC wall clock
    return pc.cast(col, want, safe=False)


def _index_in(v: pa.ChunkedArray | pa.Array, values: list) -> pa.ChunkedArray | pa.Array:
    """Each value's position in ``values`` (null when absent); a dictionary column is looked up through its
    dictionary (a few distinct values) and the codes taken by index, which is much cheaper per row."""
    if not pa.types.is_dictionary(v.type):
        return pc.index_in(v, value_set=pa.array(values, type=v.type))
    value_set = pa.array(values, type=v.type.value_type)
    chunks = v.chunks if isinstance(v, pa.ChunkedArray) else [v]
    out = [pc.take(pc.index_in(ch.dictionary, value_set=value_set), ch.indices) for ch in chunks]
    return pa.chunked_array(out, type=pa.int32())


def as_datetime(v: Any) -> Any:
    """A request's timestamp value as a datetime: ISO text, epoch seconds (UTC) or a date; anything else
    is returned as it came (the caller decides whether that is an error)."""
    if isinstance(v, str):
        return datetime.fromisoformat(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return datetime.fromtimestamp(v, tz=timezone.utc)
    if isinstance(v, date) and not isinstance(v, datetime):
        return datetime(v.year, v.month, v.day)
    return v


def _to_datetime(v: Any, arrow_type: str) -> datetime | None:
    if v is None:
        return None
    v = as_datetime(v)
    if not isinstance(v, datetime):
        raise DataError(f"expected a timestamp, got {type(v).__name__}")
    tz = _tz_of(arrow_type)
    if tz is not None:
        # Arrow computes calendar parts of a tz-aware timestamp in that zone; naive input is UTC.
        v = (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).astimezone(tz)
    elif v.tzinfo is not None:
        v = v.astimezone(timezone.utc).replace(tzinfo=None)
    return v


def _tz_of(arrow_type: str) -> Any:
    if "tz=" not in arrow_type:
        return None
    name = arrow_type.split("tz=", 1)[1].rstrip("]").strip()
    return timezone.utc if name.upper() in ("UTC", "+00:00", "Z") else ZoneInfo(name)


def _num(v: Any) -> float:
    if v is None:
        return math.nan
    return float(v)


def derived_record(record: Mapping[str, Any], derived: list[DerivedFeature], types: Mapping[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in derived:
        if d.op in TIME_OPS:
            dt = _to_datetime(record.get(d.inputs[0]), types.get(d.inputs[0], ""))
            if dt is None:
                out[d.name] = math.nan
            else:
                out[d.name] = float(dt.hour if d.op == "hour" else dt.weekday() if d.op == "dayofweek" else dt.month)
            continue
        a, b = _num(record.get(d.inputs[0])), _num(record.get(d.inputs[1]))
        if d.op == "ratio":
            out[d.name] = math.nan if b == 0.0 or math.isnan(b) or math.isnan(a) else a / b
        elif d.op == "difference":
            out[d.name] = a - b
        elif d.op == "sum":
            out[d.name] = a + b
        else:
            out[d.name] = a * b
    return out


# --------------------------------------------------------------------------------------- the preprocessor


def _python_value(v: Any) -> Any:
    """A JSON-safe category value that compares equal to what pyarrow returns for the column."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


class Preprocessor:
    """Imputation, optional clipping to training quantiles, category codes and derived features.

    Follows the scikit-learn contract: ``__init__`` stores settings, ``fit`` learns the attributes ending
    in ``_`` and returns self.
    """

    def __init__(self, schema: DatasetSchema, config: FeaturesConfig | None = None, max_categories: int = 1000):
        self.schema = schema
        self.config = config or FeaturesConfig()
        self.max_categories = max_categories

    # ---- fitting

    @property
    def numeric_features(self) -> list[str]:
        return self.schema.numeric + [d.name for d in self.config.derived]

    @property
    def input_columns(self) -> list[str]:
        """The raw columns an input must carry: the features and every derived feature's inputs."""
        s = self.schema
        return list(dict.fromkeys(s.features + s.derived_inputs + [c for d in self.config.derived for c in d.inputs]))

    def fit_stats(self, train: TableStats, label_classes: list[Any] | None, task: str) -> "Preprocessor":
        """Learn from the training split's statistics (merged from every block)."""
        self.task_ = task
        self.impute_: dict[str, float] = {}
        self.clip_: dict[str, tuple[float, float]] = {}
        for c in self.numeric_features:
            s = train.numeric[c]
            if self.config.impute == "median":
                (value,) = s.quantiles([0.5])
            elif self.config.impute == "mean":
                value = s.mean
            else:
                value = None
            if value is not None:
                self.impute_[c] = float(value)
            if self.config.clip_quantiles is not None:
                lo, hi = s.quantiles(list(self.config.clip_quantiles))
                if lo is not None and hi is not None:
                    self.clip_[c] = (float(lo), float(hi))
        self.categories_: dict[str, list[Any]] = {}
        for c in self.schema.categorical:
            counts = train.categorical[c].counts
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
            self.categories_[c] = [_python_value(k) for k, _ in ranked[: self.max_categories]]
        self.label_classes_ = list(label_classes) if label_classes is not None else None
        self.feature_names_ = self.numeric_features + self.schema.categorical
        self.categorical_features_ = list(self.schema.categorical)
        self._index()
        return self

    def fit(self, table: pa.Table, task: str | None = None) -> "Preprocessor":
        """Fit on an in-memory training table (the distributed path merges block statistics instead)."""
        table = add_derived(table, self.config.derived)
        label_numeric = pa.types.is_floating(table.schema.field(self.schema.label).type)
        stats = TableStats.of(
            table, self.numeric_features, self.schema.categorical, self.schema.label, label_numeric,
            np.ones(table.num_rows, dtype=bool),
        )
        task = task or infer_task(table.schema.field(self.schema.label).type, stats.label)
        return self.fit_stats(stats, label_classes(task, stats.label), task)

    def _index(self) -> None:
        self._code = {c: {v: i + 1 for i, v in enumerate(vals)} for c, vals in self.categories_.items()}
        self._label_code = {v: i for i, v in enumerate(self.label_classes_)} if self.label_classes_ is not None else None

    @property
    def category_codes(self) -> dict[str, dict[Any, int]]:
        """Per categorical column, category value → code (1..K; absent values get ``UNSEEN``).

        The preprocessor's own lookup tables, shared rather than copied (the endpoint reads them for
        every request): read them, never change them."""
        self._check_fitted()
        return self._code

    def _check_fitted(self) -> None:
        if not hasattr(self, "feature_names_"):
            raise RuntimeError("Preprocessor is not fitted")

    # ---- transforming a batch

    def transform_table(self, table: pa.Table, with_label: bool = True) -> pa.Table:
        """Features (and the encoded label, when present and asked for) of a pyarrow Table."""
        self._check_fitted()
        for c in {d.inputs[0] for d in self.config.derived if d.op in TIME_OPS}:
            table = table.set_column(table.column_names.index(c), c, as_training_time(table.column(c), self.schema.types[c]))
        table = add_derived(table, self.config.derived)
        cols: dict[str, pa.Array | pa.ChunkedArray] = {}
        for c in self.numeric_features:
            x = _f64(table.column(c))
            x = pc.if_else(pc.is_nan(x), pa.scalar(None, pa.float64()), x)
            if c in self.clip_:
                lo, hi = self.clip_[c]
                x = pc.min_element_wise(pc.max_element_wise(x, lo, skip_nulls=False), hi, skip_nulls=False)
            cols[c] = pc.fill_null(x, self.impute_.get(c, math.nan))
        for c in self.schema.categorical:
            idx = _index_in(table.column(c), self.categories_[c])
            cols[c] = pc.cast(pc.add(pc.fill_null(idx, UNSEEN - 1), 1), pa.int32())
        label = self.schema.label
        if with_label and label in table.column_names:
            cols[label] = self.encode_label(table.column(label))
        return pa.table(cols)

    def encode_label(self, y: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
        if self.label_classes_ is None:
            return _f64(y)
        if pa.types.is_dictionary(y.type):
            y = pc.cast(y, y.type.value_type)
        return pc.cast(pc.fill_null(pc.index_in(y, value_set=pa.array(self.label_classes_, type=y.type)), -1), pa.int32())

    # ---- transforming one record (the endpoint's hot path: plain Python, no pandas, no Arrow)

    def transform_record(self, record: Mapping[str, Any]) -> np.ndarray:
        """One raw record (a JSON object) → the float64 feature row, equal to ``transform_table``'s."""
        self._check_fitted()
        row = np.empty(len(self.feature_names_), dtype=np.float64)
        derived = derived_record(record, self.config.derived, self.schema.types) if self.config.derived else {}
        i = 0
        for c in self.numeric_features:
            v = derived[c] if c in derived else _num(record.get(c))
            if v != v:  # NaN: missing
                row[i] = self.impute_.get(c, math.nan)
            else:
                if c in self.clip_:
                    lo, hi = self.clip_[c]
                    v = min(max(v, lo), hi)
                row[i] = v
            i += 1
        for c in self.schema.categorical:
            row[i] = self._code[c].get(record.get(c), UNSEEN)
            i += 1
        return row

    def transform_records(self, records: list[Mapping[str, Any]]) -> np.ndarray:
        out = np.empty((len(records), len(self.feature_names_)), dtype=np.float64)
        for j, r in enumerate(records):
            out[j] = self.transform_record(r)
        return out

    # ---- persistence: JSON only

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format": FORMAT,
            "schema": self.schema.to_dict(),
            "config": self.config.model_dump(mode="json"),
            "max_categories": self.max_categories,
            "task": self.task_,
            "impute": self.impute_,
            "clip": {c: list(v) for c, v in self.clip_.items()},
            "categories": self.categories_,
            "label_classes": self.label_classes_,
            "feature_names": self.feature_names_,
            "categorical_features": self.categorical_features_,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessor":
        if d.get("format") != FORMAT:
            raise DataError(f"not a raygbm preprocessor (format {d.get('format')!r}, expected {FORMAT!r})")
        p = cls(DatasetSchema.from_dict(d["schema"]), FeaturesConfig.model_validate(d["config"]), d["max_categories"])
        p.task_ = d["task"]
        p.impute_ = {k: float(v) for k, v in d["impute"].items()}
        p.clip_ = {k: (float(v[0]), float(v[1])) for k, v in d["clip"].items()}
        p.categories_ = d["categories"]
        p.label_classes_ = d["label_classes"]
        p.feature_names_ = d["feature_names"]
        p.categorical_features_ = d["categorical_features"]
        p._index()
        return p

    @classmethod
    def from_json(cls, text: str) -> "Preprocessor":
        return cls.from_dict(json.loads(text))
