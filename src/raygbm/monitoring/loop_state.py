"""The loop's record: every trigger, retraining job and decision, in one JSON file per model name.

``<RAYGBM_HOME>/loop/<model name>/state.json`` holds ``{"triggers": [...], "jobs": [...], "decisions":
[...], "watch": {...} | null}``; ``GET /retrain`` and ``raygbm loop status`` show it. The controller (in
``raygbm serve``) and a retraining job (another process, maybe another time) both update it, so every
update holds an exclusive lock on a file beside it and writes a staged copy renamed over the old one:
readers never see half a file and no update is lost.
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

KEEP = 200  # entries kept per list (the oldest go first)
LISTS = ("triggers", "jobs", "decisions")


def loop_dir(home: str | Path, name: str) -> Path:
    return Path(home) / "loop" / name


def empty() -> dict[str, Any]:
    return {"triggers": [], "jobs": [], "decisions": [], "watch": None}


class LoopState:
    """The state file of one model name under one home."""

    def __init__(self, home: str | Path, name: str):
        self.dir = loop_dir(home, name)
        self.path = self.dir / "state.json"

    def read(self) -> dict[str, Any]:
        """The whole record (an empty one before the first update, or if the file is unreadable)."""
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return empty()
        if not isinstance(doc, dict):
            return empty()
        return {**empty(), **doc}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Apply ``change`` to the record under the lock and write it back; returns what ``change`` returned."""
        with self._locked():
            doc = self.read()
            out = change(doc)
            for key in LISTS:
                doc[key] = doc[key][-KEEP:]
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(doc, indent=1, default=str))
            tmp.replace(self.path)
            return out

    def append(self, kind: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Add an entry (stamped with ``at``, epoch seconds, unless it has one) to ``triggers``, ``jobs`` or
        ``decisions``."""
        entry = {"at": time.time(), **entry}
        self.update(lambda doc: doc[kind].append(entry))
        return entry

    def set_job(self, job_id: str, **fields: Any) -> None:
        """Update the job entry with this id (added if absent)."""
        def change(doc: dict[str, Any]) -> None:
            for job in doc["jobs"]:
                if job.get("id") == job_id:
                    job.update(fields)
                    return
            doc["jobs"].append({"id": job_id, "at": time.time(), **fields})

        self.update(change)

    def set_trigger(self, entry: dict[str, Any]) -> None:
        """Record a trigger's entry, replacing the one with its id (a retried submission) or added."""
        def change(doc: dict[str, Any]) -> None:
            for i, old in enumerate(doc["triggers"]):
                if old.get("id") == entry["id"]:
                    doc["triggers"][i] = entry
                    return
            doc["triggers"].append(entry)

        self.update(change)

    def set_watch(self, watch: dict[str, Any] | None) -> None:
        """The promotion under watch for a rollback (None: nothing watched)."""
        self.update(lambda doc: doc.__setitem__("watch", watch))


def submission_problem(doc: dict[str, Any]) -> str | None:
    """Why the loop cannot submit its retraining, when the latest trigger's submission failed (retried with
    backoff while the trigger holds): what a person looking at the loop must see first."""
    last = (doc.get("triggers") or [None])[-1]
    outcome = str((last or {}).get("outcome", ""))
    if not outcome.startswith("submission failed"):
        return None
    return (f"trigger {last['id']}: {outcome} (attempt {last.get('attempts', 1)}; next try after "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(last.get('retry_at', 0)))})")


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /retrain`` and ``raygbm loop status`` show: the three lists, the watch, and the problem
    that keeps the loop from submitting (null when none)."""
    return {"problem": submission_problem(doc), **{k: doc.get(k) for k in (*LISTS, "watch")}}
