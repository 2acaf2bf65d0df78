"""The champion gate, one for registration and the loop: a new model replaces the champion only if it
scores better on the same rows (the test split, or recent labelled served rows)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.parquet as pq

from raygbm.data.split import RAW_TEST
from raygbm.errors import DataError
from raygbm.metrics import better
from raygbm.registry.bundle import Bundle
from raygbm.registry.store import ModelRef, Registry, local_bundle
from raygbm.training.train import RunMeta


@dataclass(frozen=True)
class Gate:
    """The gate's verdict on a new model, and why (with the numbers)."""

    decision: str  # "champion" (it replaces the champion) or "candidate" (kept beside it)
    reason: str

    @property
    def wins(self) -> bool:
        return self.decision == "champion"


def gate_decision(metric: str, new_value: float, champion_version: str | None, champion_value: float | None,
                  why: str, margin: float, on: str = "test", unscorable_wins: bool = False) -> Gate:
    """The one champion gate, for registration (the test split) and the loop (recent labelled rows): a new
    model (``metric`` = ``new_value`` on the rows ``on`` names) replaces the champion only if it beats the champion's
    value on the same rows by more than ``margin``. ``champion_value`` is None when there is no champion or
    it cannot score these rows; ``why`` says which. An unscorable champion is kept at registration (a
    person decides with ``raygbm promote``) and replaced in the loop (``unscorable_wins``: its own served
    rows now hold what it cannot score, such as a class it never saw)."""
    if champion_version is None:
        return Gate("champion", "first model: " + why)
    if champion_value is None:
        return Gate("champion" if unscorable_wins else "candidate", why)
    numbers = f"{on} {metric} {new_value:.6g}"
    if better(metric, new_value, champion_value, margin):
        return Gate("champion", f"{numbers} beats champion v{champion_version}'s {champion_value:.6g}"
                                + (f" by more than {margin:g}" if margin else ""))
    return Gate("candidate", f"{numbers} does not beat champion v{champion_version}'s "
                             f"{champion_value:.6g} by more than {margin:g}")


def score_champion(registry: Registry, meta: RunMeta, metric: str) -> tuple[ModelRef | None, float | None, str]:
    """The current champion's metric on *this* run's test rows, through its own preprocessor."""
    ref = registry.get()
    if ref is None:
        return None, None, "no champion yet"
    _, path = local_bundle(registry, ref.version)
    bundle = Bundle.load(path, ref.tags.get("manifest_sha256"))
    try:
        raw = pq.read_table(meta.run_dir / RAW_TEST)
        return ref, bundle.test_metric(raw, metric), ""
    except DataError as exc:
        return ref, None, f"champion v{ref.version} cannot be scored on this data ({exc})"

