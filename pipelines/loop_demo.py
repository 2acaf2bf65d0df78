"""The loop's part of `make demo` (called by ``serve_demo`` with the endpoint still up): concept-drifted
traffic is served and labelled (POST /feedback), GET /drift shows drift and the performance drop, the app
is redeployed with ``retrain.enabled`` (its live replicas keep answering), and the loop's controller (the
deployment `raygbm serve` runs with ``retrain.enabled``) submits a retraining Ray Job, the challenger
is promoted or rejected with its reason, and the endpoint ends up serving the winner, while a client keeps
sending requests and counts the failed ones.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable


def _auth() -> dict[str, str]:
    from raygbm.serving.client import endpoint_auth

    return endpoint_auth()  # the endpoint's token: an endpoint with the loop requires it


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=_auth()), timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: Any) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **_auth()})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


class Traffic:
    """A client sending one record at a time until stopped; counts answers and failures (non-200)."""

    def __init__(self, url: str, records: list[dict[str, Any]]):
        self.url, self.records = url, records
        self.sent = self.failed = 0
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self.versions.add(_post(self.url + "/predict", self.records[i % len(self.records)])["model_version"])
            except (urllib.error.URLError, OSError, ValueError):
                self.failed += 1
            self.sent += 1
            i += 1
            time.sleep(0.02)

    def __enter__(self) -> "Traffic":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.thread.join()


def _wait(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every_s)
    raise TimeoutError(f"gave up waiting for {what} after {timeout_s:.0f}s")


def labelled_traffic(url: str, records: list[dict[str, Any]], labels: list[Any]) -> dict[str, Any]:
    """Serve the records, then send every answer's label back (POST /feedback)."""
    ids: list[str] = []
    for i in range(0, len(records), 200):
        ids += [p["prediction_id"] for p in _post(url + "/predict", records[i:i + 200])["predictions"]]
    counts = {"accepted": 0, "unknown_ids": 0, "duplicates": 0}
    for i in range(0, len(ids), 500):
        answer = _post(url + "/feedback", [{"prediction_id": p, "label": y} for p, y in zip(ids[i:i + 500], labels[i:i + 500])])
        for k in counts:
            counts[k] += int(answer.get(k, 0))
    return counts


def print_windows(report: dict[str, Any], metric: str) -> None:
    for w in report.get("windows", [])[-6:]:
        perf = w.get("performance") or {}
        realized = (perf.get("realized") or {}).get(metric)
        bound = ((perf.get("bounds") or {}).get("realized") or {}).get(metric, {}).get("lower")
        shown = f"{metric} {realized:.3f} (lower bound {bound:.3f})" if realized is not None and bound is not None else \
            f"{metric} {realized:.3f}" if realized is not None else "no labels"
        print(f"window {w['index']:3d}: {w['verdict']:5s}  {perf.get('labelled_rows', 0):4d} labelled  {shown}")
    last = (report.get("windows") or [{}])[-1]
    print(f"last window's performance: {json.dumps(last.get('performance'))[:400]}")


def run_loop(cfg: Any, url: str, fields: list[str], rows: int, records_of: Callable[..., list[dict[str, Any]]]) -> None:
    """Concept drift → labels → the loop → the winner served; prints each step."""
    import pyarrow.parquet as pq

    from raygbm.application import deploy
    from raygbm.data.generate import DriftSpec, GeneratorSpec, generate_dataset
    from raygbm.loop.retrain import holdout_metric, labelled_root
    from raygbm.monitoring.labelled import read_labelled, training_rows
    from raygbm.monitoring.loop_state import LoopState
    from raygbm.paths import home
    from raygbm.registry.store import Registry

    with tempfile.TemporaryDirectory() as d:
        step = 50  # spread like the training data (rows 15 s apart)
        # New rows each run: a rerun's traffic must not repeat rows already labelled (holdout rows would
        # then be in the retraining data too).
        seed = int(time.time()) % 100_000
        generate_dataset(Path(d), GeneratorSpec(rows=rows * step, shards=1, seed=seed, drift=DriftSpec(0, shift=1.5, concept=True)))
        table = pq.read_table(d).take(list(range(0, rows * step, step)))
    counts = labelled_traffic(url, records_of(table, fields), table.column(cfg.data.label).to_pylist())
    print(f"served {rows:,} concept-drifted rows (num_0's effect flipped) and sent their labels: {counts}")
    metric = cfg.registry.metric or "roc_auc"
    root, name = labelled_root(cfg.monitor), cfg.registry.model_name
    _wait("the labels to be joined", lambda: (lambda t: t is not None and t.num_rows >= counts["accepted"])(
        read_labelled(root, name)), 60, 0.5)
    print_windows(_get(url + "/drift"), metric)
    champ = Registry(cfg.registry).get()
    served = training_rows(read_labelled(root, name, versions=[champ.version]))
    realized = holdout_metric(Registry(cfg.registry), champ.version, served, metric)
    print(f"champion v{champ.version}: realized {metric} {realized:.4f} on {served.num_rows:,} labelled rows "
          f"(test {metric} {float(champ.tags.get('test_' + metric, 'nan')):.4f})")

    state = LoopState(home(), cfg.registry.model_name)
    before, jobs_before = len(state.read()["decisions"]), len(state.read()["jobs"])
    champion = Registry(cfg.registry).get().version
    clean = records_of(table.slice(0, 200), fields)
    with Traffic(url, clean) as traffic:
        deploy(cfg.model_copy(update={"retrain": cfg.retrain.model_copy(update={"enabled": True})}))
        print("the loop is on: the app now holds its LoopController")
        job = _wait("a retraining job", lambda: next(iter(state.read()["jobs"][jobs_before:]), None), 120, 0.5)
        trigger = next(t for t in state.read()["triggers"] if t.get("job") == job["id"])
        print(f"trigger {trigger['id']} ({trigger['kind']}): {trigger['reason']}")
        print(f"retraining job submitted: {job['id']}")
        decision = _wait("the challenger's decision", lambda: (state.read()["decisions"][before:] or [None])[0], 900)
        print(f"challenger v{decision['version']}: {decision['action']}: {decision['reason']}")
        winner = decision["version"] if decision["action"] == "promoted" else champion
        _wait(f"the endpoint to serve v{winner}", lambda: _get(url + "/model")["version"] == winner,
              cfg.serve.champion_poll_s * 3 + 30)
    print(f"the endpoint serves v{winner}; {traffic.sent:,} requests during the switch, {traffic.failed} failed")
    print(f"the loop's record: GET {url}/retrain (or `raygbm loop status`)")
