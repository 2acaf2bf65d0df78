"""The loop's data side without Ray: the prediction log, feedback parsing and the join, performance per
window (realized, CBPE-estimated, bounds)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from raygbm.metrics import realized_metrics, weighted_auc
from raygbm.monitoring.feedback import LabelSpec, encoded, join
from raygbm.monitoring.labelled import (
    LABELLED_AT,
    MODEL_VERSION,
    PREDICTION_ID,
    SCORE,
    WINDOW,
    read_labelled,
    write_labelled,
)
from raygbm.monitoring.performance import (
    CalibrationMap,
    WindowPerformance,
    estimated_metrics,
    performance_reference,
)
from raygbm.monitoring.prediction_log import PredictionLog, RawRows, arrow_type, raw_table
from raygbm.serving.feedback import parse_json, parse_table
from raygbm.serving.request import RequestError
from raygbm.serving.tables import ARROW_STREAM, CSV, write_table

FIELDS = ["x", "c", "t"]
TYPES = {"x": "double", "c": "string", "t": "timestamp[us, tz=UTC]"}
BINARY = LabelSpec("label", "int64", "binary", [0, 1])


def _json_part(n: int, start: int = 0) -> RawRows:
    records = [{"x": float(i), "c": "a" if i % 2 else None, "t": "2026-01-01T00:00:00+00:00" if i % 3 else i * 60}
               for i in range(start, start + n)]
    return RawRows(body=json.dumps(records if n > 1 else records[0]).encode(), ids=[f"id{i}" for i in range(start, start + n)])


def _log(tmp_path, **kw) -> PredictionLog:
    return PredictionLog(tmp_path / "m" / "predictions", FIELDS, TYPES, flush_s=3600, **kw)


def _add(log: PredictionLog, n: int, start: int = 0, version: str = "1", window: int = 0) -> None:
    log.add(version, 1000.0 + start, [_json_part(n, start)], np.linspace(0.1, 0.9, n), np.full(n, window))


# ---- the prediction log


def test_arrow_types_from_the_schema_strings():
    assert arrow_type("int64") == pa.int64() and arrow_type("string") == pa.string()
    assert arrow_type("timestamp[us, tz=UTC]") == pa.timestamp("us", "UTC")
    assert arrow_type("timestamp[ns]") == pa.timestamp("ns")


def test_raw_rows_keep_the_training_types_from_json_and_tables():
    t = raw_table([_json_part(3)], FIELDS, TYPES)
    assert t.schema.field("x").type == pa.float64() and t.schema.field("t").type == pa.timestamp("us", "UTC")
    assert t.column("c").to_pylist() == [None, "a", None] and t.column("t").null_count == 0
    # An integer field sent 2.5 is kept as sent (not truncated to the training type).
    mixed = raw_table([RawRows(body=b'[{"x": 1, "c": "a", "t": null}, {"x": 2.5, "c": "b", "t": null}]', ids=["a", "b"])],
                      ["x"], {"x": "int64"})
    assert mixed.column("x").to_pylist() == [1, 2.5]
    table = pa.table({"x": pa.array([1, 2], pa.int32()), "c": ["a", "b"], "t": pa.array([0, 1], pa.timestamp("s", "UTC"))})
    assert raw_table([RawRows(table=table, ids=["a", "b"])], FIELDS, TYPES).schema.field("x").type == pa.float64()
    # Parts in order: JSON runs, then a table, then JSON again.
    both = raw_table([_json_part(1), _json_part(2, 1), RawRows(table=table, ids=["a", "b"]), _json_part(1, 3)], FIELDS, TYPES)
    assert both.column("x").to_pylist() == [0.0, 1.0, 2.0, 1.0, 2.0, 3.0]


def test_log_finds_buffered_and_written_rows_and_rotates(tmp_path):
    log = _log(tmp_path, max_rows=1000)
    _add(log, 600)
    assert log.lookup(pa.array(["id5", "nope"])).tolist()[1] == -1 and log.lookup(pa.array(["id5"]))[0] >= 0
    assert log.lookup(pa.array(["id7", "id5", "id7"])).tolist() == [7, 5, 7]  # a repeated id: the same row
    log.flush()
    _add(log, 600, start=600)
    log.flush()
    assert len(list((tmp_path / "m" / "predictions").glob("part-*.parquet"))) == 2
    _add(log, 600, start=1200)
    log.flush()  # 1,800 rows: the oldest part goes (1,200 remain)
    parts = list((tmp_path / "m" / "predictions").glob("part-*.parquet"))
    assert len(parts) == 2 and not list((tmp_path / "m" / "predictions").glob(".*"))
    assert log.lookup(pa.array(["id5", "id700", "id1700"])).tolist()[0] == -1
    rows, before = log.rows(log.lookup(pa.array(["id1700", "id700"])))
    assert rows.column(PREDICTION_ID).to_pylist() == ["id1700", "id700"] and not before.any()
    assert rows.column("x").to_pylist() == [1700.0, 700.0]
    assert log.summary()["labelled_predictions"] == 2 and log.summary()["logged_predictions"] == 1200


def test_log_keeps_a_sample_when_asked(tmp_path):
    log = _log(tmp_path, sample_rate=0.25)
    for k in range(10):
        _add(log, 400, start=k * 400)
    assert 700 < log.summary()["logged_predictions"] < 1300


def test_a_restarted_log_knows_its_rows_and_which_were_labelled(tmp_path):
    log = _log(tmp_path)
    _add(log, 10)
    log.flush()
    again = _log(tmp_path, labelled_ids=pa.array(["id3"]))
    assert again.summary()["logged_predictions"] == 10 and again.summary()["labelled_predictions"] == 1


def test_a_part_that_does_not_convert_is_counted_not_raised(tmp_path):
    log = _log(tmp_path)
    log.add("1", 0.0, [RawRows(body=b"not json", ids=["a"])], np.zeros(1), np.zeros(1))
    log.add("1", 0.0, [_json_part(2)], np.zeros(3), np.zeros(3))  # rows and scores disagree
    assert log.unlogged == 4 and log.summary()["logged_predictions"] == 0


# ---- feedback bodies


@pytest.mark.parametrize("body, status", [
    (b'{"prediction_id": "a", "label": 1}', None),
    (b'[{"prediction_id": "a", "label": 1}, {"prediction_id": "b", "label": 0}]', None),
    (b'{"prediction_id": "a", "label": true}', 422),
    (b'{"prediction_id": "a", "label": 1.0}', 422),
    (b'{"prediction_id": "a", "label": "1"}', 422),
    (b'{"prediction_id": "a", "label": 7}', 422),
    (b'{"prediction_id": "a", "label": NaN}', 400),
    (b'{"prediction_id": 5, "label": 1}', 422),
    (b'{"prediction_id": "", "label": 1}', 422),
    (b'{"prediction_id": "a", "label": 1, "x": 2}', 422),
    (b'{"prediction_id": "a"}', 422),
    (b'[]', 422),
    (b'"a"', 422),
    (b'[1]', 422),
    (b'{"prediction_id": "a", ', 400),
    (b'\xff\xfe', 400),
    (b'[' * 100_000, 400),
    (b'{"prediction_id": "a", "label": 1, "label": 0}', 400),  # which label? refused, not the last one kept
])
def test_json_feedback_is_strict(body, status):
    if status is None:
        ids, labels = parse_json(body, BINARY, 10)
        assert labels.type == pa.int64() and len(ids) == len(labels)
        return
    with pytest.raises(RequestError) as err:
        parse_json(body, BINARY, 10)
    assert err.value.status == status and "prediction_id\": \"a" not in str(err.value)


def test_labels_of_other_types_and_the_row_limit():
    yes_no = LabelSpec("y", "string", "binary", ["no", "yes"])
    assert parse_json(b'{"prediction_id": "a", "label": "yes"}', yes_no, 1)[1].to_pylist() == ["yes"]
    with pytest.raises(RequestError):
        parse_json(b'{"prediction_id": "a", "label": "maybe"}', yes_no, 1)
    value = LabelSpec("y", "double", "regression", None)
    assert parse_json(b'{"prediction_id": "a", "label": 3}', value, 1)[1].to_pylist() == [3.0]
    with pytest.raises(RequestError):
        parse_json(b'{"prediction_id": "a", "label": 1e999}', value, 1)
    with pytest.raises(RequestError) as err:
        parse_json(b'[{"prediction_id": "a", "label": 1}, {"prediction_id": "b", "label": 1}]', BINARY, 1)
    assert err.value.status == 413


def test_table_feedback_in_csv_and_arrow():
    table = pa.table({"prediction_id": ["a", "b"], "label": pa.array([1, 0], pa.int64())})
    for kind in (CSV, ARROW_STREAM):
        ids, labels = parse_table(write_table(table, kind), kind, BINARY, 10)
        assert ids.to_pylist() == ["a", "b"] and labels.to_pylist() == [1, 0]


@pytest.mark.parametrize("table", [
    pa.table({"prediction_id": ["a"], "label": [1], "extra": [1]}),
    pa.table({"prediction_id": ["a"]}),
    pa.table({"prediction_id": ["a"], "label": [2]}),
    pa.table({"prediction_id": ["a"], "label": [1.5]}),
    pa.table({"prediction_id": ["a"], "label": ["1"]}),
    pa.table({"prediction_id": [None], "label": [1]}),
    pa.table({"prediction_id": [1], "label": [1]}),
    pa.table({"prediction_id": ["a"], "label": pa.array([None], pa.int64())}),
    pa.table({"prediction_id": ["a" * 200], "label": [1]}),
    pa.table({"prediction_id": pa.array([], pa.string()), "label": pa.array([], pa.int64())}),
])
def test_bad_feedback_tables_are_4xx(table):
    with pytest.raises(RequestError) as err:
        parse_table(write_table(table, ARROW_STREAM), ARROW_STREAM, BINARY, 10)
    assert 400 <= err.value.status < 500


def test_damaged_tables_are_4xx():
    body = write_table(pa.table({"prediction_id": ["a"] * 100, "label": [1] * 100}), ARROW_STREAM)
    for bad in (body[:len(body) // 2], b"prediction_id,label\na,1,2\n", b"garbage"):
        with pytest.raises(RequestError):
            parse_table(bad, ARROW_STREAM if bad is not body else CSV, BINARY, 1000)
    with pytest.raises(RequestError):
        parse_table(b"prediction_id,label\na,1,2\n", CSV, BINARY, 10)


# ---- the join


def test_join_counts_unknown_ids_and_duplicates_and_the_last_label_wins(tmp_path):
    log = _log(tmp_path)
    _add(log, 5)
    first = join(log, pa.array(["id0", "id1", "id1", "zzz"]), pa.array([1, 0, 1, 0]), BINARY, now=5.0)
    assert first.counts() == {"accepted": 3, "unknown_ids": 1, "duplicates": 1}
    assert first.table.column("label").to_pylist() == [1, 1]  # id1's last label
    write_labelled(tmp_path, "m", first.table)
    second = join(log, pa.array(["id1"]), pa.array([0]), BINARY, now=6.0)
    assert second.counts() == {"accepted": 1, "unknown_ids": 0, "duplicates": 1}
    write_labelled(tmp_path, "m", second.table)
    store = read_labelled(tmp_path, "m")
    assert dict(zip(store.column(PREDICTION_ID).to_pylist(), store.column("label").to_pylist())) == {"id0": 1, "id1": 0}
    assert set(FIELDS) <= set(store.column_names) and store.column(MODEL_VERSION).to_pylist() == ["1", "1"]
    assert store.column(LABELLED_AT).to_pylist() == [5.0, 6.0] and store.column(WINDOW).to_pylist() == [0, 0]
    assert join(log, pa.array(["x"]), pa.array([1]), BINARY).table is None


def test_joined_rows_encode_for_the_window_metrics(tmp_path):
    log = _log(tmp_path)
    _add(log, 4)
    spec = LabelSpec("label", "string", "binary", ["no", "yes"])
    joined = join(log, pa.array(["id0", "id3"]), pa.array(["yes", "no"]), spec)
    windows, ids, y, scores = encoded(joined.table, spec)
    assert y.tolist() == [1, 0] and ids == ["id0", "id3"] and windows.tolist() == [0, 0]
    assert scores.tolist() == pytest.approx(joined.table.column(SCORE).to_pylist())
    perf = WindowPerformance("binary", 0.5, None, 0.01, min_labelled_rows=1, keep_windows=5)
    perf.add_labels(windows, ids, y, scores)
    assert perf.describe(0, 4, None)["labelled_rows"] == 2


# ---- performance


def test_weighted_auc_is_roc_auc_on_hard_labels_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # many ties
    assert weighted_auc(s, y, 1 - y) == pytest.approx(roc_auc_score(y, s))
    assert weighted_auc(s, np.ones(500), np.zeros(500)) is None


def test_cbpe_matches_the_realized_metrics_on_calibrated_scores():
    rng = np.random.default_rng(1)
    q = rng.beta(2, 3, 200_000)
    y = (rng.random(len(q)) < q).astype(int)
    est, real = estimated_metrics(q, q, 0.5), realized_metrics("binary", y, q, 0.5)
    assert est["roc_auc"] == pytest.approx(real["roc_auc"], abs=0.005)
    assert est["accuracy"] == pytest.approx(real["accuracy"], abs=0.005)


@pytest.mark.parametrize("kind", ["platt", "isotonic"])
def test_calibration_map_fits_a_miscalibrated_score_and_round_trips_as_json(kind):
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, 50_000)
    q = 1 / (1 + np.exp(-z))
    y = (rng.random(len(q)) < q).astype(float)
    raw = 1 / (1 + np.exp(-0.5 * z + 1))  # the model's score: monotone in the truth but miscalibrated
    assert np.abs(raw - q).mean() > 0.1
    cal = CalibrationMap.from_json(json.loads(json.dumps(CalibrationMap.fit(y, raw, kind).to_json())))
    assert np.abs(cal(raw) - q).mean() < 0.02
    with pytest.raises(ValueError):
        CalibrationMap.from_json({"kind": "pickle"})


def test_window_performance_realized_estimated_and_bounds():
    rng = np.random.default_rng(3)
    q = rng.random(5000)
    y = (rng.random(len(q)) < q).astype(int)
    ref = json.loads(json.dumps(performance_reference("binary", y, q, 0.5, window_size=500)))
    assert set(ref["metrics"]) == {"roc_auc", "log_loss", "accuracy"} and ref["metrics"]["roc_auc"]["sd"] > 0
    perf = WindowPerformance("binary", 0.5, ref, bound_rate=0.01, min_labelled_rows=20, keep_windows=10)
    perf.add_scores(np.zeros(500, dtype=int), q[:500])
    estimated = perf.closed(0)
    assert abs(estimated["roc_auc"] - ref["metrics"]["roc_auc"]["value"]) < 0.05
    doc = perf.describe(0, 500, estimated)
    assert doc["labelled_rows"] == 0 and doc["realized"] == {} and doc["outside_bounds"]["estimated"] == []
    lower = doc["bounds"]["estimated"]["roc_auc"]["lower"]
    assert lower < ref["metrics"]["roc_auc"]["value"]
    # Labels that contradict the scores: realized AUC falls below its (wider, 400-row) lower bound.
    ids = [f"p{i}" for i in range(400)]
    perf.add_labels(np.zeros(400, dtype=int), ids, 1 - y[:400], q[:400])
    doc = perf.describe(0, 500, estimated)
    assert doc["labelled_rows"] == 400 and "roc_auc" in doc["outside_bounds"]["realized"]
    assert doc["bounds"]["realized"]["roc_auc"]["lower"] < lower and "upper" in doc["bounds"]["realized"]["log_loss"]
    perf.add_labels(np.zeros(400, dtype=int), ids, y[1000:1400], q[1000:1400])  # the last label wins
    assert perf.describe(0, 500, estimated)["outside_bounds"]["realized"] == []


def test_realized_metrics_of_each_task():
    assert realized_metrics("regression", np.array([1.0, 3.0]), np.array([2.0, 3.0])) == {"rmse": pytest.approx(0.5 ** 0.5), "mae": 0.5}
    m = realized_metrics("multiclass", np.array([0, 2]), np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4]]))
    assert m["accuracy"] == 0.5 and m["log_loss"] == pytest.approx(-(np.log(0.7) + np.log(0.4)) / 2)
    assert "roc_auc" not in realized_metrics("binary", np.array([1, 1]), np.array([0.2, 0.9]))


def test_the_buffer_carries_each_batch_request_in_row_order():
    import asyncio

    from raygbm.serving.monitor_buffer import MonitorBuffer

    sent: list[tuple] = []

    async def scenario() -> None:
        buf = MonitorBuffer(lambda *b: sent.append(b), rows=5)
        buf.add("1", np.zeros((2, 1)), np.zeros(2), np.zeros((2, 1), bool), [RawRows(body=b"[..]", ids=["a", "b"])])
        buf.add("1", np.zeros((3, 1)), np.zeros(3), np.zeros((3, 1), bool), [RawRows(body=b"[...]", ids=["c", "d", "e"])])
        buf.add("1", np.zeros((5, 1)), np.zeros(5), np.zeros((5, 1), bool), None)  # not logged: none sent

    asyncio.run(scenario())
    assert [p.ids for p in sent[0][6]] == [["a", "b"], ["c", "d", "e"]] and sent[1][6] is None


def test_raw_table_keeps_dates_and_survives_a_field_kept_as_sent():
    """JSON dates (ISO text) become date32 like a table body's; a part whose field does not fit the
    training type (kept as sent) turns that field to text in every part instead of failing the flush."""
    types = {"d": "date32[day]", "n": "int64"}
    table = pa.table({"d": pa.array([None], pa.date32()), "n": pa.array([1])})
    good = raw_table([RawRows(body=json.dumps([{"d": "2024-08-08", "n": 2}]).encode(), ids=None), RawRows(table=table, ids=None)],
                     ["d", "n"], types)
    assert good.schema.field("d").type == pa.date32() and good.column("d").to_pylist()[0].isoformat() == "2024-08-08"
    mixed = raw_table([RawRows(table=table, ids=None), RawRows(records=[{"d": "not a date", "n": 3}], ids=None)], ["d", "n"], types)
    assert mixed.column("d").to_pylist() == [None, "not a date"] and mixed.column("n").to_pylist() == [1, 3]


def test_integers_beyond_2_53_in_a_float_field_are_logged_as_the_features_take_them():
    """A table body's int64 column for a double field (2^60: accepted by the endpoint) and JSON integers
    are logged as float64 alongside other parts, and buffered parts of either kind flush together."""
    from raygbm.monitoring.prediction_log import concat_parts

    types = {"x": "double"}
    table = pa.table({"x": pa.array([2**60])})
    t = raw_table([RawRows(body=json.dumps([{"x": 2**60}]).encode(), ids=None), RawRows(table=table, ids=None),
                   RawRows(records=[{"x": 1.5}], ids=None)], ["x"], types)
    assert t.schema.field("x").type == pa.float64() and t.column("x").to_pylist() == [float(2**60)] * 2 + [1.5]
    both = concat_parts([pa.table({"x": pa.array([2**60])}), pa.table({"x": pa.array([1.5])})], types)
    assert both.column("x").to_pylist() == [float(2**60), 1.5]
