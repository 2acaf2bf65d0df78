"""Request bodies built from one good record, for the endpoint's tests: records from a table, Arrow and CSV
bodies, Open Inference Protocol tensors, and the fuzzed and hostile corpora (by class) that go whole to the
parsers (unit tests) and sampled over HTTP (integration tests)."""

from __future__ import annotations

import json

import numpy as np


def records_of(raw, schema_fields) -> list[dict]:
    cols = {c: raw.column(c).to_pylist() for c in schema_fields}
    out = []
    for i in range(raw.num_rows):
        r = {}
        for c, vals in cols.items():
            v = vals[i]
            r[c] = v.isoformat() if hasattr(v, "isoformat") else v
        out.append(r)
    return out


def table_body(table, kind: str) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    sink = pa.BufferOutputStream()
    if kind == "text/csv":
        pacsv.write_csv(table, sink)
    else:
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    return sink.getvalue().to_pybytes()


def oip_tensors(model_meta: dict, records: list[dict]) -> list[dict]:
    """The Open Inference Protocol's JSON input tensors of ``records``, one per feature, written from the
    spec and the model's metadata: ``{name, shape, datatype, data}``, null for a missing value."""
    return [{"name": i["name"], "shape": [len(records)], "datatype": i["datatype"],
             "data": [r[i["name"]] for r in records]} for i in model_meta["inputs"]]


def triton_inputs(model_meta: dict, records: list[dict]):
    """tritonclient's tensors of ``records`` (binary, its default): numbers as float64 with NaN for a
    missing value (tensors have no null), strings as objects (a missing category as "": unseen, the
    same code as missing)."""
    from tritonclient.http import InferInput

    inputs = []
    for i in model_meta["inputs"]:
        values = [r[i["name"]] for r in records]
        if i["datatype"] == "BYTES":
            array = np.array(["" if v is None else v for v in values], dtype=object)
        else:
            array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        inputs.append(InferInput(i["name"], [len(values)], i["datatype"]).set_data_from_numpy(array))
    return inputs


