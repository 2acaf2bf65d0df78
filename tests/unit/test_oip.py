"""The Open Inference Protocol's parsing and answers without Ray, on a real registered model: tensors in
each datatype (JSON and Triton's binary extension, the latter written by tritonclient itself) give the
rows /predict would, and bad tensors get a 4xx that echoes nothing."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

from raygbm.data.split import RAW_TEST
from raygbm.serving import oip
from raygbm.serving.request import RequestError
from tests.helpers import raygbm_home, registered_model

MAX_ROWS = 50


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A registered binary model (numeric, categorical and time features) as a replica loads it, and raw
    test rows as /predict records (with their missing values)."""
    with raygbm_home(tmp_path_factory.mktemp("home")):
        model, meta = registered_model(tmp_path_factory.mktemp("data"), MAX_ROWS)
        raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 40)
        records = [{c: (v.isoformat() if hasattr(v, "isoformat") else v) for c, v in row.items() if c in model.schema.fields}
                   for row in raw.to_pylist()]
        yield model, records


def _columns(model, records):
    return {name: [r[name] for r in records] for name in model.schema.fields}


def _json_request(model, records, datatypes=None, nested=False, **extra) -> bytes:
    inputs = []
    for name, values in _columns(model, records).items():
        dt = (datatypes or {}).get(name) or oip.declared_datatype(model.schema.fields[name], name in model.schema.categorical)
        inputs.append({"name": name, "datatype": dt, "shape": [len(values), 1] if nested else [len(values)],
                       "data": [[v] for v in values] if nested else values})
    return json.dumps({"inputs": inputs, **extra}).encode()


def _parse(model, body: bytes, headers=None):
    return oip.parse_infer(body, headers or {}, model)


def _refused(model, body: bytes, headers=None) -> RequestError:
    with pytest.raises(RequestError) as err:
        _parse(model, body, headers)
    return err.value


def _same_rows(model, parsed, records) -> None:
    expected = model.schema.parse(json.dumps(records).encode())
    np.testing.assert_array_equal(parsed.features, expected.features)
    np.testing.assert_array_equal(parsed.missing, expected.missing)
    assert parsed.unseen == expected.unseen


def test_metadata_declares_one_input_per_feature_and_the_outputs(served):
    model, _ = served
    doc = oip.model_metadata(model)
    assert doc["name"] == model.name and doc["versions"] == [model.version]
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in doc["inputs"]}
    assert list(inputs) == list(model.schema.fields)
    assert inputs["num_0"] == ("FP64", [-1]) and inputs["cat_0"] == ("BYTES", [-1]) and inputs["event_time"][0] == "BYTES"
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in doc["outputs"]}
    assert outputs == {"prediction": ("INT64", [-1]), "score": ("FP64", [-1]), "prediction_id": ("BYTES", [-1])}
    oip.check_served(model, model.name, None)
    oip.check_served(model, model.name, model.version)
    for name, version in (("sentinel", None), (model.name, "999")):
        with pytest.raises(RequestError) as err:
            oip.check_served(model, name, version)
        assert err.value.status == 404 and "sentinel" not in str(err.value)


def test_json_tensors_give_the_rows_predict_gives_with_nulls_as_missing(served):
    model, records = served
    assert any(v is None for r in records for v in r.values())  # the rows carry missing values
    for nested in (False, True):
        req = _parse(model, _json_request(model, records, nested=nested, id="req-1"))
        _same_rows(model, req.parsed, records)
        assert req.id == "req-1" and req.outputs is None
    flat_as_n1 = json.loads(_json_request(model, records))  # [n, 1] with flat data (row-major) is the same
    for i in flat_as_n1["inputs"]:
        i["shape"] = [len(records), 1]
    _same_rows(model, _parse(model, json.dumps(flat_as_n1).encode()).parsed, records)


