"""The whole hostile and fuzz corpora (over five thousand bodies, tests/corpora.py) sent to the endpoint's
parsers without Ray or HTTP, on a real registered model: each body is either read or refused with a
RequestError whose status is a 4xx and whose message holds no part of the body (never another
exception, which the endpoint would answer with a 500). The integration tests send a sample of each
class over HTTP."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from raygbm.config import ServeConfig
from raygbm.data.split import RAW_TEST
from raygbm.serving import oip
from raygbm.serving.batch_jobs import job_input
from raygbm.serving.request import RequestError
from raygbm.serving.tables import ARROW_STREAM, CSV, content_type, read_table
from tests.corpora import HTTP_ONLY, fuzz_corpus, hostile_corpus, oip_hostile_corpus, records_of
from tests.helpers import raygbm_home, registered_model

SERVE = ServeConfig()


@pytest.fixture(scope="module")
def model_and_rows(tmp_path_factory):
    """A registered binary model (numeric, categorical and time features, a derived hour) as a replica
    loads it, five raw test rows and one good record."""
    with raygbm_home(tmp_path_factory.mktemp("home")):
        model, meta = registered_model(tmp_path_factory.mktemp("data"), SERVE.max_rows)
        raw = pq.read_table(meta.run_dir / RAW_TEST).slice(0, 5).drop_columns(["label"])
        yield model, raw, records_of(raw.slice(0, 1), list(model.schema.fields))[0]


def _outcome(parse, body: bytes) -> str:
    """"read", or "refused" (a 4xx that echoes nothing of the body); anything else fails the test."""
    try:
        parse(body)
    except RequestError as exc:
        assert 400 <= exc.status < 500, (exc.status, str(exc)[:200], body[:60])
        message = str(exc).encode("utf-8", "surrogatepass")
        assert len(message) < 500 and b"sentinel" not in message
        return "refused"
    return "read"


def _table(model, kind: str):
    def parse(body: bytes) -> None:
        table = read_table(body, kind, model.bundle.preprocessor.schema.types, model.schema.max_columns)
        model.schema.check_table(table, SERVE.max_batch_rows)
        assert np.isfinite(model.booster.predict(model.table_matrix(table), num_threads=1)).all()

    return parse


def test_every_hostile_body_is_read_or_refused_with_a_4xx_by_its_parser(model_and_rows):
    model, raw, good = model_and_rows
    corpus = {**hostile_corpus(raw, good), **oip_hostile_corpus(oip.model_metadata(model), good)}
    counts: dict[str, dict[str, int]] = {}
    for name, requests in corpus.items():
        if name in HTTP_ONLY:
            continue
        for _, path, body, headers in requests:
            kind = content_type(headers)
            if path.startswith("/v2/"):
                parse = lambda b, h=headers: oip.parse_infer(b, h, model)  # noqa: E731
            elif kind in (ARROW_STREAM, CSV):
                parse = _table(model, kind)
            else:
                parse = lambda b: job_input(b, ["/tmp/raygbm-no-such-root"])  # noqa: E731
            outcome = _outcome(parse, body)
            counts.setdefault(name, {"read": 0, "refused": 0})[outcome] += 1
    print(counts)
    assert sum(sum(c.values()) for c in counts.values()) >= 3800
    assert all(c["refused"] for c in counts.values()), counts  # every class is refused at least once


def test_every_fuzzed_predict_body_is_read_or_refused_with_a_4xx(model_and_rows):
    model, _, good = model_and_rows
    bodies = [body for body, headers in fuzz_corpus(good) if not headers]
    outcomes = [_outcome(model.schema.parse, body) for body in bodies]
    assert len(bodies) >= 1000 and outcomes.count("refused") >= 1000
    assert _outcome(model.schema.parse, json.dumps(good).encode()) == "read"