def damaged(body: bytes, rng, count: int) -> list[bytes]:
    """``count`` copies of ``body`` with one to five random bytes overwritten, cut short, or grown."""
    out = []
    for i in range(count):
        b = bytearray(body)
        if i % 5 == 0:
            b = b[:rng.randrange(1, len(b))]
        elif i % 5 == 1:
            b[rng.randrange(len(b)):rng.randrange(len(b))] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        else:
            for _ in range(rng.randint(1, 5)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        out.append(bytes(b))
    return out


def fuzz_corpus(good: dict, seed: int = 0) -> list[tuple[bytes, dict[str, str]]]:
    """Over a thousand malformed or hostile requests built from one good record."""
    import random

    rng = random.Random(seed)
    bad_values = ["NaN", "Infinity", "-Infinity", '"1.0"', '""', "true", "[]", "{}", "[1, 2]", '{"a": 1}',
                  "1e400", "-1e400", '"\\u0000"', '"' + "x" * 5000 + '"', "123456789012345678901234567890"]
    out: list[tuple[bytes, dict[str, str]]] = []
    text = json.dumps(good)
    for name in good:
        for v in bad_values:
            rec = json.dumps({k: (None if k == name else good[k]) for k in good}).replace(f'"{name}": null', f'"{name}": {v}')
            out.append((rec.encode(), {}))
            out.append((("[" + text + ", " + rec + "]").encode(), {}))
        out.append((json.dumps({k: v for k, v in good.items() if k != name}).encode(), {}))
        out.append((json.dumps({**good, name + "_x": 1}).encode(), {}))
    structural = [b"", b"{", b"}", b"[", b"]", b"[]", b"{}", b"null", b"true", b"1", b'"s"', b"[[]]", b"[null]",
                  b"\xff\xfe\xfd", "\u2028".encode(), b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000,
                  text.encode()[:-1], text.encode() + b"x", text.encode() * 2, b"\x00" * 100,
                  json.dumps([good] * 1001).encode()]
    out += [(b, {}) for b in structural]
    for _ in range(1100 - len(out) if len(out) < 1100 else 200):  # random byte-level damage
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append((bytes(b), {}))
    out += [(text.encode(), {"content-type": "text/plain"}), (text.encode(), {"content-length": "-1"}),
            (text.encode(), {"x-request-timeout-seconds": "-5"}), (text.encode(), {"x-request-timeout-seconds": "abc"})]
    return out


def hostile_corpus(raw, good: dict, seed: int = 1) -> dict[str, list[tuple[str, str, bytes, dict[str, str]]]]:
    """Hostile requests for every route and body format, by class: (method, path, body, headers)."""
    import random

    import pyarrow as pa

    rng = random.Random(seed)
    arrow, csv, js = "application/vnd.apache.arrow.stream", "text/csv", "application/json"
    csv_body, arrow_body = table_body(raw, csv), table_body(raw, arrow)
    job = json.dumps({"input": "/tmp/x"}).encode()
    weird_names = ["", " ", "\u0000", "\ud800", "é" * 300, "a" * 10_000, "num_0 ", "NUM_0", "__proto__", "..", "num_0\n"]
    return {
        "csv damage": [("POST", "/predict/batch", b, {"content-type": csv}) for b in damaged(csv_body, rng, 1400)],
        "arrow damage": [("POST", "/predict/batch", b, {"content-type": arrow}) for b in damaged(arrow_body, rng, 1400)],
        "csv shapes": [("POST", "/predict/batch", b, {"content-type": csv}) for b in (
            b"", b"\n", b",,,\n", csv_body.split(b"\n")[0] + b"\n", csv_body.replace(b",", b";"),
            csv_body.replace(b",", b"\t"), b'"' + csv_body, csv_body + b'"unterminated', csv_body * 3,
            csv_body.replace(b"\n", b"\r"), b"\x00" * 1000, b"\xef\xbb\xbf" + csv_body, csv_body.upper())]
            + [("POST", "/predict/batch", csv_body.replace(b"num_0", n.encode("utf-8", "surrogatepass"), 1),
                {"content-type": csv}) for n in weird_names],
        "arrow types": [("POST", "/predict/batch", table_body(raw.set_column(raw.column_names.index(c), c, arr), arrow),
                         {"content-type": arrow})
                        for c in ("num_0", "cat_0", "event_time")
                        for arr in (pa.array(["x"] * raw.num_rows), pa.array([True] * raw.num_rows),
                                    pa.array([[1]] * raw.num_rows), pa.array([None] * raw.num_rows, pa.null()),
                                    pa.array([b"\xff"] * raw.num_rows, pa.binary()),
                                    pa.array([{"a": 1}] * raw.num_rows), pa.array([10**18] * raw.num_rows, pa.int64()),
                                    pa.array([1.5] * raw.num_rows, pa.float16()))]
            + [("POST", "/predict/batch", table_body(raw.rename_columns(
                [n if n != "num_0" else w for n in raw.column_names]), arrow), {"content-type": arrow})
               for w in weird_names if "\ud800" not in w],  # Arrow names are UTF-8: no lone surrogate
        "job bodies": [("POST", "/predict/batch", b, {"content-type": js}) for b in (
            [json.dumps({"input": v}).encode() for v in
             ("", ".", "/", "~", "/etc/passwd", "file:///etc", "s3://", "gs://x/../../y", "\u0000", "a" * 100_000,
              "hdfs://x", "/tmp/" + "../" * 50 + "etc", "http://127.0.0.1:8265/api")]
            + [json.dumps({"input": v}).encode() for v in (1, None, [], {}, True, 1e308)]
            + [json.dumps({"input": "/tmp/x", "output": "/etc"}).encode(), json.dumps({}).encode(), b"[]", b"{",
               job[:-1], job + b"x", job * 2, b'{"input": "/tmp/x", "input": "/etc"}'] + damaged(job, rng, 200))],
        "gets": [("GET", path, b"", {}) for path in (
            ["/predict/batch/" + junk for junk in ("x", "..", "%2e%2e%2fetc", "a" * 5000, "%00", "\u2028", "-1")]
            + ["/model?" + "a=1&" * 2000, "/drift?window=-1", "/healthz?x=" + "%ff" * 100, "/readyz/../model",
               "/nope", "/" + "x/" * 2000, "/predict", "/openapi.json?x=1", "/docs", "//model", "/model%00"])],
        "methods": [(m, path, b"{}", {"content-type": js}) for m in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")
                    for path in ("/predict", "/predict/batch", "/model", "/drift", "/healthz")],
        "content types": [("POST", path, body, {"content-type": ct}) for path, body in
                          (("/predict", json.dumps(good).encode()), ("/predict/batch", csv_body))
                          for ct in ("text/plain", "application/xml", "multipart/form-data; boundary=x",
                                     "application/x-www-form-urlencoded", "text/csv; charset=latin-1",
                                     "application/json; charset=utf-16", "application/vnd.apache.arrow.file",
                                     "a" * 2000, "text/csv, application/json", ";", "application/json" + "\t" * 50)],
        "headers": [("POST", "/predict", json.dumps(good).encode(), {"content-type": js, name: value})
                    for name, value in (("x-request-timeout-seconds", v) for v in ("-1", "0", "nan", "inf", "1e400", "abc", "9" * 400))]
            + [("POST", "/predict", json.dumps(good).encode(), {"content-type": js, "authorization": v})
               for v in ("Bearer", "Bearer " + "a" * 8000, "Basic eDp5", "\u00ff")]
            + [("POST", "/predict", json.dumps(good).encode(), {"content-type": js, "x-request-id": v})
               for v in ("a" * 8000, "../../x", "\r\nx")],
    }


def oip_hostile_corpus(model_meta: dict, good: dict, seed: int = 2) -> dict[str, list[tuple[str, str, bytes, dict[str, str]]]]:
    """Hostile requests for the Open Inference Protocol's routes, by class: (method, path, body, headers)."""
    import random

    from tritonclient.http import InferenceServerClient

    rng = random.Random(seed)
    name, js = model_meta["name"], {"content-type": "application/json"}
    infer = f"/v2/models/{name}/infer"
    tensors = oip_tensors(model_meta, [good] * 5)
    body = json.dumps({"inputs": tensors}).encode()
    binary, size = InferenceServerClient.generate_request_body(triton_inputs(model_meta, [good] * 5))
    with_size = {"inference-header-content-length": str(size)}

    def tensor(**change) -> bytes:
        return json.dumps({"inputs": [{**tensors[0], **change}] + tensors[1:]}).encode()

    def doc(**change) -> bytes:
        return json.dumps({"inputs": tensors, **change}).encode()

    weird = ["", " ", "\u0000", "é" * 300, "a" * 10_000, "..", "%2e%2e", "num_0", "records", "\ud800"]
    return {
        "oip json damage": [("POST", infer, b, js) for b in damaged(body, rng, 400)],
        "oip binary damage": [("POST", infer, b, with_size) for b in damaged(binary, rng, 300)]
        + [("POST", infer, binary, {"inference-header-content-length": v})
           for v in ("-1", "abc", "9" * 30, "0", str(len(binary) + 5), " 12 ", "1e3", "\u00ff")],
        "oip tensors": [("POST", infer, b, js) for b in (
            [tensor(shape=v) for v in ([], [-1], [10**9], [2**64], ["5"], [None], [5, 5], [5, 1, 1], [True], None, 5, {})]
            + [tensor(datatype=v) for v in ("", "bf16", "BF16", "FP8", "STRING", "bytes", "x" * 5000, None, 5, "BOOL")]
            + [tensor(data=v) for v in (None, {}, "x", [[[]]] * 5, [[]] * 5, [1e308] * 5, [2**64] * 5, [[1, 2]] * 5,
                                        ["\ud800"] * 5, [True] * 5, ["1"] * 5, list(range(6)))]
            + [tensor(name=v) for v in weird + [None, 5, ["num_0"]]]
            + [tensor(parameters=v) for v in (None, [], {"binary_data_size": -1}, {"binary_data_size": 10**12},
                                              {"binary_data_size": "8"}, {"shared_memory_region": "x"})]
            + [doc(id=v) for v in (5, None, [], "x" * 100_000, "\ud800")]
            + [doc(outputs=v) for v in ([], [{}], [{"name": 5}], [{"name": "x"}], "score", [{"name": "score"}] * 1000)]
            + [doc(parameters=v) for v in ([], "x", {"binary_data_output": True}, {"a": {"b": [1] * 1000}})]
            + [json.dumps({"inputs": v}).encode() for v in ([], None, {}, [[]], tensors * 100, [tensors[0]] * 5000)]
            + [json.dumps({"inputs": [{"name": "records", "shape": [1], "datatype": "BYTES", "data": [v]}]}).encode()
               for v in ("", "{", "[]", "null", "[1]", json.dumps([good] * 3000), "[" * 100_000, "\ud800", json.dumps(good) * 2)])],
        "oip paths and methods": [("POST", f"/v2/models/{w}/infer", body, js) for w in weird + ["nope", name + " "]]
        + [("POST", f"/v2/models/{name}/versions/{v}/infer", body, js) for v in ("0", "-1", "x" * 3000, "1.0", "%00")]
        + [("GET", path, b"", {}) for path in (
            "/v2", "/v2/", "/v2/health/live?x=1", "/v2/health/ready/..", f"/v2/models/{name}", "/v2/models/",
            f"/v2/models/{name}/ready", f"/v2/models/{name}/versions/9/ready", "/v2/models/" + "x" * 5000,
            f"/v2/models/{name}/infer", "/v2/repository/index", f"/v2/models/{name}/stats", "/v2/models/%ff")]
        + [(m, path, body, js) for m in ("PUT", "DELETE", "PATCH") for path in (infer, "/v2", f"/v2/models/{name}")],
        "oip headers": [("POST", infer, body, {**js, k: v}) for k, v in (
            ("content-encoding", "gzip"), ("content-encoding", "br"), ("content-encoding", "x" * 3000),
            ("content-type", "application/octet-stream"), ("content-type", "text/csv"),
            ("inference-header-content-length", str(len(body))), ("inference-header-content-length", "5"))],
    }


# The corpora's classes whose requests differ only in what HTTP carries (paths, methods, headers, content
# types): the parser tests cannot send them, so the HTTP tests send them whole.
HTTP_ONLY = ("gets", "methods", "content types", "headers", "oip paths and methods", "oip headers")


def sample(corpus: dict[str, list], per_class: int, seed: int = 0) -> dict[str, list]:
    """Every class of ``corpus``: the HTTP-only classes whole, the others ``per_class`` requests drawn at
    random (the whole of each goes to the parsers)."""
    import random

    rng = random.Random(seed)
    return {name: requests if name in HTTP_ONLY or len(requests) <= per_class else rng.sample(requests, per_class)
            for name, requests in corpus.items()}
