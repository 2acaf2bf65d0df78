"""The loop's control rules without Ray: the state file, triggers (drift M of N, performance bounds,
schedule), one job at a time, the cooldown, idempotent trigger ids, the holdout gate and rollback verdicts."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pytest

from raygbm.config import AlertAfter, RetrainConfig, load_config
from raygbm.errors import ConfigError
from raygbm.loop.decisions import challenger_verdict, recent, rollback_verdict, split_holdout
from raygbm.loop.jobs import entrypoint, submission_id, write_job_config
from raygbm.loop.triggers import Controller, Trigger, drift_trigger, performance_trigger
from raygbm.monitoring.labelled import SERVED_AT
from raygbm.monitoring.loop_state import LoopState, public


def _windows(*verdicts: str) -> dict:
    return {"windows": [{"index": i, "verdict": v, "drifted_features": ["num_1"] if v == "drift" else []}
                        for i, v in enumerate(verdicts)]}


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Jobs:
    """Stands in for the Jobs API: ids by submission, a status each test sets."""

    def __init__(self):
        self.submitted: list[str] = []
        self.status: dict[str, str] = {}

    def submit(self, trigger: Trigger) -> str:
        job = submission_id("m", trigger.id)
        if job not in self.submitted:
            self.submitted.append(job)
        self.status.setdefault(job, "RUNNING")
        return job


def _controller(tmp_path, clock, jobs, **cfg) -> Controller:
    retrain = RetrainConfig(**{"cooldown_s": 100.0, "performance_drop": None, **cfg})
    return Controller(retrain, LoopState(tmp_path, "m"), jobs.submit, lambda j: jobs.status[j], clock)


def test_drift_trigger_needs_m_of_the_last_n_scored_windows():
    assert drift_trigger(_windows("drift", "drift", "no_drift", "no_drift", "no_drift"), 2, 3) is None
    t = drift_trigger(_windows("no_drift", "drift", "insufficient_data", "drift", "no_drift", "drift"), 3, 4)
    assert t is not None and t.kind == "drift" and t.id == "drift-w5"
    assert "3 of the last 4" in t.reason and "num_1" in t.reason
    assert drift_trigger(_windows("drift", "drift"), 3, 5) is None  # fewer scored windows than m
    assert drift_trigger(None, 1, 1) is None


def _perf(index: int, realized: dict | None = None, estimated: dict | None = None, bounds: dict | None = None,
          outside: dict | None = None) -> dict:
    perf = {"labelled_rows": 500 if realized else 0, "realized": realized or {}, "estimated": estimated or {},
            "bounds": bounds or {}}
    if outside is not None:
        perf["outside_bounds"] = outside
    return {"index": index, "performance": perf}


def test_performance_trigger_needs_the_same_metric_outside_its_bound_in_the_latest_two_windows():
    low_auc = {"realized": {"roc_auc": {"lower": 0.8}, "log_loss": {"upper": 0.6}}}
    report = {"windows": [
        _perf(0, {"roc_auc": 0.70, "log_loss": 0.4}, bounds=low_auc),
        _perf(1, estimated={"roc_auc": 0.9}, bounds={"estimated": {"roc_auc": {"lower": 0.8}}},
              outside={"realized": [], "estimated": []}),
        {"index": 2, "performance": {"labelled_rows": 0, "realized": {}, "estimated": {}}},  # no performance
    ]}
    assert performance_trigger(report) is None  # window 0 below its bound, window 1 within
    assert performance_trigger({"windows": report["windows"][:1]}) is None  # one window is not enough
    report["windows"][1] = _perf(1, {"roc_auc": 0.75, "log_loss": 0.7}, bounds=low_auc)  # compared with the bounds
    t = performance_trigger(report)
    assert t is not None and t.id == "performance-w1" and t.reason.startswith("realized") and "windows 0 and 1" in t.reason
    assert t.reason.endswith("roc_auc 0.75 < 0.8") and "log_loss" not in t.reason  # log_loss: window 1 only
    # A different metric in each window: no trigger.
    report["windows"][0] = _perf(0, {"roc_auc": 0.85, "log_loss": 0.7}, bounds=low_auc)
    report["windows"][1] = _perf(1, {"roc_auc": 0.75, "log_loss": 0.4}, bounds=low_auc)
    assert performance_trigger(report) is None
    # Estimated performance (no labels yet), as the monitor's verdicts give it.
    est = {"estimated": {"roc_auc": {"lower": 0.8}}}
    report["windows"] = [_perf(3, estimated={"roc_auc": 0.7}, bounds=est, outside={"estimated": ["roc_auc"]}),
                         _perf(4, estimated={"roc_auc": 0.72}, bounds=est, outside={"estimated": ["roc_auc"]})]
    t = performance_trigger(report)
    assert t is not None and t.id == "performance-w4" and "estimated" in t.reason and "roc_auc 0.72 < 0.8" in t.reason


def test_a_new_retraining_waits_for_min_new_labels_since_the_last_one(tmp_path):
    """The default spacing is by evidence: after a job, no automatic one until retrain.min_new_labels more
    labelled rows have arrived, whatever the clock says (cooldown_s defaults to 0)."""
    clock, jobs, store = Clock(), Jobs(), {"rows": 700}
    retrain = RetrainConfig(drift=AlertAfter(m=1, n=1), performance_drop=None)
    assert retrain.cooldown_s == 0 and retrain.min_new_labels == 1000
    c = Controller(retrain, LoopState(tmp_path, "m"), jobs.submit, lambda j: jobs.status[j], clock,
                   labelled=lambda: store["rows"])
    first = c.tick(_windows("drift"))
    assert first["outcome"] == "submitted"
    assert LoopState(tmp_path, "m").read()["jobs"][0]["labelled_rows"] == 700
    jobs.status[first["job"]] = "SUCCEEDED"
    clock.t += 10 * 86_400
    store["rows"] = 1699
    waiting = c.tick(_windows("drift", "drift"))
    assert waiting["outcome"] == "skipped: waiting for 1 more labelled rows since the last retraining " \
                                 "(retrain.min_new_labels)" and len(jobs.submitted) == 1
    store["rows"] = 1700
    assert c.tick(_windows("drift", "drift", "drift"))["outcome"] == "submitted" and len(jobs.submitted) == 2


def test_one_job_at_a_time_then_cooldown_then_a_new_trigger(tmp_path):
    clock, jobs = Clock(), Jobs()
    c = _controller(tmp_path, clock, jobs, drift=AlertAfter(m=2, n=3))
    first = c.tick(_windows("drift", "drift"))
    assert first["outcome"] == "submitted" and jobs.submitted == [first["job"]]
    assert c.tick(_windows("drift", "drift")) is None  # the same trigger id: nothing new, nothing submitted
    skipped = c.tick(_windows("drift", "drift", "drift"))
    assert skipped["outcome"].startswith("skipped: retraining job") and len(jobs.submitted) == 1
    jobs.status[first["job"]] = "SUCCEEDED"
    clock.t += 50
    cooling = c.tick(_windows("drift", "drift", "drift", "drift"))
    assert cooling["outcome"].startswith("skipped: cooldown until") and len(jobs.submitted) == 1
    clock.t += 51
    again = c.tick(_windows("drift", "drift", "drift", "drift", "drift"))
    assert again["outcome"] == "submitted" and len(jobs.submitted) == 2
    doc = LoopState(tmp_path, "m").read()
    assert [t["outcome"].split(":")[0] for t in doc["triggers"]] == ["submitted", "skipped", "skipped", "submitted"]
    assert doc["jobs"][0]["status"] == "SUCCEEDED" and doc["jobs"][1]["status"] == "PENDING"
    assert all(j["reason"].startswith("drift in") for j in doc["jobs"])


def test_same_trigger_from_two_controllers_submits_one_job(tmp_path):
    clock, jobs = Clock(), Jobs()
    a = _controller(tmp_path, clock, jobs, drift=AlertAfter(m=1, n=1))
    b = _controller(tmp_path, clock, jobs, drift=AlertAfter(m=1, n=1))
    a.tick(_windows("drift"))
    assert b.tick(_windows("drift")) is None
    assert len(jobs.submitted) == 1


def test_schedule_and_realized_triggers(tmp_path):
    clock, jobs = Clock(), Jobs()
    c = _controller(tmp_path, clock, jobs, drift=None, every_s=60.0, cooldown_s=0.0, performance_drop=0.05)
    assert c.tick() is None
    clock.t += 60
    t = c.tick()
    assert t["kind"] == "schedule" and t["outcome"] == "submitted"
    jobs.status[t["job"]] = "FAILED"
    realized = Trigger("performance-v1-r3", "performance", "worse")
    assert c.tick(None, realized)["id"] == "performance-v1-r3"  # the realized check comes before the schedule
    assert c.tick(None, realized) is None


def test_a_job_unknown_to_the_jobs_api_does_not_block_forever(tmp_path):
    clock, jobs = Clock(), Jobs()
    state = LoopState(tmp_path, "m")
    state.set_job("raygbm-retrain-m-old", status="RUNNING", at=clock.t - 10_000)
    c = _controller(tmp_path, clock, jobs, drift=AlertAfter(m=1, n=1))
    entry = c.tick(_windows("drift"))  # the Ray that ran it restarted: its status lookup raises
    assert entry["outcome"] == "submitted" and state.read()["jobs"][0]["status"] == "LOST"


def test_failed_submission_is_recorded_retried_with_backoff_and_shown(tmp_path):
    clock, answers = Clock(), ["refuse", "refuse", "ok"]

    def submit(t):
        if answers.pop(0) == "refuse":
            raise RuntimeError("Request failed with status code 500: No available agent to submit job\nmore")
        return "raygbm-retrain-m-" + t.id

    state = LoopState(tmp_path, "m")
    c = Controller(RetrainConfig(drift=AlertAfter(m=1, n=1)), state, submit, lambda j: "RUNNING", clock=clock)
    entry = c.tick(_windows("drift"))
    assert entry["outcome"] == "submission failed: Request failed with status code 500: No available agent to submit job"
    assert entry["attempts"] == 1 and entry["retry_at"] == clock.t + 5 and state.read()["jobs"] == []
    problem = public(state.read())["problem"]
    assert problem.startswith(f"trigger {entry['id']}: submission failed: ") and "attempt 1" in problem
    assert c.tick(_windows("drift")) is None  # within the backoff: no new try
    clock.t += 5
    again = c.tick(_windows("drift"))
    assert again["attempts"] == 2 and again["retry_at"] == clock.t + 10  # the backoff doubles
    clock.t += 10
    assert c.tick(_windows("no_drift")) is None  # the trigger no longer holds: it expires untried
    done = c.tick(_windows("drift"))
    assert done["outcome"] == "submitted" and done["attempts"] == 3
    doc = state.read()
    assert len(doc["triggers"]) == 1 and public(doc)["problem"] is None and [j["status"] for j in doc["jobs"]] == ["PENDING"]


def test_state_updates_are_locked_and_staged(tmp_path):
    state = LoopState(tmp_path, "m")
    threads = [threading.Thread(target=lambda i=i: state.append("decisions", {"version": str(i)})) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    doc = json.loads(state.path.read_text())
    assert sorted(int(d["version"]) for d in doc["decisions"]) == list(range(20))
    assert not list(state.dir.glob(".*.tmp"))
    state.path.write_text("{not json")
    assert public(state.read()) == {"problem": None, "triggers": [], "jobs": [], "decisions": [], "watch": None}


def test_holdout_is_the_most_recent_rows_and_the_window_bounds_age_and_count():
    t = pa.table({SERVED_AT: [float(i) for i in range(100)], "x": list(range(100))})
    rows, holdout = split_holdout(t, 0.3, 10)
    assert rows["x"].to_pylist() == list(range(70)) and holdout["x"].to_pylist() == list(range(70, 100))
    assert split_holdout(t.slice(0, 20), 0.3, 10)[1].num_rows == 10  # at least min_rows
    assert recent(t, rows=None, seconds=10, now=99.0)["x"].to_pylist() == list(range(89, 100))
    assert recent(t, rows=5, seconds=None, now=0)["x"].to_pylist() == list(range(95, 100))


def test_challenger_gate_by_margin_both_directions():
    d = challenger_verdict("roc_auc", 0.01, "2", 0.86, "1", 0.80, 300)
    assert d.action == "promoted" and "0.86" in d.reason and "0.8" in d.reason and d.other_version == "1"
    d = challenger_verdict("roc_auc", 0.01, "2", 0.805, "1", 0.80, 300)
    assert d.action == "rejected" and "by more than 0.01" in d.reason
    assert challenger_verdict("rmse", 0.0, "2", 1.0, "1", 1.5, 300).action == "promoted"
    assert challenger_verdict("rmse", 0.0, "2", 1.5, "1", 1.0, 300).action == "rejected"
    assert challenger_verdict("roc_auc", 0.0, "1", 0.7, None, None, 300).action == "promoted"
    # The one gate keeps an unscorable champion at registration; the loop replaces it.
    unscorable = challenger_verdict("roc_auc", 0.0, "2", 0.7, "1", None, 300)
    assert unscorable.action == "promoted" and "cannot be scored on the holdout" in unscorable.reason


def test_rollback_verdicts():
    assert rollback_verdict("roc_auc", 0.02, "2", 0.79, "1", 0.80, 200, 1, 3) is None  # within the margin, watching
    d = rollback_verdict("roc_auc", 0.02, "2", 0.70, "1", 0.80, 200, 1, 3)
    assert d.action == "rolled_back" and d.version == "2" and d.other_version == "1" and "worse by 0.1" in d.reason
    assert rollback_verdict("roc_auc", 0.02, "2", 0.79, "1", 0.80, 600, 3, 3).action == "kept"
    assert rollback_verdict("log_loss", 0.02, "2", 0.60, "1", 0.50, 200, 1, 3).action == "rolled_back"


def test_retrain_config_and_the_job_command(tmp_path):
    cfg = load_config(None, ["retrain.drift={m: 2, n: 4}", "retrain.every_s=3600"], {"data.source": "/d", "data.label": "y"})
    assert cfg.retrain.drift.m == 2 and cfg.retrain.every_s == 3600
    with pytest.raises(ConfigError, match="retrain.holdout_share"):
        load_config(None, ["retrain.holdout_share=1.5"])
    with pytest.raises(ConfigError, match="retrain.drift"):
        load_config(None, ["retrain.drift={m: 5, n: 4}"])
    path = write_job_config(cfg, tmp_path)
    assert load_config(path) == cfg  # the job retrains exactly as configured
    cmd = entrypoint(path, Trigger("drift-w3", "drift", "drift in 3 of 4 windows (num_1)"))
    assert "raygbm.cli retrain --config" in cmd and "--trigger drift-w3" in cmd and "'drift in 3 of 4 windows (num_1)'" in cmd
    assert submission_id("my model", "drift-w3") == "raygbm-retrain-my-model-drift-w3"


def test_the_loops_news_are_new_trigger_outcomes_and_decisions_once_each():
    from raygbm.loop.watch import changes

    before = {"triggers": [{"id": "drift-w4", "reason": "drift in 3 of the last 5 windows", "outcome": "submitted"}],
              "decisions": []}
    failed = {"id": "performance-w9", "reason": "realized roc_auc 0.6", "outcome": "submission failed: refused",
              "attempts": 1, "retry_at": 0}
    after = {"triggers": [*before["triggers"], failed],
             "decisions": [{"version": "3", "action": "promoted", "reason": "holdout roc_auc 0.81 beats 0.64"}]}
    assert changes(before, after) == [
        "loop: cannot submit the retraining: trigger performance-w9: submission failed: refused (attempt 1; next try "
        "after 1970-01-01T00:00:00Z)",
        "loop: v3 promoted: holdout roc_auc 0.81 beats 0.64"]
    assert changes(after, after) == []
    retried = {**after, "triggers": [before["triggers"][0], {**failed, "outcome": "submitted", "attempts": 2}]}
    assert changes(after, retried) == ["loop: trigger performance-w9 (realized roc_auc 0.6): submitted"]


def test_labels_that_contradict_the_champion_or_move_the_classes_are_not_evidence():
    from raygbm.loop.decisions import class_shift, suspicious_labels, unlearned

    trusted = {"value": 0.83, "chance": 0.5, "shares": {"0": 0.7, "1": 0.3}, "rows": 3000}
    honest_drift = {"value": 0.74, "chance": 0.5, "shares": {"0": 0.66, "1": 0.34}, "rows": 600}  # still skilled
    inverted = {"value": 0.21, "chance": 0.5, "shares": {"0": 0.62, "1": 0.38}, "rows": 600}
    flipped_prior = {"value": 0.8, "chance": 0.5, "shares": {"0": 0.3, "1": 0.7}, "rows": 600}
    assert suspicious_labels("roc_auc", "1", honest_drift, trusted, 0.3) is None
    why = suspicious_labels("roc_auc", "1", inverted, trusted, 0.3)
    assert why and "no better than a constant prediction (0.5)" in why and "contradict" in why
    assert "total variation > 0.3" in suspicious_labels("roc_auc", "1", flipped_prior, trusted, 0.3)
    assert class_shift(flipped_prior["shares"], trusted["shares"]) == pytest.approx(0.4)
    assert suspicious_labels("roc_auc", "1", inverted, None, 0.3) is None  # no trusted split: nothing to hold to
    # Losses: lower is better; a model no better than the prior's log loss on labels it beat on the trusted split.
    assert suspicious_labels("log_loss", "1", {"value": 0.9, "chance": 0.69, "shares": None, "rows": 600},
                             {"value": 0.4, "chance": 0.69, "shares": None, "rows": 3000}, 0.3)
    assert unlearned("roc_auc", "4", {"value": 0.3, "chance": 0.5, "shares": None, "rows": 3000})
    assert unlearned("roc_auc", "4", {"value": 0.7, "chance": 0.5, "shares": None, "rows": 3000}) is None
