"""Strict request parsing from the training schema: what the endpoint accepts and what it rejects."""

import json

import numpy as np
import pytest

from raygbm.config import load_config
from raygbm.data.features import Preprocessor
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.serving.request import RequestError, RequestSchema
from tests.conftest import make_shards
from tests.helpers import raygbm_home


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    with raygbm_home(tmp_path_factory.mktemp("home")):
        data = make_shards(tmp_path_factory.mktemp("data"), rows=3000, shards=1)
        cfg = load_config(None, ["data.drop=[id]", "split.time=event_time",
                                 "features.derived=[{name: h, op: hour, inputs: [event_time]}]"],
                          {"data.source": str(data), "data.label": "label"})
        run = preprocess(cfg, runner=LocalRunner()).run_dir
    pre = Preprocessor.from_json((run / "preprocessor.json").read_text())
    return RequestSchema(pre, max_rows=5)


def _record(schema):
    r = {name: 1.5 for name, kind in schema.fields.items()}
    for c in schema.categorical:
        r[c] = schema.pre.categories_[c][0]
    r["event_time"] = "2026-03-01T10:00:00"
    return r


def test_a_good_record_and_a_list(schema):
    r = _record(schema)
    one = schema.parse(json.dumps(r).encode())
    assert one.features.shape == (1, len(schema.pre.feature_names_)) and one.unseen == 0
    np.testing.assert_array_equal(one.features[0], schema.pre.transform_record(r))
    many = schema.parse(json.dumps([r, {**r, "num_0": None, "cat_0": "never-seen"}]).encode())
    assert many.features.shape[0] == 2 and many.unseen == 1


@pytest.mark.parametrize(
    "mutate, status, message",
    [
        (lambda r: json.dumps(r).replace("1.5", "NaN", 1), 400, "NaN is not a valid JSON number"),
        (lambda r: json.dumps(r).replace("1.5", "Infinity", 1), 400, "Infinity"),
        (lambda r: json.dumps({**r, "num_0": "12"}), 422, "field 'num_0': expected a number or null, got string"),
        (lambda r: json.dumps({**r, "num_0": True}), 422, "field 'num_0': expected a number"),
        (lambda r: json.dumps({**r, "num_0": 1e308 * 10}), 400, "Infinity"),
        (lambda r: json.dumps({**r, "cat_0": 3}), 422, "field 'cat_0': expected a string or null, got number"),
        (lambda r: json.dumps({**r, "surprise": 1}), 422, "1 unknown field(s)"),
        (lambda r: json.dumps({k: v for k, v in r.items() if k != "num_7"}), 422, "missing field(s): num_7"),
        (lambda r: json.dumps({**r, "event_time": "yesterday"}), 422, "expected an ISO 8601 time"),
        (lambda r: json.dumps([r] * 6), 413, "the limit is 5"),
        (lambda r: json.dumps([r, 7]), 422, "record 1: expected a JSON object, got number"),
        (lambda r: json.dumps([]), 422, "no records"),
        (lambda r: "42", 422, "must be a JSON object"),
        (lambda r: "{not json", 400, "not valid JSON"),
        (lambda r: b"\xff\xfe", 400, "not valid JSON"),
        # json.loads keeps the last of a repeated key: which value counts is the client's ambiguity, refused.
        (lambda r: json.dumps(r)[:-1] + ', "num_0": 2.5}', 400, "repeats a key"),
        (lambda r: json.dumps([r, r])[:-2] + ', "cat_0": null}]', 400, "repeats a key"),
    ],
)
def test_bad_requests_are_4xx_and_do_not_echo_input(schema, mutate, status, message):
    body = mutate(_record(schema))
    with pytest.raises(RequestError) as err:
        schema.parse(body if isinstance(body, bytes) else body.encode())
    assert err.value.status == status and message in str(err.value)


def test_messages_never_echo_values(schema):
    r = _record(schema)
    for bad in ({**r, "num_0": "sentinel-9137"}, {**r, "cat_1": ["sentinel-9137"]}, {**r, "event_time": "sentinel-9137"}):
        with pytest.raises(RequestError) as err:
            schema.parse(json.dumps(bad).encode())
        assert "sentinel" not in str(err.value)


def test_openapi_schema_lists_fields_and_categories(schema):
    js = schema.json_schema()
    record = js["oneOf"][0]
    assert record["additionalProperties"] is False and set(record["required"]) == set(schema.fields)
    assert record["properties"]["cat_0"]["examples"][:1] == schema.pre.categories_["cat_0"][:1]
    assert js["oneOf"][1]["maxItems"] == 5


def test_times_out_of_range_are_rejected(schema):
    r = _record(schema)
    for v in (1e20, -1e20, 123456789012345678901234567890):
        with pytest.raises(RequestError, match="out of range"):
            schema.parse(json.dumps({**r, "event_time": v}).encode())
    assert schema.parse(json.dumps({**r, "event_time": 1767261600}).encode()).features.shape[0] == 1


def test_unknown_field_names_are_counted_never_echoed(schema):
    r = _record(schema)
    for body in (json.dumps({**r, "sentinel-" + "x" * 900_000: 1}).encode(),
                 json.dumps(r)[:-1].encode() + b', "\\ud800": 1, "\\udfff": 2}'):  # lone surrogates
        with pytest.raises(RequestError) as err:
            schema.parse(body)
        message = str(err.value)
        assert err.value.status == 422 and "sentinel" not in message and len(message) < 200
        message.encode("utf-8")  # answerable: no lone surrogate in the message