def test_each_numeric_datatype_is_read_at_its_precision(served):
    model, records = served
    rows = [{**r, "num_0": v} for r, v in zip(records, (0.1, 3, -2, None, 7.5))]
    for dt in oip.FLOATS:
        req = _parse(model, _json_request(model, rows, {"num_0": dt}))
        expected = [{**r, "num_0": None if r["num_0"] is None else float(np.array(r["num_0"], oip.FLOATS[dt]))} for r in rows]
        _same_rows(model, req.parsed, expected)
    int_rows = [{**r, "num_0": v} for r, v in zip(records, (1, 3, 0, None, 100))]
    for dt in oip.INTEGERS:
        _same_rows(model, _parse(model, _json_request(model, int_rows, {"num_0": dt})).parsed, int_rows)
    epoch = [{**r, "event_time": 1767261600 + i} for i, r in enumerate(records[:5])]
    _same_rows(model, _parse(model, _json_request(model, epoch, {"event_time": "INT64"})).parsed, epoch)


@pytest.mark.parametrize("name, datatype", [("num_0", "BYTES"), ("num_0", "BOOL"), ("cat_0", "FP64"),
                                            ("cat_0", "INT64"), ("num_0", "BF16"), ("num_0", "sentinel")])
def test_a_datatype_outside_the_features_family_is_refused(served, name, datatype):
    model, records = served
    err = _refused(model, _json_request(model, records[:3], {name: datatype}))
    assert err.status == 422 and f"input '{name}': wrong datatype" in str(err) and "sentinel" not in str(err)


