"""Fault injection for the tests that prove Ray Train's recovery: a worker killed at a given round, and
rounds slowed so that a test can take a node away while a run is surely still training. Both act only
on a run's first attempt (no checkpoint yet), so the restarted worker group trains at full speed.

A typed record travels in the train loop config; nothing here runs unless a caller asks for it.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import lightgbm as lgb


@dataclass(frozen=True)
class Faults:
    fail_at_iteration: int | None = None  # rank 0's process exits at this round
    round_pause_s: float = 0.0  # every worker sleeps this long after each round

    def to_config(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> "Faults":
        return cls(**(config or {}))

    def callbacks(self, rank: int, flush: Callable[[], None]) -> list[Callable]:
        out: list[Callable] = []
        if self.fail_at_iteration and rank == 0:
            out.append(FailAt(self.fail_at_iteration, flush))
        if self.round_pause_s > 0:
            out.append(PauseEachRound(self.round_pause_s))
        return out


class FailAt:
    """Kill this worker process at a given round.

    It first lets the background reporter hand over what it holds, so the crash comes after at least
    one checkpoint reached the controller (the report queue holds one report: once the last one is
    queued, the one before was consumed), as it would on any run longer than a few seconds.
    """

    order = 50

    def __init__(self, iteration: int, flush: Callable[[], None]):
        self.iteration = iteration
        self.flush = flush

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        if env.iteration + 1 == self.iteration:
            self.flush()
            os._exit(1)


class PauseEachRound:
    order = 60

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        time.sleep(self.seconds)
