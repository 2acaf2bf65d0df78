"""The search's time budget as a Tune stopper that never ends a search empty-handed."""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune.stopper import Stopper


class ScoredTimeBudget(Stopper):
    """Ends the search once ``budget_s`` has passed and at least one trial has reported a score.

    Tune's own ``time_budget_s`` stops everything at the deadline even when no trial has reported yet (a busy
    machine can spend a short budget starting the first trial's worker), which leaves nothing to pick. Here the
    search then runs on until the first score arrives. As in Tune's ``TimeoutStopper``, the budget counts only
    time the search runs: a restored search spends what the interrupted one left.
    """

    def __init__(self, budget_s: float) -> None:
        self.budget_s = float(budget_s)
        self.left_s = float(budget_s)
        self.scored = False
        self._last: float | None = None  # set on the first stop_all() so that Tune's set-up is not counted

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        score = result.get("score")
        if isinstance(score, (int, float)) and math.isfinite(score):
            self.scored = True
        return False

    def stop_all(self) -> bool:
        now = time.monotonic()
        if self._last is not None:
            self.left_s -= now - self._last
        self._last = now
        return self.left_s <= 0 and self.scored

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A monotonic clock reading means nothing in another process: a restored search starts a new interval.
        state["_last"] = None
        self.__dict__.update(state)
