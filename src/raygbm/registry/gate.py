"""The champion gate: a new model replaces the champion only if it scores better on the same test rows."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.parquet as pq

from raygbm.data.split import RAW_TEST
from raygbm.errors import DataError
from raygbm.registry.bundle import Bundle
from raygbm.registry.store import ModelRef, Registry, local_bundle
from raygbm.training.direction import better
from raygbm.training.train import RunMeta


@dataclass(frozen=True)
class Gate:
    """The champion gate's verdict on a new model, and why."""

    decision: str  # "champion" or "candidate"
    reason: str


def gate_decision(metric: str, new_value: float, champion_version: str | None, champion_value: float | None,
                  why: str, margin: float) -> Gate:
    """Whether a new model (test ``metric`` = ``new_value``) becomes champion. ``champion_value`` is the
    current champion's metric on the same test rows, None when there is no champion or it cannot be
    scored on this data; ``why`` says which of the two."""
    if champion_version is None:
        return Gate("champion", "first model: " + why)
    if champion_value is None:
        return Gate("candidate", why)
    if better(metric, new_value, champion_value, margin):
        return Gate("champion", f"test {metric} {new_value:.6g} beats champion v{champion_version}'s {champion_value:.6g}")
    return Gate("candidate", f"test {metric} {new_value:.6g} does not beat champion v{champion_version}'s "
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

