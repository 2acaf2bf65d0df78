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
        (lambda r: json.dumps({**r, "surprise": 1}), 422, "unknown field(s): surprise"),
        (lambda r: json.dumps({k: v for k, v in r.items() if k != "num_7"}), 422, "missing field(s): num_7"),
        (lambda r: json.dumps({**r, "event_time": "yesterday"}), 422, "expected an ISO 8601 time"),
        (lambda r: json.dumps([r] * 6), 413, "the limit is 5"),
        (lambda r: json.dumps([r, 7]), 422, "record 1: expected a JSON object, got number"),
        (lambda r: json.dumps([]), 422, "no records"),
        (lambda r: "42", 422, "must be a JSON object"),
        (lambda r: "{not json", 400, "not valid JSON"),
        (lambda r: b"\xff\xfe", 400, "not valid JSON"),
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
