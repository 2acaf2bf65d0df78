"""The serving pieces without Ray: the model slot (load, verify, switch, follow the champion) against a
real MLflow store, the buffer to the drift monitor, and the Parquet-job request checks."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest

from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.errors import RaygbmError
from raygbm.registry.bundle import Bundle
from raygbm.registry.register import evaluate_and_register
from raygbm.registry.store import Registry, RegistryError
from raygbm.serving.batch_jobs import allowed_input, job_input
from raygbm.serving.deploy import model_spec
from raygbm.serving.model_slot import ModelSlot
from raygbm.serving.monitor_buffer import MonitorBuffer
from raygbm.serving.request import RequestError
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.conftest import make_shards
from tests.helpers import flip_one_byte, store_file


@pytest.fixture
def two_versions(tmp_path, home):
    """v1 (the champion) and v2 (a candidate) of one model in the embedded store."""
    data = make_shards(tmp_path / "data", rows=3000, shards=1)
    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(data), "data.label": "label"})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    for rounds in (20, 5):
        train = TrainConfig(num_boost_round=rounds, early_stopping_rounds=None)
        evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                              EvaluateConfig(permutation_rows=200), RegistryConfig(), None)
    reg = Registry()
    assert reg.get().version == "1"
    return reg


def _slot(switched: list[str] | None = None) -> ModelSlot:
    return ModelSlot(max_rows=10, poll_s=1.0, on_switch=(lambda m: switched.append(m.version)) if switched is not None else None)


def test_slot_loads_and_switches_on_reconfigure(two_versions):
    switched: list[str] = []
    slot = _slot(switched)
    slot.reconfigure(model_spec(RegistryConfig(), "1"))
    first = slot.model
    assert slot.version == "1" and first.reference is not None and first.schema.max_rows == 10
    assert not slot.follows()  # a version by number is pinned
    slot.reconfigure(model_spec(RegistryConfig(), "2"))
    assert slot.version == "2" and switched == ["1", "2"]
    assert first.version == "1"  # a request holding the old model keeps it whole
    slot.reconfigure(slot.spec.to_user_config())  # the same version again (as Serve sends it): nothing reloads
    assert switched == ["1", "2"]


def test_slot_follows_the_champion_alias(two_versions):
    slot = _slot()
    slot.reconfigure(model_spec(RegistryConfig()))  # "the champion"
    assert slot.version == "1" and slot.follows()
    slot.check_champion()
    assert slot.version == "1" and slot.champion_check["error"] is None and slot.champion_check["checked_at"]
    two_versions.promote(two_versions.get("2"))
    slot.check_champion()
    assert slot.version == "2" and slot.spec.version == "2" and slot.follows()
    # A replica started after the promotion with the original user_config starts on the new champion.
    late = _slot()
    late.reconfigure(replace(model_spec(RegistryConfig(), None), version="1"))
    assert late.version == "2"


def test_pinned_slot_ignores_the_alias(two_versions):
    slot = _slot()
    slot.reconfigure(model_spec(RegistryConfig(), "1"))
    two_versions.promote(two_versions.get("2"))
    slot.check_champion()
    assert slot.version == "1" and slot.champion_check["checked_at"] is None


def test_slot_refuses_a_bad_manifest_and_keeps_serving(two_versions):
    slot = _slot()
    slot.reconfigure(model_spec(RegistryConfig(), "1"))
    bad = replace(model_spec(RegistryConfig(), "2"), manifest_sha256="0" * 64)
    with pytest.raises(RaygbmError, match="manifest hash differs"):
        slot.reconfigure(bad)
    assert slot.version == "1"
    # A tampered file in the cached bundle is caught by the manifest (and fetched again, verified).
    good = model_spec(RegistryConfig(), "2")
    slot.reconfigure(good)
    model_file = slot.model.bundle.path / "model.txt"
    model_file.write_text(model_file.read_text() + "\n")
    with pytest.raises(RegistryError, match="does not match"):
        Bundle.load(slot.model.bundle.path, good.manifest_sha256)
    slot2 = _slot()
    slot2.reconfigure(good)  # finds its cached copy tampered and fetches the version again
    assert slot2.version == "2"
    Bundle.load(slot2.model.bundle.path, good.manifest_sha256)


def test_a_tampered_version_in_the_store_is_never_served(two_versions, home):
    """FAULT tamper (serving): v2's model file has one byte flipped in the artifact store. The alias moved
    to it behind raygbm's back (MLflow's own client: ``Registry.promote`` refuses it) is not followed,
    and a pinned swap to it fails: both keep serving v1 and say which file and hash."""
    flip_one_byte(store_file(two_versions, "2"))
    follower, pinned = _slot(), _slot()
    follower.reconfigure(model_spec(RegistryConfig()))
    pinned.reconfigure(model_spec(RegistryConfig(), "1"))
    two_versions.client.set_registered_model_alias("raygbm", "champion", "2")
    follower.check_champion()
    assert follower.version == "1" and "model.txt does not match its sha256" in follower.champion_check["error"]
    with pytest.raises(RegistryError, match="model.txt does not match its sha256 in the manifest \\(sha256 [0-9a-f]{64}"):
        pinned.reconfigure(model_spec(RegistryConfig(), "2"))
    assert pinned.version == "1" and follower.version == "1"
    print("FAULT tamper-serve follower_kept=v1 pinned_kept=v1")


def test_failed_champion_check_keeps_the_model_and_says_why(two_versions):
    slot = _slot()
    slot.reconfigure(model_spec(RegistryConfig()))
    two_versions.promote(two_versions.get("2"))

    def broken(spec, max_rows):
        raise RegistryError("store unreachable")

    slot.loader = broken
    slot.check_champion()
    assert slot.version == "1" and "store unreachable" in slot.champion_check["error"]


def _batch(n: int, start: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.full((n, 2), start), np.full(n, start), np.zeros((n, 3), dtype=bool)


def test_buffer_sends_by_rows_and_by_time_never_mixing_versions():
    sent: list[tuple] = []

    async def scenario() -> None:
        buf = MonitorBuffer(lambda *b: sent.append(b), rows=100, seconds=0.05)
        buf.add("1", *_batch(60))
        assert sent == []
        buf.add("1", *_batch(50))  # 110 rows: over the threshold, sent at once
        assert len(sent) == 1 and sent[0][0] == "1" and len(sent[0][1]) == 110
        buf.add("1", *_batch(10, 1.0))
        buf.add("2", *_batch(5, 2.0))  # a swap: v1's rows leave first, on their own
        assert [s[0] for s in sent] == ["1", "1"] and len(sent[1][1]) == 10
        await asyncio.sleep(0.2)  # the timer sends the rest
        assert [s[0] for s in sent] == ["1", "1", "2"] and len(sent[2][1]) == 5 and np.all(sent[2][2] == 2.0)

    asyncio.run(scenario())


def test_buffer_counts_batches_dropped_while_the_monitor_is_full():
    class Full(Exception):
        pass

    sent: list[tuple] = []
    full = [True, True, False]

    def send(*batch):
        if full.pop(0):
            raise Full()
        sent.append(batch)

    async def scenario() -> None:
        buf = MonitorBuffer(send, full=(Full,), rows=1)
        for _ in range(3):
            buf.add("1", *_batch(1))
        assert buf.dropped == 0 and len(sent) == 1 and sent[0][4] == 2  # the count travels with the next batch

    asyncio.run(scenario())


def test_buffer_lets_other_send_errors_through():
    async def scenario() -> None:
        buf = MonitorBuffer(lambda *b: 1 / 0, rows=1)
        with pytest.raises(ZeroDivisionError):
            buf.add("1", *_batch(1))

    asyncio.run(scenario())


def test_job_input_checks(tmp_path):
    (tmp_path / "in").mkdir()
    roots = [str(tmp_path), "s3://bucket/data"]
    assert job_input(json.dumps({"input": str(tmp_path / "in")}).encode(), roots) == str(tmp_path / "in")
    assert job_input(json.dumps({"input": "s3://bucket/data/x"}).encode(), roots) == "s3://bucket/data/x"
    cases = {b"{nope": 400, b'{"input": ' * 100_000: 400, b"\xff\xfe": 400, b'{"input": "x", "more": 1}': 422, json.dumps({"input": "/etc"}).encode(): 403,
             json.dumps({"input": str(tmp_path / "missing")}).encode(): 404,
             json.dumps({"input": "relative"}).encode(): 422, json.dumps({"input": "s3://bucket/data/../x"}).encode(): 403,
             json.dumps({"input": str(tmp_path / "a\x00b")}).encode(): 422}
    for body, status in cases.items():
        with pytest.raises(RequestError) as err:
            job_input(body, roots)
        assert err.value.status == status, body
    with pytest.raises(RequestError) as err:
        job_input(json.dumps({"input": str(tmp_path)}).encode(), [])
    assert err.value.status == 403
    assert not allowed_input(str(tmp_path / "in" / ".." / ".." / "x"), [str(tmp_path)])
    assert allowed_input("s3://bucket/data", roots) and not allowed_input("s3://bucket/database", roots)


def test_bearer_token_middleware_guards_every_route_but_the_probes():
    import hashlib

    from raygbm.serving.app import BearerToken, Replica

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def call(path: str, token: str | None) -> int:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        headers = [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
        asyncio.run(BearerToken(inner)({"type": "http", "path": path, "headers": headers}, receive, send))
        return sent[0]["status"]

    secret = "s" * 16
    old = Replica.token_sha256
    try:
        Replica.token_sha256 = None  # no token asked for: everything passes
        assert call("/model", None) == 200
        Replica.token_sha256 = hashlib.sha256(secret.encode()).hexdigest()
        assert call("/model", None) == 401 and call("/openapi.json", "wrong") == 401 and call("/predict", "") == 401
        assert call("/model", secret) == 200 and call("/docs", secret) == 200
        assert call("/healthz", None) == 200 and call("/readyz", None) == 200
        # The Open Inference Protocol: its health probes are open, its model routes need the token.
        assert call("/v2/health/live", None) == 200 and call("/v2/health/ready", None) == 200
        assert call("/v2/models/m/infer", None) == 401 and call("/v2/models/m", "wrong") == 401 and call("/v2", None) == 401
        assert call("/v2/models/m/infer", secret) == 200
    finally:
        Replica.token_sha256 = old


def test_model_spec_travels_as_user_config_and_refuses_unknown_or_missing_keys():
    from raygbm.serving.model_slot import ModelSpec

    spec = ModelSpec("m", "3", "file:///x", "/h", manifest_sha256="a" * 64, follow=True)
    assert ModelSpec.of(spec.to_user_config()) == spec
    with pytest.raises(RaygbmError, match=r"unknown key\(s\) \['versoin'\]"):
        ModelSpec.of({**spec.to_user_config(), "versoin": "4"})
    with pytest.raises(RaygbmError, match=r"missing key\(s\) \['home'\]"):
        ModelSpec.of({k: v for k, v in spec.to_user_config().items() if k != "home"})
