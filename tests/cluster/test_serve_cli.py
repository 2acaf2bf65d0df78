"""`raygbm serve` as systemd, Docker or Kubernetes run it: its own embedded Ray, stopped with SIGTERM.

Runs in the cluster session (after the integration tests have shut their Ray down, and after the head node
test stopped its head): never two Ray instances on this host at once.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.registry.register import evaluate_and_register
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.conftest import make_shards
from tests.helpers import HELD_REQUEST, raygbm_home, read_response, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PORT = 8279


def _register_a_model(home: Path, data: Path) -> None:
    """One registered champion, trained without Ray."""
    with raygbm_home(home):
        cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(make_shards(data, rows=3000, shards=1)),
                                                     "data.label": "label"})
        meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
        train = TrainConfig(num_boost_round=10, early_stopping_rounds=None)
        evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                              EvaluateConfig(permutation_rows=100), RegistryConfig(), None)


def _ray_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True)
    return out.stdout.split()


# Every process of a Ray instance: the raylet and GCS, and the Python ones (dashboard, its agents, the
# runtime-env agent, log monitor, workers), whose command lines name Ray's package or a ray:: title.
_ANY_RAY = r"raylet|gcs_server|ray::|site-packages/ray/"


def _any_ray() -> list[str]:
    out = subprocess.run(["pgrep", "-af", _ANY_RAY], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


@contextmanager
def _serving(tmp_path: Path, *args: str, register: bool = True) -> Iterator[subprocess.Popen]:
    """``raygbm serve`` on its own embedded Ray, ready; stopped on the way out if still running.
    ``register=False``: serve what ``tmp_path``'s home already holds (a restart)."""
    wait_until(lambda: not _ray_processes(), 30, message="no other Ray on this host (the head test stops its own)")
    home = tmp_path / "home"
    if register:
        _register_a_model(home, tmp_path / "data")
    env = {**os.environ, "RAYGBM_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    raygbm = str(Path(sys.executable).with_name("raygbm"))
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([raygbm, "serve", "--port", str(PORT), *args], stdout=out, stderr=err, env=env,
                                cwd=tmp_path)
    try:
        wait_until(lambda: "press Ctrl-C" in (tmp_path / "out").read_text() or proc.poll() is not None, 120,
                   interval=0.5, message="raygbm serve to deploy")
        assert proc.poll() is None, (tmp_path / "err").read_text()[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readyz", timeout=10) as r:
            assert json.loads(r.read())["status"] == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        wait_until(lambda: not _ray_processes(), 30, message="the embedded Ray's processes to exit")


def _listeners(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process name) of every listening TCP socket of these processes."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', fields[-1]):
            if int(pid) in pids:
                found.append((fields[3], name))
    return found


def _process_tree(root: int) -> set[int]:
    """``root`` and its descendants (Ray's processes are children of the serve process)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def _closed_within(request: bytes, seconds: float) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", PORT), timeout=seconds + 5) as sock:
        start = time.monotonic()
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received, time.monotonic() - start


def _replica_pid(tree: set[int]) -> int:
    out = subprocess.run(["ps", "-o", "pid=,args=", "-p", ",".join(map(str, tree))], capture_output=True, text=True)
    [pid] = [int(line.split()[0]) for line in out.stdout.splitlines() if "ServeReplica:raygbm:ModelServer" in line]
    return pid


def _in_flight() -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/model", timeout=10) as r:
        return json.loads(r.read())["requests_in_flight"]


@pytest.mark.parametrize("fast_ingress", [True, False], ids=["haproxy", "serve-proxy"])
def test_serve_listens_on_loopback_only_bounds_every_read_and_answers_a_lost_replica(tmp_path, fast_ingress):
    """Both ingresses (HAProxy, the default; Serve's Python proxy, serve.fast_ingress=false): every listening
    socket of the process tree on 127.0.0.1, HAProxy's included; reads bounded (408, 431); and a request
    held by a replica that is SIGKILLed gets a 503 with retry-after."""
    read_timeout = 2.0
    with _serving(tmp_path, "--set", f"serve.read_timeout_s={read_timeout}",
                  "--set", f"serve.fast_ingress={str(fast_ingress).lower()}") as proc:
        tree = _process_tree(proc.pid)
        listeners = _listeners(tree)
        print("listening:", *sorted(listeners), sep="\n  ")
        names = {name for _, name in listeners}
        # The endpoint, the dashboard, GCS, the raylet, the Serve proxy, controller and replica, the monitor.
        assert {"raylet", "gcs_server"} <= names and any("ServeRepli" in n for n in names), names
        assert ("haproxy" in names) == fast_ingress, names
        exposed = [(addr, name) for addr, name in listeners
                   if not addr.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:"))]
        assert not exposed, exposed
        for request in (b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-le",
                        b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{",
                        b"POST /predict HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n1\r\n{\r\n"):
            response, seconds = _closed_within(request, read_timeout)
            print(f"{request[:40]!r}... closed after {seconds:.2f} s: {response[:12]!r}")
            assert seconds <= read_timeout + 1 and response.startswith(b"HTTP/1.1 408"), (response[:200], seconds)
        response, _ = _closed_within(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n" +
                                     b"".join(b"x-h%d: v\r\n" % i for i in range(200)) + b"\r\n", read_timeout)
        assert response.startswith(b"HTTP/1.1 431"), response[:200]
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readyz", timeout=10) as r:
            assert r.status == 200

        # A keep-alive client's second request, held by the replica while its body is read, when the replica goes.
        with socket.create_connection(("127.0.0.1", PORT), timeout=60) as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
            sock.sendall(HELD_REQUEST)
            wait_until(lambda: _in_flight() == 1, 20, interval=0.2, message="the replica to hold the request")
            os.kill(_replica_pid(tree), signal.SIGKILL)
            answer = read_response(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        print("held request, replica SIGKILLed:", head.split(b"\r\n")[0])
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower(), answer[:300]
        assert json.loads(body)["error"]


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    with _serving(tmp_path) as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, (tmp_path / "err").read_text()[-2000:]
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert "SIGTERM: draining the endpoint and stopping Ray" in stdout
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr, stderr[-2000:]


def _records(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/model", timeout=10).read())
    props = doc["request_schema"]["oneOf"][0]["properties"]
    rows = []
    for _ in range(n):
        row = {}
        for name, spec in props.items():
            kinds = spec.get("type", "number")
            kinds = kinds if isinstance(kinds, list) else [kinds]
            row[name] = (spec["enum"][0] if "enum" in spec else f"v{rng.integers(3)}" if "string" in kinds
                         else int(rng.integers(0, 100)) if "integer" in kinds else float(rng.normal()))
        rows.append(row)
    return json.dumps(rows).encode()


class _Clients:
    """``threads`` clients posting ``body`` to /predict back to back until told to stop; each request's start
    time, end time and outcome (status, or the exception's name) kept, with the prediction ids of the 200s."""

    def __init__(self, body: bytes, threads: int = 4):
        self.body, self.stop = body, threading.Event()
        self.done: list[tuple[float, float, object]] = []
        self.ids: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            req = urllib.request.Request(f"http://127.0.0.1:{PORT}/predict", data=self.body,
                                         headers={"content-type": "application/json"})
            ids: list[str] = []
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    outcome: object = r.status
                    ids = [p["prediction_id"] for p in json.loads(r.read())["predictions"]]
            except urllib.error.HTTPError as e:
                outcome = e.code
            except (OSError, http.client.HTTPException) as e:
                outcome = type(e).__name__
                time.sleep(0.05)  # a refused connection: the endpoint is gone; do not spin
            with self._lock:
                self.done.append((start, time.monotonic(), outcome))
                self.ids.extend(ids)

    def __enter__(self) -> "_Clients":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=90)

    def answered(self) -> int:
        with self._lock:
            return sum(1 for *_, o in self.done if o == 200)


def test_sigterm_under_load_answers_every_request_in_flight_and_leaves_no_ray(tmp_path):
    with _serving(tmp_path) as proc:
        with _Clients(_records(800, seed=1)) as clients:
            wait_until(lambda: clients.answered() >= 40, 60, message="requests answered under load")
            sent_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=45)
            exited_at = time.monotonic()
        assert code == 0, (tmp_path / "err").read_text()[-2000:]
    in_flight = [o for start, end, o in clients.done if start < sent_at < end]
    before = [o for start, end, o in clients.done if start < sent_at]
    after = collections.Counter(str(o) for start, _, o in clients.done if start >= sent_at)
    print(f"SIGTERM with {len(in_flight)} requests in flight: answered {in_flight}; exit 0 after "
          f"{exited_at - sent_at:.1f} s; requests sent after it: {dict(after)}")
    assert in_flight and all(o == 200 for o in before), collections.Counter(map(str, before))
    assert not any(isinstance(o, int) and o >= 500 and o != 503 for o in after), after
    left = wait_until(lambda: not _any_ray() and "none", 10, interval=0.2,
                      message=f"no Ray process 10 s after exit: {_any_ray()}")
    assert left == "none"


def test_sigkill_of_serve_loses_no_answered_prediction_and_leaves_no_ray(tmp_path):
    with _serving(tmp_path) as proc:
        with _Clients(_records(20, seed=2)) as clients:
            wait_until(lambda: clients.answered() >= 150, 60, message="requests answered under load")
            proc.kill()  # SIGKILL: no handler, no ray.shutdown
            killed_at = time.monotonic()
            proc.wait()
        ids = list(clients.ids)
        wait_until(lambda: not _any_ray(), 10, interval=0.2, message="the embedded Ray's processes to go")
        print(f"{len(ids)} predictions answered before SIGKILL; no Ray process left after "
              f"{time.monotonic() - killed_at:.1f} s")
    with _serving(tmp_path, register=False):
        accepted = 0
        for k in range(0, len(ids), 1000):
            chunk = ids[k:k + 1000]
            body = json.dumps([{"prediction_id": i, "label": 0} for i in chunk]).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{PORT}/feedback", data=body,
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                counts = json.loads(r.read())
            accepted += counts["accepted"]
            assert counts["unknown_ids"] == 0, counts
        print(f"after the restart /feedback accepted {accepted} of the {len(ids)} ids answered before SIGKILL")
        assert accepted == len(ids) > 0