@pytest.mark.parametrize("name, values, message", [
    ("num_0", ["1.5", 2.0, 3.0], "FP64 data must be numbers or null"),
    ("num_0", [True, 2.0, 3.0], "FP64 data must be numbers or null"),
    ("num_0", [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "nested \"data\" must hold one value per row"),
    ("cat_0", [1, "a", "b"], "BYTES data must be strings or null"),
    ("num_0", [1.0, 2.0], "a different number of values than its shape"),
    ("num_0", "sentinel", '"data" must be a list'),
])
def test_values_of_the_wrong_json_type_or_count_are_refused(served, name, values, message):
    model, records = served
    doc = json.loads(_json_request(model, records[:3]))
    next(i for i in doc["inputs"] if i["name"] == name)["data"] = values
    err = _refused(model, json.dumps(doc).encode())
    assert err.status == 422 and message in str(err) and "sentinel" not in str(err)


def test_integers_out_of_their_datatypes_range_and_floats_beyond_fp32_are_refused(served):
    model, records = served
    for dt, value in (("INT8", 128), ("UINT8", -1), ("UINT64", 2**64), ("INT64", 2**63), ("FP32", 1e39), ("FP16", 70000.0)):
        rows = [{**r, "num_0": value} for r in records[:2]]
        err = _refused(model, _json_request(model, rows, {"num_0": dt}))
        assert err.status == 422 and f"out of {dt}'s range" in str(err), dt
    huge = _json_request(model, [{**r, "num_0": 1} for r in records[:2]]).replace(b'"data": [1, 1]', b'"data": [1, ' + b"9" * 400 + b"]")
    assert _refused(model, huge).status == 422
    # Within the datatype but beyond what float64 holds exactly: a feature like any other (rounded to
    # float64 as in training), not an error.
    big = [{**r, "num_0": 2**60} for r in records[:2]]
    parsed = _parse(model, _json_request(model, big, {"num_0": "INT64"})).parsed
    assert parsed.features[0][model.names.index("num_0")] == float(2**60)
    _same_rows(model, parsed, big)


def test_nan_and_infinity_are_not_json_and_an_infinite_binary_value_is_refused(served):
    model, records = served
    body = _json_request(model, [{**r, "num_0": 1.25} for r in records[:2]])
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        err = _refused(model, body.replace(b"1.25", constant, 1))
        assert err.status == 400 and "not a valid JSON number" in str(err)
    inputs = _triton_inputs(model, records[:3])
    inputs[0].set_data_from_numpy(np.array([1.0, np.inf, 2.0]))  # num_0
    err = _refused(model, *_binary_body(inputs))
    assert err.status == 422 and "infinite" in str(err)


def _triton_inputs(model, records) -> list[InferInput]:
    """tritonclient's own tensors of ``records`` (binary by default): numbers as float64 with NaN for
    missing, strings as objects (a missing category as the empty string: unseen, the same code)."""
    inputs = []
    for name, values in _columns(model, records).items():
        dt = oip.declared_datatype(model.schema.fields[name], name in model.schema.categorical)
        if dt == "BYTES":
            array = np.array(["" if v is None else v for v in values], dtype=object)
        else:
            array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        inputs.append(InferInput(name, [len(values)], dt).set_data_from_numpy(array))
    return inputs


def _binary_body(inputs, outputs=None) -> tuple[bytes, dict[str, str]]:
    body, json_size = InferenceServerClient.generate_request_body(inputs, outputs=outputs, request_id="b-1")
    return body, ({oip.HEADER_LENGTH: str(json_size)} if json_size is not None else {})


def test_tritonclients_binary_tensors_give_the_same_rows_nan_as_missing(served):
    model, records = served
    body, headers = _binary_body(_triton_inputs(model, records))
    assert headers and b"binary_data_size" in body
    req = _parse(model, body, headers)
    expected = [{k: ("" if v is None and k in model.schema.categorical else v) for k, v in r.items()} for r in records]
    _same_rows(model, req.parsed, expected)
    assert req.id == "b-1"
    np.testing.assert_array_equal(req.parsed.features, model.schema.parse(json.dumps(records).encode()).features)
    for dt in ("FP32", "INT32", "UINT16", "BOOL"):
        inputs = _triton_inputs(model, records[:4])
        values = np.array([1, 0, 1, 1]).astype({"FP32": np.float32, "INT32": np.int32, "UINT16": np.uint16, "BOOL": bool}[dt])
        inputs[0] = InferInput("num_0", [4], dt).set_data_from_numpy(values)
        if dt == "BOOL":
            assert _refused(model, *_binary_body(inputs)).status == 422  # not a boolean feature
            continue
        _same_rows(model, _parse(model, *_binary_body(inputs)).parsed,
                   [{**r, "num_0": float(v)} for r, v in zip(expected[:4], values)])


@pytest.mark.parametrize("damage, status", [
    (lambda body, n: (body + b"x", n), 400),  # more binary data than declared
    (lambda body, n: (body[:-3], n), 400),  # less
    (lambda body, n: (body, "abc"), 400),
    (lambda body, n: (body, str(len(body) + 1)), 400),
    (lambda body, n: (body, str(int(n) - 1)), 400),  # the JSON header cut short
])
def test_damaged_binary_bodies_are_refused(served, damage, status):
    model, records = served
    body, headers = _binary_body(_triton_inputs(model, records[:3]))
    bad, n = damage(body, headers[oip.HEADER_LENGTH])
    assert _refused(model, bad, {oip.HEADER_LENGTH: n}).status == status


def test_binary_bytes_elements_must_be_whole_and_utf8(served):
    model, records = served
    inputs = _triton_inputs(model, records[:2])
    cat = next(i for i, t in enumerate(inputs) if t.name() == "cat_0")
    for raw, message in ((b"\x05\x00\x00\x00ab", "cut short"), (b"\x01\x00\x00\x00a", "different number of elements"),
                         (b"\x02\x00\x00\x00\xff\xfe\x01\x00\x00\x00a", "UTF-8")):
        inputs[cat]._raw_data = raw  # tritonclient serializes only valid tensors: damage its bytes
        inputs[cat]._parameters["binary_data_size"] = len(raw)
        err = _refused(model, *_binary_body(inputs))
        assert err.status == 422 and message in str(err)


def test_one_bytes_input_of_json_records(served):
    model, records = served
    per_row = {"inputs": [{"name": "records", "datatype": "BYTES", "shape": [len(records)],
                           "data": [json.dumps(r) for r in records]}]}
    _same_rows(model, _parse(model, json.dumps(per_row).encode()).parsed, records)
    one_list = {"inputs": [{"name": "records", "datatype": "BYTES", "shape": [1], "data": [json.dumps(records)]}]}
    _same_rows(model, _parse(model, json.dumps(one_list).encode()).parsed, records)
    binary = InferInput("records", [len(records)], "BYTES").set_data_from_numpy(
        np.array([json.dumps(r).encode() for r in records], dtype=object))
    _same_rows(model, _parse(model, *_binary_body([binary])).parsed, records)
    for bad, status, message in (
            ({**one_list["inputs"][0], "data": ["{not json"]}, 400, "not valid JSON"),
            ({**one_list["inputs"][0], "data": ["42"]}, 422, "each element must be a JSON object"),
            ({**one_list["inputs"][0], "datatype": "FP64", "data": [1.0]}, 422, "datatype must be BYTES"),
            ({**one_list["inputs"][0], "data": [json.dumps({**records[0], "num_0": "sentinel"})]}, 422, "expected a number"),
            ({**one_list["inputs"][0], "data": [json.dumps(records * 2)]}, 413, f"the limit is {MAX_ROWS}")):
        err = _refused(model, json.dumps({"inputs": [bad]}).encode())
        assert err.status == status and message in str(err) and "sentinel" not in str(err), str(err)


def test_missing_unknown_duplicated_inputs_and_bad_shapes(served):
    model, records = served
    good = json.loads(_json_request(model, records[:3]))

    def with_inputs(change) -> bytes:
        return json.dumps({"inputs": change([dict(i) for i in good["inputs"]])}).encode()

    cases = [
        (with_inputs(lambda ins: [i for i in ins if i["name"] != "num_3"]), 422, "missing input(s): num_3"),
        (with_inputs(lambda ins: ins + [{**ins[0], "name": "sentinel"}]), 422, "1 unknown input(s)"),
        (with_inputs(lambda ins: ins + [ins[0]]), 422, "duplicated input(s): num_0"),
        (with_inputs(lambda ins: [{**ins[0], "shape": [3, 2]}] + ins[1:]), 422, "shape must be [n] or [n, 1]"),
        (with_inputs(lambda ins: [{**ins[0], "shape": [-3]}] + ins[1:]), 422, "shape must be [n] or [n, 1]"),
        (with_inputs(lambda ins: [{**ins[0], "shape": ["3"]}] + ins[1:]), 422, "shape must be [n] or [n, 1]"),
        (with_inputs(lambda ins: [{**ins[0], "shape": [0], "data": []}] + ins[1:]), 422, "no rows"),
        (with_inputs(lambda ins: [{**ins[0], "shape": [2], "data": ins[0]["data"][:2]}] + ins[1:]), 422,
         "different numbers of rows"),
        (with_inputs(lambda ins: [{k: v for k, v in ins[0].items() if k != "data"}] + ins[1:]), 422, 'no "data"'),
        (with_inputs(lambda ins: [{**ins[0], "parameters": {"shared_memory_region": "r"}}] + ins[1:]), 422, "shared memory"),
        (with_inputs(lambda ins: [{**ins[0], "parameters": {"binary_data_size": 8}}] + ins[1:]), 422, 'both "data"'),
        (with_inputs(lambda ins: [{**ins[0], "shape": [10**30]}] + ins[1:]), 413, f"limit of {MAX_ROWS}"),
        (with_inputs(lambda ins: [7] + ins[1:]), 422, "input 0: expected an object"),
        (with_inputs(lambda ins: [{**ins[0], "name": 7}] + ins[1:]), 422, '"name" and "datatype" must be strings'),
        (json.dumps({"inputs": []}).encode(), 422, "non-empty list"),
        (json.dumps({"inputs": [good["inputs"][0]] * 200}).encode(), 413, "inputs; the model reads"),
        (json.dumps({**good, "sentinel": 1}).encode(), 422, "1 unknown key(s)"),
        (json.dumps({**good, "id": 7}).encode(), 422, '"id" must be a string'),
        (json.dumps({**good, "id": "x" * 300}).encode(), 422, '"id" must be a string'),
        (json.dumps({**good, "id": "\ud800"}).encode(), 422, '"id" must be a string'),  # echoed: must encode
        (json.dumps({**good, "id": "a\r\nb"}).encode(), 422, '"id" must be a string'),
        (json.dumps({**good, "outputs": [{"name": "sentinel"}]}).encode(), 422, "1 unknown output(s)"),
        (json.dumps({**good, "outputs": "score"}).encode(), 422, '"outputs" must be a list'),
        (json.dumps({**good, "parameters": []}).encode(), 422, '"parameters" must be an object'),
        (b"[]", 422, "must be a JSON object"), (b"{", 400, "not valid JSON"), (b"\xff", 400, "not valid JSON"),
    ]
    for body, status, message in cases:
        err = _refused(model, body)
        assert err.status == status and message in str(err) and "sentinel" not in str(err), (message, str(err))
    assert _refused(model, _json_request(model, records[:3]), {"content-encoding": "gzip"}).status == 415


def test_inputs_of_columns_the_model_leaves_out_are_accepted_and_ignored(served):
    model, records = served
    assert "id" in model.schema.ignored and "id" not in model.schema.fields  # data.drop=[id]
    good = json.loads(_json_request(model, records[:3]))
    ids = {"name": "id", "datatype": "INT64", "shape": [3], "data": [7, 8, 9]}
    _same_rows(model, _parse(model, json.dumps({"inputs": good["inputs"] + [ids]}).encode()).parsed, records[:3])
    with_id = [{**r, "id": i} for i, r in enumerate(records[:3])]
    as_records = {"inputs": [{"name": "records", "datatype": "BYTES", "shape": [1], "data": [json.dumps(with_id)]}]}
    _same_rows(model, _parse(model, json.dumps(as_records).encode()).parsed, records[:3])
    for bad, message in (({**ids, "data": [7, 8]}, '"data" holds a different number of values'),
                         ({**ids, "datatype": "INT128"}, "unknown datatype"),
                         ({**ids, "shape": [2], "data": [7, 8]}, "different numbers of rows"),
                         ({**ids, "name": "sentinel"}, "1 unknown input(s)")):
        err = _refused(model, json.dumps({"inputs": good["inputs"] + [bad]}).encode())
        assert message in str(err) and "sentinel" not in str(err), (message, str(err))


def test_oversized_requests_are_refused_by_the_row_limit(served):
    model, records = served
    many = (records * 2)[:MAX_ROWS + 1]
    err = _refused(model, _json_request(model, many))
    assert err.status == 413 and f"limit of {MAX_ROWS}" in str(err)
    assert _parse(model, _json_request(model, many[:MAX_ROWS])).parsed.features.shape[0] == MAX_ROWS


def test_the_response_holds_the_outputs_asked_for_and_tritonclient_reads_it(served):
    model, records = served
    req = _parse(model, _json_request(model, records[:4], id="abc"))
    scores = model.booster.predict(req.parsed.features)
    results = model.results(scores)
    doc = oip.infer_response(model, results, req)
    assert doc["model_name"] == model.name and doc["model_version"] == model.version and doc["id"] == "abc"
    assert [o["name"] for o in doc["outputs"]] == ["prediction", "score", "prediction_id"]
    answer = InferenceServerClient.parse_response_body(json.dumps(doc).encode())
    np.testing.assert_array_equal(answer.as_numpy("score"), scores)
    np.testing.assert_array_equal(answer.as_numpy("prediction"), [r["prediction"] for r in results])
    assert answer.as_numpy("prediction").dtype == np.int64 and answer.get_response()["id"] == "abc"
    body, headers = _binary_body(_triton_inputs(model, records[:4]), outputs=[InferRequestedOutput("score")])
    only = oip.infer_response(model, results, _parse(model, body, headers))
    assert [o["name"] for o in only["outputs"]] == ["score"] and only["outputs"][0]["shape"] == [4]
