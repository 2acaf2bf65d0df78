"""When a retraining starts: drift in M of the last N windows, performance below its bound, a schedule,
or a person. A plain class; it reads what it is given (GET /drift's report, a realized-performance check)
and submits through a callable, so the rules are tested without Ray.

Every trigger has an id that is also the retraining job's submission id (its idempotency key): the same
drift windows, the same block of labelled rows or the same schedule slot never submit twice. A trigger is
recorded once, with what came of it: a job submitted, or skipped (a job running, the cooldown). A failed
submission (the Jobs API unreachable or refusing) is retried with exponential backoff for as long as its
trigger still holds, and the failure is shown (``loop_state.submission_problem``) until one succeeds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from raygbm.config import RetrainConfig
from raygbm.monitoring.loop_state import LoopState

ACTIVE = ("PENDING", "RUNNING")
RETRY_FIRST_S, RETRY_MAX_S = 5.0, 300.0  # a failed submission's backoff: 5 s, doubled each time, at most 5 min


@dataclass(frozen=True)
class Trigger:
    id: str
    kind: str  # "drift" | "performance" | "schedule" | "manual"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drift_trigger(report: dict[str, Any] | None, m: int, n: int) -> Trigger | None:
    """Drift in at least ``m`` of the last ``n`` scored windows (insufficient-data windows do not count)."""
    scored = [w for w in (report or {}).get("windows", []) if w.get("verdict") in ("drift", "no_drift")]
    last = scored[-n:]
    drifted = sum(w["verdict"] == "drift" for w in last)
    if len(last) < m or drifted < m:
        return None
    features = sorted({f for w in last for f in (w.get("drifted_features") or [])})
    detail = f" ({', '.join(features[:6])})" if features else ""
    return Trigger(f"drift-w{last[-1].get('index', len(scored) - 1)}", "drift",
                   f"drift in {drifted} of the last {len(last)} windows{detail}")


def _outside(perf: dict[str, Any], part: str) -> dict[str, str]:
    """``part``'s ("realized" or "estimated") metrics outside their bound, as GET /drift reports them
    (``outside_bounds[part]``: metric names, checked against ``bounds[part][metric]``: ``{"lower": b}``
    for metrics where higher is better, ``{"upper": b}`` for losses): metric → "name value < bound"."""
    values = perf.get(part) if isinstance(perf.get(part), dict) else {}
    bounds = (perf.get("bounds") or {}).get(part) or {}
    names = (perf.get("outside_bounds") or {}).get(part)
    if names is None:  # no verdict given: compare with the bounds
        names = [m for m, b in bounds.items() if isinstance(values.get(m), (int, float)) and isinstance(b, dict)
                 and (values[m] < b["lower"] if "lower" in b else "upper" in b and values[m] > b["upper"])]
    out = {}
    for m in names:
        b = bounds.get(m) or {}
        side, limit = ("<", b["lower"]) if "lower" in b else (">", b.get("upper"))
        v = values.get(m)
        out[m] = f"{m} {v:.4g} {side} {limit:.4g}" if isinstance(v, (int, float)) and limit is not None else m
    return out


def performance_trigger(report: dict[str, Any] | None) -> Trigger | None:
    """The latest two windows with performance in GET /drift both outside a bound on the same metric,
    realized (else estimated). Two, not one: each metric's bound is crossed by chance in
    ``monitor.feedback.bound_rate`` (1%) of the windows of a model performing as on its held-out rows, and
    with several metrics and parts a single window set off retrainings on unchanged traffic
    (``bench/loop.py``, scenario c: two in 22 windows); in two disjoint windows, about the square of that."""
    latest = []
    for w in reversed((report or {}).get("windows", [])):
        perf = w.get("performance")
        if isinstance(perf, dict) and (perf.get("realized") or perf.get("estimated")):
            latest.append(w)
            if len(latest) == 2:
                break
    if len(latest) < 2:
        return None
    last, before = latest
    for part in ("realized", "estimated"):
        now, then = _outside(last["performance"], part), _outside(before["performance"], part)
        both = [m for m in now if m in then]
        if both:
            return Trigger(f"performance-w{last.get('index')}", "performance",
                           f"{part} performance outside its bound in windows {before.get('index')} and "
                           f"{last.get('index')}: {', '.join(now[m] for m in both)}")
    return None


class Controller:
    """Decides on triggers and submits at most one retraining job at a time, outside any cooldown.

    ``submit(trigger)`` submits the job (its submission id derived from ``trigger.id``) and returns its id;
    ``job_status(id)`` answers the Jobs API's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED).
    """

    def __init__(self, cfg: RetrainConfig, state: LoopState, submit: Callable[[Trigger], str],
                 job_status: Callable[[str], str], clock: Callable[[], float] = time.time,
                 labelled: Callable[[], int] | None = None):
        self.cfg, self.state, self.submit, self.job_status, self.clock = cfg, state, submit, job_status, clock
        self.labelled = labelled  # how many labelled rows the store holds (retrain.min_new_labels)
        self.started = clock()

    def refresh_jobs(self) -> list[dict[str, Any]]:
        """Ask the Jobs API about every job not finished yet; returns the active ones."""
        active = []
        for job in self.state.read()["jobs"]:
            if job.get("status") in ACTIVE and job.get("local"):  # run in a person's process: its lock guards it
                active.append(job)
            elif job.get("status") in ACTIVE:
                try:
                    status = self.job_status(job["id"])
                except Exception:  # unknown to this Ray (restarted since): it will not finish
                    status = "LOST"
                if status != job.get("status"):
                    self.state.set_job(job["id"], status=status, updated_at=self.clock())
                if status in ACTIVE:
                    active.append({**job, "status": status})
        return active

    def schedule_trigger(self) -> Trigger | None:
        if self.cfg.every_s is None:
            return None
        jobs = self.state.read()["jobs"]
        last = max([j.get("at", 0.0) for j in jobs] + [self.started])
        due = last + self.cfg.every_s
        if self.clock() < due:
            return None
        return Trigger(f"schedule-{int(due)}", "schedule", f"scheduled every {self.cfg.every_s:g}s")

    def candidates(self, report: dict[str, Any] | None, realized: Trigger | None) -> list[Trigger]:
        """The triggers that hold now, in priority order."""
        out = []
        if self.cfg.drift is not None:
            out.append(drift_trigger(report, self.cfg.drift.m, self.cfg.drift.n))
        if self.cfg.performance_drop is not None:
            out += [realized, performance_trigger(report)]
        out.append(self.schedule_trigger())
        return [t for t in out if t is not None]

    def blocked(self, active: list[dict[str, Any]]) -> str | None:
        """Why no job may start now: one is running, or the cooldown since the last one."""
        if active:
            return f"retraining job {active[0]['id']} is {active[0]['status'].lower()}"
        jobs = self.state.read()["jobs"]
        if jobs:
            until = max(j.get("at", 0.0) for j in jobs) + self.cfg.cooldown_s
            if self.clock() < until:
                return f"cooldown until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}"
            last = max(jobs, key=lambda j: j.get("at", 0.0))
            if self.cfg.min_new_labels and self.labelled is not None and "labelled_rows" in last:
                need = int(last["labelled_rows"]) + self.cfg.min_new_labels - self.labelled()
                if need > 0:
                    return f"waiting for {need} more labelled rows since the last retraining (retrain.min_new_labels)"
        return None

    def tick(self, report: dict[str, Any] | None = None, realized: Trigger | None = None) -> dict[str, Any] | None:
        """Check the triggers once; returns the recorded trigger entry (None when no new trigger held and no
        failed submission was due for another try)."""
        active = self.refresh_jobs()
        seen = {t["id"]: t for t in self.state.read()["triggers"]}
        now = self.clock()
        due = [t for t in self.candidates(report, realized) if t.id not in seen or _retry_due(seen[t.id], now)]
        if not due:
            return None
        return self.fire(due[0], self.blocked(active), seen.get(due[0].id))

    def fire(self, trigger: Trigger, blocked: str | None = None, failed: dict[str, Any] | None = None) -> dict[str, Any]:
        """Submit a job for ``trigger`` unless ``blocked``; record the trigger and the job. ``failed``: the
        trigger's entry from a failed submission, which this try replaces."""
        entry: dict[str, Any] = {"at": failed["at"] if failed else self.clock(), **trigger.to_dict()}
        if blocked:
            entry["outcome"] = f"skipped: {blocked}"
        else:
            try:
                job_id = self.submit(trigger)
            except Exception as exc:  # the Jobs API refused or is unreachable: retried while the trigger holds
                attempts = int(failed.get("attempts", 1)) + 1 if failed else 1
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                entry.update(outcome=f"submission failed: {first}", attempts=attempts, last_try=self.clock(),
                             retry_at=self.clock() + min(RETRY_FIRST_S * 2 ** (attempts - 1), RETRY_MAX_S))
            else:
                entry["outcome"], entry["job"] = "submitted", job_id
                if failed:
                    entry["attempts"] = int(failed.get("attempts", 1)) + 1
                extra = {"labelled_rows": self.labelled()} if self.labelled is not None else {}
                self.state.set_job(job_id, status="PENDING", trigger=trigger.id, kind=trigger.kind,
                                   reason=trigger.reason, at=self.clock(), **extra)
        self.state.set_trigger(entry)
        return entry


def _retry_due(entry: dict[str, Any], now: float) -> bool:
    """A trigger whose submission failed, once its backoff has passed."""
    return str(entry.get("outcome", "")).startswith("submission failed") and now >= float(entry.get("retry_at", 0))
