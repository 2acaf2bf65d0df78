"""Rollback of a promotion that does worse on live traffic than the champion it replaced.

After the loop promotes a version (``state.watch``), the labelled rows that version served are cut into
windows of ``retrain.rollback_window_rows``. At each completed window (of the first K), the promoted version
and the previous champion are scored on the same rows (those the promoted version served, through each
model's own preprocessor); when the promoted one is worse by more than ``retrain.rollback_margin`` the
alias moves back. After K windows that held, the watch ends.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from raygbm.config import RegistryConfig, RetrainConfig
from raygbm.loop.decisions import Decision, rollback_verdict, suspicious_labels
from raygbm.loop.retrain import evidence, holdout_metric, record_decision
from raygbm.monitoring.labelled import read_labelled, training_rows
from raygbm.monitoring.loop_state import LoopState
from raygbm.registry.store import Registry


def check_rollback(cfg: RetrainConfig, registry_cfg: RegistryConfig, state: LoopState, labelled_root: Path,
                   now: float | None = None) -> Decision | None:
    """Check the watched promotion once; rolls back (alias, MLflow, state) when the verdict says so.
    Returns the verdict reached at a new window (None: nothing watched, or no new complete window)."""
    watch = state.read().get("watch")
    if not watch or watch.get("status") != "watching":
        return None
    version, previous = str(watch["version"]), str(watch["previous"])
    rows = read_labelled(labelled_root, registry_cfg.model_name, versions=[version])
    windows = min((rows.num_rows if rows is not None else 0) // cfg.rollback_window_rows, cfg.rollback_windows)
    if windows <= int(watch.get("windows", 0)):
        return None
    raw = training_rows(rows.slice(0, windows * cfg.rollback_window_rows))
    registry = Registry(registry_cfg)
    metric = registry.get(version).gate_metric
    value = holdout_metric(registry, version, raw, metric)
    before = holdout_metric(registry, previous, raw, metric)
    if value is None or before is None:
        _end_watch(state, watch, windows, "unscorable", now)
        return None
    verdict = rollback_verdict(metric, cfg.rollback_margin, version, value, previous, before, raw.num_rows,
                               windows, cfg.rollback_windows)
    if verdict is None:
        state.set_watch({**watch, "windows": windows, f"last_{metric}": value, f"previous_{metric}": before})
        return None
    if verdict.action == "rolled_back":
        # The same evidence as a promotion: labels that contradict the previous champion too (against its
        # skill on the trusted split, kept with the watch) roll nothing back.
        on_labels = evidence(registry, previous, raw, metric)
        why = suspicious_labels(metric, previous, on_labels, watch.get("trusted"), cfg.max_label_shift) if on_labels else None
        if why:
            kept = Decision("kept", version, f"rollback refused: suspicious labels: {why}", metric, value, previous,
                            before, raw.num_rows)
            record_decision(registry, state, kept, registry.get(version))
            _end_watch(state, watch, windows, "suspicious", now, kept.reason)
            return kept
        champion = registry.get()
        if champion is not None and champion.version == version:  # not moved by a person meanwhile
            registry.promote(registry.get(previous))
        registry.set_tags(registry.get(version), {"decision": "candidate"})
        record_decision(registry, state, verdict, registry.get(version))
    _end_watch(state, watch, windows, verdict.action, now, verdict.reason)
    return verdict


def _end_watch(state: LoopState, watch: dict[str, Any], windows: int, status: str, now: float | None,
               reason: str | None = None) -> None:
    state.set_watch({**watch, "windows": windows, "status": status, "ended_at": now or time.time(),
                     **({"reason": reason} if reason else {})})
