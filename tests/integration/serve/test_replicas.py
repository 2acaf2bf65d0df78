"""Replicas and model changes: a request whose replica dies gets a 503 with retry-after, a swap and a champion
promotion under load fail no request, and replicas write no access log by default."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyarrow.parquet as pq

from raygbm.config import RegistryConfig
from raygbm.data.split import RAW_TEST
from raygbm.registry.store import Registry
from raygbm.serving.deploy import swap_model
from tests.corpora import records_of
from tests.helpers import HELD_REQUEST, read_response, wait_until
from tests.integration.serve.endpoint import MONITOR, PORT, SERVE, http_get, http_post, serving


def _switch_under_load(meta, change, version: str, threads: int = 4) -> list[tuple[int, str]]:
    """Requests from ``threads`` clients while ``change()`` runs, until ``version`` answers: (status, version) each."""
    _, info = http_get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    body = json.dumps(records_of(pq.read_table(meta.run_dir / RAW_TEST).slice(0, 20), fields)).encode()
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            status, out = http_post("/predict", body)
            results.append((status, out.get("model_version", "")))

    clients = [threading.Thread(target=load) for _ in range(threads)]
    for t in clients:
        t.start()
    try:
        wait_until(lambda: len(results) >= 2 * threads, 30, message="answers before the change")
        change()
        wait_until(lambda: any(v == version for _, v in results[-20:]), 60, interval=0.2,
                   message=f"v{version} reaching the replicas")
        switched = len(results)
        wait_until(lambda: len(results) >= switched + 10 * threads, 30, message="answers after the change")
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert results and all(s == 200 for s, _ in results), [r for r in results if r[0] != 200][:5]
    return results


def _for_seconds(seconds: float, interval: float = 0.25):
    """Yield every ``interval`` seconds until ``seconds`` have passed (a check that must hold throughout)."""
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield
        time.sleep(interval)


def _model_server_actors() -> dict[str, str]:
    """Every ModelServer replica actor this Ray has had, dead or alive: id → state."""
    from ray.util.state import list_actors

    return {a.actor_id: a.state for a in list_actors(limit=10_000) if "ModelServer" in a.class_name}


def test_a_request_whose_replica_dies_gets_503_with_retry_after(served):
    """The replica dies while it is reading a request's body: the client gets a 503 with retry-after and a
    message naming no internals (Serve's own answer is a 500 with the Ray exception), and the endpoint
    answers again once Serve has replaced the replica."""
    import os
    import signal
    import socket

    from ray.util.state import list_actors

    meta, _, _ = served
    serving("1")
    [replica] = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000) if "ModelServer" in a.class_name]
    with socket.create_connection(("127.0.0.1", PORT), timeout=60) as sock:
        sock.sendall(HELD_REQUEST)
        wait_until(lambda: http_get("/model")[1]["requests_in_flight"] == 1, 20, interval=0.2,
                   message="the replica to hold the request")
        os.kill(replica.pid, signal.SIGKILL)
        answer = read_response(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), answer[:300]
    assert b"retry-after: 1" in head.lower() and b"Actor" not in body and json.loads(body)["error"]
    wait_until(lambda: http_get("/readyz")[0] == 200, 60, interval=0.5, message="a replacement replica")
    _, info = http_get("/model")
    good = records_of(pq.read_table(meta.run_dir / RAW_TEST).slice(0, 1), list(info["request_schema"]["oneOf"][0]["properties"]))[0]
    assert http_post("/predict", json.dumps(good).encode())[0] == 200


def test_model_swap_under_load_fails_no_request(served):
    meta, _, _ = served
    serving("1")
    replicas_before = _model_server_actors()
    results = _switch_under_load(meta, lambda: swap_model(RegistryConfig(), SERVE, MONITOR, "2"), "2")
    assert results[0][1] == "1" and results[-1][1] == "2"
    assert http_get("/readyz")[1]["model_version"] == "2"
    # The live replicas were reconfigured in place, not replaced by new processes (a rolling update).
    assert _model_server_actors() == replicas_before


def test_replicas_follow_the_champion_alias_under_load(served):
    """Deployed as "the champion", the replicas switch by themselves when the alias moves (no redeploy),
    with no failed request; a pinned version stops following."""
    meta, _, _ = served
    reg = Registry()
    reg.promote(reg.get("1"))
    swap_model(RegistryConfig(), SERVE, MONITOR)  # the champion again, after the pinned swap above
    status, info = http_get("/model")
    assert status == 200 and info["version"] == "1" and info["follows_champion"] is True
    results = _switch_under_load(meta, lambda: reg.promote(reg.get("2")), "2", threads=3)
    assert results[0][1] == "1" and results[-1][1] == "2"
    info = http_get("/model")[1]
    assert info["champion_check"]["error"] is None and info["champion_check"]["checked_at"] is not None

    swap_model(RegistryConfig(), SERVE, MONITOR, "1")  # pinned: the alias (still v2) is no longer followed
    # A steady state, not an event: v1 must hold through several of the follower's polls (champion_poll_s 1 s).
    polls = [http_get("/model")[1] for _ in _for_seconds(3 * SERVE.champion_poll_s)]
    assert polls and all(p["version"] == "1" and p["follows_champion"] is False for p in polls), polls[-1]


def test_replicas_write_no_access_log_by_default(served):
    """serve.access_log is off: Serve's per-request log lines (and their once-a-second flush stalls)
    never reach the replica logs, while the replicas still log (their startup lines)."""
    import ray

    assert http_post("/predict", b"{}")[0] == 422 and http_get("/model")[0] == 200
    logs = list((Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve").glob("replica_raygbm_ModelServer_*.log"))
    assert logs and any(p.stat().st_size > 0 for p in logs)
    lines = [ln for p in logs for ln in p.read_text(errors="replace").splitlines()]
    assert not [ln for ln in lines if "POST /predict" in ln or "GET /model" in ln], lines[-3:]