def test_integers_too_large_for_a_float_are_out_of_range_not_errors(schema):
    r = _record(schema)
    huge = "9" * 400  # json gives a Python int; float(huge) would overflow
    for name in ("num_0", "event_time"):
        body = json.dumps({**r, name: 0}).replace(f'"{name}": 0', f'"{name}": {huge}').encode()
        with pytest.raises(RequestError, match="out of range") as err:
            schema.parse(body)
        assert err.value.status == 422


def test_one_object_is_answered_as_one_whatever_precedes_it(schema):
    r = json.dumps(_record(schema)).encode()
    assert schema.parse(r).single and schema.parse(b"\xef\xbb\xbf" + r).single and schema.parse(b" \n" + r).single
    assert not schema.parse(b"[" + r + b"]").single


def _table(schema, rows=3):
    import pyarrow as pa

    r = _record(schema)
    cols = {k: [r[k]] * rows for k in schema.fields}
    cols["event_time"] = [np.datetime64("2026-03-01T10:00:00")] * rows
    return pa.table(cols)


def test_tables_are_held_to_the_rules_of_json_records(schema):
    import pyarrow as pa

    good = _table(schema)
    schema.check_table(good.append_column("label", pa.array([1, 0, 1])), 10)  # extra columns are ignored
    schema.check_table(good.append_column("id", pa.array([7, 8, 9])), 10)  # data.drop=[id]: ignored too
    num = good.column_names.index("num_0")
    cases = {
        "duplicated field(s): num_0": good.append_column("num_0", good.column("num_0")),
        "missing field(s): num_0": good.remove_column(num),
        "field 'num_0': NaN or infinite value": good.set_column(num, "num_0", pa.array([1.0, float("nan"), None])),
        "field 'num_0': NaN or infinite value; send null": good.set_column(num, "num_0", pa.array([float("-inf"), 1.0, 2.0])),
        "4 rows; the limit is 3": pa.concat_tables([good, good.slice(0, 1)]),
    }
    for message, table in cases.items():
        with pytest.raises(RequestError) as err:
            schema.check_table(table, 3)
        assert message in str(err.value), (message, str(err.value))
        assert err.value.status == (413 if "limit" in message else 422)
    # 64-bit integers are features like any number (rounded to float64 as in training).
    schema.check_table(good.set_column(num, "num_0", pa.array([None, 2**60, -(2**63)], pa.int64())), 10)
    schema.check_table(good.set_column(num, "num_0", pa.array([None, 2**64 - 1, 0], pa.uint64())), 10)


def test_table_bodies_are_bounded_in_width_before_parsing_and_never_echoed(schema):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from raygbm.serving.tables import ARROW_STREAM, CSV, read_table, write_table

    types = schema.pre.schema.types
    wide = ",".join(f"c{i}" for i in range(100_000)).encode() + b"\n" + b",".join([b"1"] * 100_000) + b"\n"
    with pytest.raises(RequestError) as err:
        read_table(wide, CSV, types, schema.max_columns)
    assert err.value.status == 413 and f"the limit is {schema.max_columns}" in str(err.value)
    wide_arrow = write_table(pa.table({f"c{i}": [1] for i in range(schema.max_columns + 1)}), ARROW_STREAM)
    with pytest.raises(RequestError) as err:
        read_table(wide_arrow, ARROW_STREAM, types, schema.max_columns)
    assert err.value.status == 413
    sink = pa.BufferOutputStream()
    pacsv.write_csv(_table(schema), sink)
    csv = sink.getvalue().to_pybytes()
    assert read_table(csv, CSV, types, schema.max_columns).num_rows == 3
    for bad in (csv + b"sentinel-secret,x\n", csv.replace(b"\n", b"\n\xff\xfesentinel", 1), b"sentinel\x00" * 10):
        with pytest.raises(RequestError) as err:
            read_table(bad, CSV, types, schema.max_columns)
        assert err.value.status == 400 and "sentinel" not in str(err.value) and "\ufffd" not in str(err.value)
    with pytest.raises(RequestError) as err:
        read_table(b"sentinel", ARROW_STREAM, types, schema.max_columns)
    assert err.value.status == 400 and "sentinel" not in str(err.value)


def test_damaged_arrow_buffers_and_undecodable_names_are_400_not_a_crash(schema):
    """An Arrow stream whose string offsets point past its data (computing on it reads out of bounds: the
    replica crashed) and a CSV header name that is not UTF-8 (the column names then raise) are bodies
    the client got wrong: 400."""
    import pyarrow as pa

    from raygbm.serving.tables import ARROW_STREAM, CSV, read_table, write_table

    types = schema.pre.schema.types
    body = write_table(pa.table({"s": ["a", "b", "c"]}), ARROW_STREAM)
    offsets = b"".join(i.to_bytes(4, "little") for i in range(4))
    assert body.count(offsets) == 1
    damaged = body.replace(offsets, offsets[:12] + (2**31 - 1).to_bytes(4, "little"))
    for bad, kind in ((damaged, ARROW_STREAM), (b"num_0,\xdbAsentinel\n1,2\n", CSV)):
        with pytest.raises(RequestError) as err:
            read_table(bad, kind, types, schema.max_columns)
        assert err.value.status == 400 and "sentinel" not in str(err.value)
