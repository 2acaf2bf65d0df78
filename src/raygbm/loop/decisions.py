"""The loop's decisions on numbers: which labelled rows a retraining may use and which it holds back, whether
a challenger replaces the champion (the registry's one gate, on the holdout), whether a promotion is rolled
back, and whether realized performance calls for retraining. Plain functions, no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raygbm.metrics import better, worse_by
from raygbm.monitoring.labelled import SERVED_AT
from raygbm.registry.gate import gate_decision


@dataclass(frozen=True)
class Decision:
    """One decision of the loop, with the numbers it was made on."""

    action: str  # "promoted" | "rejected" | "rolled_back" | "kept" (a watched promotion that held)
    version: str  # the version decided on (challenger, or the promoted version watched)
    reason: str
    metric: str
    value: float | None  # the decided version's metric
    other_version: str | None  # the champion it was compared with (the previous champion, for a rollback)
    other_value: float | None
    rows: int  # labelled rows the numbers were computed on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recent(table: pa.Table, *, rows: int | None, seconds: float | None, now: float) -> pa.Table:
    """Labelled rows (in serving order) within the recency window: served in the last ``seconds`` and the
    last ``rows`` of those (either unset: no limit)."""
    if seconds is not None:
        table = table.filter(pc.greater_equal(table[SERVED_AT], now - seconds))
    if rows is not None and table.num_rows > rows:
        table = table.slice(table.num_rows - rows)
    return table


def split_holdout(table: pa.Table, share: float, min_rows: int) -> tuple[pa.Table, pa.Table]:
    """(rows to retrain on, the holdout): the holdout is the most recent ``share`` of the rows (in serving
    order), at least ``min_rows``; what is left may be empty."""
    n = table.num_rows
    held = min(n, max(min_rows, int(round(n * share))))
    return table.slice(0, n - held), table.slice(n - held)


def challenger_verdict(metric: str, margin: float, challenger: str, challenger_value: float,
                       champion: str | None, champion_value: float | None, rows: int) -> Decision:
    """The champion gate (``registry.gate``) on the holdout of recent labelled rows, as the loop's record: a
    challenger is promoted only if it beats the champion there by more than ``margin`` (with no champion,
    or one that cannot score these rows, it is promoted)."""
    why = "no champion" if champion is None else f"champion v{champion} cannot be scored on the holdout"
    gate = gate_decision(metric, challenger_value, champion, champion_value, why, margin,
                         on=f"holdout of {rows} recent labelled rows:", unscorable_wins=True)
    return Decision("promoted" if gate.wins else "rejected", challenger, gate.reason, metric, challenger_value,
                    champion, champion_value, rows)


def rollback_verdict(metric: str, margin: float, version: str, value: float, previous: str, previous_value: float,
                     rows: int, windows: int, k: int) -> Decision | None:
    """After ``windows`` complete labelled windows of the promoted ``version`` (of the ``k`` watched): roll
    back when its realized metric on those rows is worse than the previous champion's on the same rows by
    more than ``margin``; ``kept`` once all ``k`` windows held; None while still watching."""
    drop = worse_by(metric, value, previous_value)
    numbers = (f"realized {metric} {value:.6g} vs previous champion v{previous}'s {previous_value:.6g} on the same "
               f"{rows} labelled rows ({windows} of {k} windows)")
    if drop > margin:
        return Decision("rolled_back", version, f"{numbers}: worse by {drop:.4g} > {margin:g}", metric, value,
                        previous, previous_value, rows)
    if windows >= k:
        return Decision("kept", version, f"{numbers}: held", metric, value, previous, previous_value, rows)
    return None


def performance_drop(metric: str, realized: float, expected: float, allowed: float) -> str | None:
    """The reason to retrain when the realized metric is worse than ``expected`` by more than ``allowed``."""
    drop = worse_by(metric, realized, expected)
    if drop > allowed:
        return f"realized {metric} {realized:.6g} is {drop:.4g} worse than the champion's test {expected:.6g} (> {allowed:g})"
    return None


def class_shift(shares: dict[str, float] | None, reference: dict[str, float] | None) -> float | None:
    """Total variation distance between two class-share maps (None for regression)."""
    if shares is None or reference is None:
        return None
    return 0.5 * sum(abs(shares.get(c, 0.0) - reference.get(c, 0.0)) for c in set(shares) | set(reference))


def suspicious_labels(metric: str, model: str, labels: dict[str, Any], trusted: dict[str, Any] | None,
                      max_shift: float) -> str | None:
    """Why a set of labels cannot be the evidence for a promotion or a rollback, or None. ``labels`` and
    ``trusted``: a trusted model's ``Bundle.evidence`` on those labels and on the trusted test split (the
    source's, which traffic cannot reach).

    - Their class shares differ from the trusted split's by more than ``max_shift`` (total variation): a
      world whose classes moved that far needs a person, not an automatic swap.
    - They contradict ``model``: it does no better than a constant prediction on them, though it beats one
      on the trusted split. Labels inverted against the scores do that; a real concept drift that leaves
      the model any skill does not.
    """
    if trusted is None:
        return None
    shift = class_shift(labels.get("shares"), trusted.get("shares"))
    if shift is not None and shift > max_shift:
        return (f"the labels' class shares differ from the trusted test split's by {shift:.3f} (total variation > "
                f"{max_shift:g})")
    if better(metric, trusted["value"], trusted["chance"]) and not better(metric, labels["value"], labels["chance"]):
        return (f"v{model} scores {metric} {labels['value']:.4g} on these {labels['rows']} labels, no better than a "
                f"constant prediction ({labels['chance']:.4g}), though {trusted['value']:.4g} on the trusted test "
                "split: the labels contradict it")
    return None


def unlearned(metric: str, challenger: str, trusted: dict[str, Any] | None) -> str | None:
    """Why a challenger cannot replace the champion whatever the holdout says: on the trusted test split it
    does no better than a constant prediction (it learnt labels that contradict the source)."""
    if trusted is None or better(metric, trusted["value"], trusted["chance"]):
        return None
    return (f"challenger v{challenger} scores {metric} {trusted['value']:.4g} on the trusted test split, no better "
            f"than a constant prediction ({trusted['chance']:.4g})")
