"""`GET /drift` on served traffic: windows flag only the shifted features, and survive a crash of the monitor
actor."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pyarrow.parquet as pq

from raygbm.data.generate import DRIFT_SHIFTED_CATEGORICAL, DRIFT_SHIFTED_NUMERIC, DriftSpec
from raygbm.data.split import RAW_TEST
from raygbm.monitoring.actor import MONITOR_ACTOR
from raygbm.monitoring.report import drift_report_html
from raygbm.paths import home
from tests.conftest import make_shards
from tests.corpora import records_of
from tests.helpers import wait_until
from tests.integration.serve.endpoint import drift_when, http_get, http_post, serving


def test_drift_windows_flag_only_the_shifted_features(served):
    meta, _, tmp = served
    serving("1")
    _, info = http_get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    raw = pq.read_table(meta.run_dir / RAW_TEST)
    before = http_get("/drift")[1]
    # Rows earlier tests sent (hostile corpora repeat one record) would share the first window: close that
    # window with clean rows first, and judge only windows made of this test's rows.
    fill = (500 - before["open_window_rows"]) % 500
    if fill:
        assert http_post("/predict", json.dumps(records_of(raw.slice(1, fill), fields)).encode())[0] == 200
        before = drift_when(lambda r: len(r["windows"]) > len(before["windows"]) and r["open_window_rows"] == 0)
    start = len(before["windows"])
    n = 1000
    clean = records_of(raw.take(list(range(0, raw.num_rows, raw.num_rows // n))[:n]), fields)  # all ten days
    for i in range(0, len(clean), 250):
        assert http_post("/predict", json.dumps(clean[i:i + 250]).encode())[0] == 200
    # Drifted rows spread over the same ten days as training (rows are 15 s apart), so only the drift
    # the generator injects differs, not the hour of day.
    drifted_dir = make_shards(tmp, rows=60_000, shards=1, seed=8, drift=DriftSpec(0, shift=1.5))
    drifted = records_of(pq.read_table(drifted_dir).take(list(range(0, 60_000, 60))), fields)
    for i in range(0, len(drifted), 250):
        assert http_post("/predict", json.dumps(drifted[i:i + 250]).encode())[0] == 200
    report = drift_when(lambda r: len(r["windows"]) >= start + 4)
    windows = report["windows"][start:start + 4]
    assert [w["verdict"] for w in windows] == ["ok", "ok", "drift", "drift"], [w["drifted_features"] for w in windows]
    expected = set(DRIFT_SHIFTED_NUMERIC + DRIFT_SHIFTED_CATEGORICAL)
    for w in windows[2:]:
        assert set(w["drifted_features"]) == expected
        assert w["rows"] == 500 and w["first_ts"] <= w["last_ts"] and w["model_version"] == "1"
        assert w["features"]["num_1"]["statistic"] == "psi" and w["features"]["num_1"]["threshold_source"] == "calibrated"
    # Thresholds calibrated at registration for 1000-row windows, recalibrated at deploy for these 500.
    assert report["thresholds"]["mode"] == "calibrated" and report["thresholds"]["calibrated_at"] == "deploy"
    assert report["thresholds"]["window_size"] == 500 and report["thresholds"]["held_out"]["source"]["prediction"] == "test"
    for w in windows:
        assert w["prediction"]["threshold_source"] == "calibrated" and 0.01 <= w["prediction"]["threshold"] < 0.2
        assert 0.01 <= w["features"]["num_1"]["threshold"] < 0.2
    assert report["dropped_batches"] == 0
    # What the report shows in place of codes, and the score's cut-off: the endpoint adds them to the reference.
    cat0 = report["reference"]["features"]["cat_0"]
    assert len(cat0["labels"]) == len(cat0["codes"]) and "cat_0_000" in cat0["labels"]
    assert set(cat0["labels"]) <= {f"cat_0_{j:03d}" for j in range(8)} | {"(missing or unseen)"}
    assert 0 < report["reference"]["prediction"]["decision_threshold"] < 1
    page = drift_report_html(report)
    assert ">cat_0_000<" in page and "decision threshold" in page and "chi-square p-value" in page

    # The same verdicts reach Prometheus through Ray's metrics export (reported every few seconds).
    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])

    def flags() -> tuple[str, list[str]] | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        found = [ln for ln in text.splitlines() if ln.startswith("ray_raygbm_drift_flag{") and 'model_version="1"' in ln]
        drifted = any('feature="num_1"' in ln and ln.endswith(" 1.0") for ln in found)
        steady = any('feature="num_5"' in ln and ln.endswith(" 0.0") for ln in found)
        return (text, found) if drifted and steady else None

    # Both verdicts of the last window: a monitor process an earlier test crashed may still export its own
    # last values for a while, so one flag alone could be that process's.
    text, _ = wait_until(flags, 60, interval=1, message="num_1's drift flag and num_5's steady flag in Prometheus")
    assert "ray_raygbm_monitor_rows_total" in text


def test_drift_windows_survive_a_monitor_crash(served):
    import ray

    meta, _, _ = served
    serving("1")
    _, info = http_get("/model")
    fields = list(info["request_schema"]["oneOf"][0]["properties"])
    raw = pq.read_table(meta.run_dir / RAW_TEST)
    before = http_get("/drift")[1]
    n = 500 + 500 - before["open_window_rows"] - 200  # one more closed window and 300 rows in the open one
    assert http_post("/predict", json.dumps(records_of(raw.slice(0, n), fields)).encode())[0] == 200
    before = drift_when(lambda r: r["open_window_rows"] == 300)
    assert before["logging"] and before["rows_seen"] > 1000
    # No server path in what GET /drift shows, even with the token off.
    assert str(home()) not in json.dumps(before) and '"/' not in json.dumps(before), json.dumps(before)[:300]
    # A crash of the monitor's process: Ray restarts the actor, which reloads its log.
    ray.kill(ray.get_actor(MONITOR_ACTOR, namespace="raygbm"), no_restart=False)
    after = drift_when(lambda r: r.get("restored_rows") == 300, 60)  # 503 while Ray restarts it
    assert after["windows"] == before["windows"] and after["open_window_rows"] == 300
    assert after["rows_seen"] == before["rows_seen"]
    # And it keeps counting: the restored open window closes after 200 more rows.
    assert http_post("/predict", json.dumps(records_of(raw.slice(n, 200), fields)).encode())[0] == 200
    report = drift_when(lambda r: len(r["windows"]) > len(before["windows"]))
    assert report["windows"][-1]["rows"] == 500 and report["windows"][-1]["index"] == before["windows"][-1]["index"] + 1
