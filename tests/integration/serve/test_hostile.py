"""Hostile requests over HTTP: the classes that once answered 500 or echoed input, a sample of each hostile
corpus per route and format (the whole corpora go to the parsers in tests/unit/test_hostile_parsers.py), and
schemathesis from the OpenAPI document: never a 5xx."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq

from raygbm.data.split import RAW_TEST
from tests.corpora import fuzz_corpus, hostile_corpus, oip_hostile_corpus, oip_tensors, records_of, sample, table_body
from tests.integration.serve.endpoint import URL, call, http_get, http_post, post_raw


def test_hostile_bodies_of_every_format_get_4xx_without_echo(served):
    """The classes a hostile-input probe found answering 500 or echoing input: each gets a 4xx whose
    message holds none of the body, and a valid request is answered after each class."""
    import pyarrow as pa

    meta, _, _ = served
    _, info = http_get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 5).drop_columns(["label"])
    good = records_of(raw.slice(0, 1), fields)[0]
    text = json.dumps(good)
    num = num_col = raw.column_names.index("num_0")
    arrow, csv = "application/vnd.apache.arrow.stream", "text/csv"
    classes = {
        "json numbers beyond float": [("/predict", text.replace(f'"{k}": {json.dumps(good[k])}', f'"{k}": {"9" * 400}').encode(), None)
                                      for k in ("num_0", "event_time")],
        "json field names": [("/predict", (text[:-1] + ', "\\ud800sentinel": 1}').encode(), None),
                             ("/predict", json.dumps({**good, "sentinel" + "x" * 900_000: 1}).encode(), None)],
        "job body nesting and encoding": [("/predict/batch", b'{"input": ' * 100_000, None),
                                          ("/predict/batch", b"\xff\xfesentinel", None)],
        "duplicated columns": [("/predict/batch", table_body(raw.append_column("num_0", raw.column("num_0")), k), k)
                               for k in (arrow, csv)],
        "numbers json would refuse": [
            ("/predict/batch", table_body(raw.set_column(num, "num_0", pa.array(v, t)), arrow), arrow)
            for v, t in (([float("nan")] * 5, pa.float64()), ([float("inf")] * 5, pa.float64()))],
        "csv that is not utf-8 or not a table": [
            ("/predict/batch", table_body(raw, csv).replace(b"\n", b"\n\xff\xfesentinel", 1), csv),
            ("/predict/batch", table_body(raw, csv) + b"sentinel,secret\n", csv)],
        "width": [("/predict/batch", ",".join(f"c{i}" for i in range(100_000)).encode() + b"\n" + b"1," * 99_999 + b"1\n", csv),
                  ("/predict/batch", table_body(pa.table({f"c{i}": [1] for i in range(5_000)}), arrow), arrow)],
    }
    model_meta = http_get(f"/v2/models/{info['name']}")[1]
    infer, tensors = f"/v2/models/{info['name']}/infer", oip_tensors(model_meta, [good])
    num = next(i for i, t in enumerate(tensors) if t["name"] == "num_0")
    classes["open inference protocol"] = [(path, json.dumps(doc).encode(), None) for path, doc in (
        (infer, {"inputs": tensors + [{**tensors[0], "name": "sentinel"}]}),
        (infer, {"inputs": tensors[:num] + [{**tensors[num], "data": ["sentinel"]}] + tensors[num + 1:]}),
        (infer, {"inputs": tensors[:num] + [{**tensors[num], "datatype": "sentinel"}] + tensors[num + 1:]}),
        (infer, {"id": "sentinel", "inputs": tensors[1:]}),
        (infer, {"inputs": tensors, "outputs": [{"name": "sentinel"}]}),
        (infer, {"inputs": tensors, "sentinel": 1}),
        (infer, {"inputs": [{"name": "records", "shape": [1], "datatype": "BYTES", "data": ["sentinel{"]}]}),
        (infer, {"inputs": [{"name": "records", "shape": [1], "datatype": "BYTES",
                             "data": [json.dumps({**good, "cat_0": 5, "sentinel": 1})]}]}),
        ("/v2/models/sentinel/infer", {"inputs": tensors}), ("/v2/models/sentinel", {}))]
    for name, requests in classes.items():
        for path, body, kind in requests:
            status, answer = post_raw(path, body, kind or "application/json")
            assert 400 <= status < 500, (name, status, answer[:200])
            assert b"sentinel" not in answer and len(answer) < 500, (name, answer[:200])
        assert http_post("/predict", text.encode())[0] == 200, name
    status, one = http_post("/predict", b"\xef\xbb\xbf" + text.encode())  # a BOM before one record: still one answer
    assert status == 200 and "prediction_id" in one
    # A 64-bit integer beyond 2^53 is a number like any other (rounded to float64, as in training).
    big = table_body(raw.set_column(num_col, "num_0", pa.array([2**60] * 5, pa.int64())), arrow)
    assert post_raw("/predict/batch", big, arrow)[0] == 200


def test_fuzzed_requests_never_get_a_5xx(served):
    """200 of the fuzz corpus's thousand-odd /predict bodies (all of them go to the parser in
    tests/unit/test_hostile_parsers.py), and every request whose headers are the damage."""
    import random

    meta, _, _ = served
    _, info = http_get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    good = records_of(pq.read_table(meta.run_dir / RAW_TEST).slice(0, 1), fields)[0]
    whole = fuzz_corpus(good)
    corpus = [r for r in whole if r[1]] + random.Random(0).sample([r for r in whole if not r[1]], 200)

    def send(request: tuple[bytes, dict[str, str]]) -> int | str:
        body, headers = request
        try:
            return http_post("/predict", body, headers)[0]
        except (urllib.error.URLError, ConnectionError, ValueError) as exc:  # the client refused to send it
            return 0 if "content-length" in headers else f"{exc} for {body[:60]!r}"

    with ThreadPoolExecutor(4) as clients:  # four at a time: the endpoint also sees them concurrently
        statuses = list(clients.map(send, corpus))
    unsent = [s for s in statuses if isinstance(s, str)]
    assert not unsent, unsent[:5]
    assert not [s for s in statuses if s >= 500]
    assert sum(400 <= s < 500 for s in statuses) >= 190


def test_hostile_requests_on_every_route_and_format_never_get_a_5xx(served):
    """Every class of the hostile corpus across the routes and body formats, the Open Inference Protocol's
    included: what only HTTP can carry (paths, methods, headers, content types) whole, 25 of each body
    class (the whole corpus, over four thousand bodies, goes to the parsers in
    tests/unit/test_hostile_parsers.py). No answer is a 5xx, and a valid request is answered after each
    class."""
    meta, _, _ = served
    _, info = http_get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 5).drop_columns(["label"])
    good = records_of(raw.slice(0, 1), fields)[0]
    corpus = sample({**hostile_corpus(raw, good), **oip_hostile_corpus(http_get(f"/v2/models/{info['name']}")[1], good)}, 25)
    total, server_errors, sent = 0, [], 0
    with ThreadPoolExecutor(4) as clients:  # four at a time: the endpoint also sees them concurrently
        for name, requests in corpus.items():
            for (method, path, body, _), status in zip(requests, clients.map(lambda r: call(*r), requests)):
                total += 1
                sent += status != 0
                if status >= 500:
                    server_errors.append((name, method, path[:40], status, body[:60]))
            assert http_post("/predict", json.dumps(good).encode())[0] == 200, name
    print(f"{total} hostile requests ({sent} sent), {len(server_errors)} answered >= 500")
    assert len(corpus) == 14 and total >= 300 and sent >= 0.95 * total
    assert not server_errors, server_errors[:10]


def test_schemathesis_from_openapi_finds_no_server_error(served):
    """Property-based requests generated from /openapi.json (the model's real request schema):
    negative ones (violating it) and positive ones; every answer must be below 500."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(URL + "/openapi.json")
    operation = schema["/predict"]["POST"]
    statuses: list[int] = []
    for mode, n in ((GenerationMode.NEGATIVE, 300), (GenerationMode.POSITIVE, 100)):

        @settings(max_examples=n, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def probe(case) -> None:
            response = case.call(base_url=URL, timeout=30)
            statuses.append(response.status_code)
            assert response.status_code < 500, (response.status_code, response.text[:200])

        probe()
    assert len(statuses) >= 200 and any(400 <= s < 500 for s in statuses)
