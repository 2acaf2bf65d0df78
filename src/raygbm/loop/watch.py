"""What the loop did, as lines for the person running ``raygbm serve``: the controller runs in the app
(``loop.service``), so the CLI follows its state file and prints each new trigger outcome and decision.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from raygbm.monitoring.loop_state import LoopState, submission_problem


def _key(trigger: dict[str, Any]) -> tuple[Any, ...]:
    return trigger.get("id"), trigger.get("outcome"), trigger.get("attempts")


def trigger_line(t: dict[str, Any]) -> str:
    """A recorded trigger as one line: what came of it, or why its retraining cannot be submitted."""
    if str(t.get("outcome", "")).startswith("submission failed"):
        return f"loop: cannot submit the retraining: {submission_problem({'triggers': [t]})}"
    return f"loop: trigger {t.get('id')} ({t.get('reason')}): {t.get('outcome')}"


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The lines for what ``after`` records and ``before`` did not: triggers (new, or a retried submission's
    new outcome) and decisions."""
    seen = {_key(t) for t in before.get("triggers") or []}
    lines = [trigger_line(t) for t in after.get("triggers") or [] if _key(t) not in seen]
    old = len(before.get("decisions") or [])
    for d in (after.get("decisions") or [])[old:]:
        lines.append(f"loop: v{d.get('version')} {d.get('action')}: {d.get('reason')}")
    return lines


def follow(state: LoopState, say: Callable[[str], None], every_s: float = 1.0) -> threading.Event:
    """Print the loop's news from now on, in a daemon thread; set the returned event to stop."""
    stop = threading.Event()

    def run() -> None:
        before = state.read()
        while not stop.wait(every_s):
            after = state.read()
            for line in changes(before, after):
                say(line)
            before = after

    threading.Thread(target=run, name="raygbm-loop-watch", daemon=True).start()
    return stop
