"""A retraining run: the original sources plus recent labelled traffic through the same pipeline, a
challenger registered as a candidate, then gated against the champion on recent labelled rows neither
model trained on, and promoted only if better by ``registry.margin``.

The labelled rows to retrain on are staged as one Parquet shard in the run's own folder (conformed to the
source's schema) and read with the source's shards (``data.extra_shards``), so they pass the same
validation, quarantine and freshly fitted preprocessing. Ray must be initialised by the entry point.
"""

from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from raygbm.config import MonitorConfig, PipelineConfig, RegistryConfig
from raygbm.errors import DataError, NotPromoted
from raygbm.loop.decisions import Decision, challenger_verdict, recent, split_holdout, suspicious_labels, unlearned
from raygbm.monitoring.labelled import SERVED_AT, read_labelled, training_rows
from raygbm.monitoring.loop_state import LoopState
from raygbm.paths import home
from raygbm.progress import Progress, no_progress
from raygbm.registry.bundle import Bundle
from raygbm.registry.store import ModelRef, Registry, local_bundle

LOCK = "retrain.lock"


class RetrainBusy(NotPromoted):
    """Another retraining of the same model is running (one at a time): no new champion, exit code 4."""

    label = "error"


@dataclass
class RetrainResult:
    """What a retraining came to: the registered challenger, the loop's decision and the data it used."""

    version: str
    decision: Decision
    train_rows: int  # labelled rows added to the retraining data
    holdout_rows: int
    data_dir: Path  # where the labelled shard was staged

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "decision": self.decision.to_dict(), "train_rows": self.train_rows,
                "holdout_rows": self.holdout_rows, "data_dir": str(self.data_dir)}


def labelled_root(monitor: MonitorConfig) -> Path:
    """Where the labelled traffic lives: the monitor's log folder (``labelled.labelled_dir`` below it)."""
    return Path(monitor.log_dir).expanduser() if monitor.log_dir else home() / "monitor"


@contextmanager
def one_at_a_time(state: LoopState) -> Iterator[None]:
    """An exclusive, non-blocking lock per model name: a second retraining fails at once."""
    state.dir.mkdir(parents=True, exist_ok=True)
    with open(state.dir / LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainBusy(f"a retraining of {state.dir.name!r} is already running") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def conform(rows: pa.Table, schema: pa.Schema, time_column: str | None) -> pa.Table:
    """Labelled rows in the source's schema: its columns in its order and types; a column the requests did
    not carry (an id, a dropped column) is null, but a time split's column is the serving time."""
    cols = []
    for f in schema:
        if f.name in rows.column_names:
            cols.append(rows[f.name].cast(f.type))
        elif f.name == time_column and SERVED_AT in rows.column_names:
            micros = pa.array((rows[SERVED_AT].to_numpy(zero_copy_only=False) * 1e6).astype("int64"))
            cols.append(micros.cast(pa.timestamp("us")).cast(f.type))
        else:
            cols.append(pa.nulls(rows.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def stage_data(cfg: PipelineConfig, rows: pa.Table, folder: Path) -> PipelineConfig:
    """Write the labelled rows to retrain on as a shard in ``folder`` (in the source's schema when there is
    a source) and return the run's config: the source plus that shard (``retrain.include_source``), or that
    shard alone."""
    from raygbm.data.schema import check_shards

    folder.mkdir(parents=True, exist_ok=True)
    shard = folder / "labelled.parquet"
    if cfg.retrain.include_source and not cfg.data.source:
        raise DataError("retrain.include_source needs data.source (the original training data)")
    if cfg.data.source:  # the source's columns, so data.drop, split.key and split.time mean the same
        source = check_shards(cfg.data.source, label=cfg.data.label, quarantine=cfg.data.quarantine)
        table = conform(rows, source.schema, cfg.split.time)
    else:
        table = training_rows(rows)
    tmp = shard.with_name(f".{shard.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(shard)
    if cfg.retrain.include_source:
        data = cfg.data.model_copy(update={"extra_shards": [*cfg.data.extra_shards, str(shard)]})
    else:
        data = cfg.data.model_copy(update={"source": str(shard), "extra_shards": []})
    return cfg.model_copy(update={"data": data})


def holdout_metric(registry: Registry, version: str, holdout: pa.Table, metric: str) -> float | None:
    """A registered version's metric on the raw holdout rows, through its own preprocessor (None when it
    cannot score them: columns it needs are missing, a label value it never saw)."""
    return holdout_metrics(registry, version, [holdout], metric)[0]


def holdout_metrics(registry: Registry, version: str, holdouts: list[pa.Table], metric: str) -> list[float | None]:
    """``holdout_metric`` on each of several row sets, the bundle loaded (and verified) once."""
    ref, path = local_bundle(registry, version)
    bundle = Bundle.load(path, ref.tags.get("manifest_sha256"))
    out: list[float | None] = []
    for holdout in holdouts:
        try:
            out.append(bundle.test_metric(holdout, metric))
        except DataError:
            out.append(None)
    return out


def evidence(registry: Registry, version: str, rows: pa.Table | None, metric: str) -> dict[str, Any] | None:
    """A version's ``Bundle.evidence`` on raw labelled rows (None: no rows, or it cannot score them)."""
    if rows is None or rows.num_rows == 0:
        return None
    ref, path = local_bundle(registry, version)
    try:
        return Bundle.load(path, ref.tags.get("manifest_sha256")).evidence(rows, metric)
    except DataError:
        return None


def trusted_rows(cfg: PipelineConfig) -> pa.Table | None:
    """The trusted test split: the raw test rows of ``data.source`` alone (its finished data run reused),
    labelled data the endpoint's traffic cannot reach. None without a source."""
    if not cfg.data.source:
        return None
    from raygbm.data.preprocess import preprocess
    from raygbm.data.split import RAW_TEST

    return pq.read_table(preprocess(cfg).run_dir / RAW_TEST)


def gate_challenger(registry_cfg: RegistryConfig, challenger: str, holdout: pa.Table, trusted: pa.Table | None = None,
                    max_shift: float = 1.0) -> tuple[Decision, dict[str, Any] | None]:
    """The challenger against the current champion on the same holdout rows, once the labels pass as
    evidence (``decisions.suspicious_labels``, against the champion on the ``trusted`` split) and the
    challenger keeps its skill on that split (``decisions.unlearned``). Returns the decision and the
    champion's evidence on the trusted split (kept with the watch: a rollback is checked the same way)."""
    registry = Registry(registry_cfg)
    ref = registry.get(challenger)
    metric = ref.gate_metric
    value = holdout_metric(registry, challenger, holdout, metric)
    if value is None:
        raise DataError(f"challenger v{challenger} cannot be scored on the labelled holdout")
    champ = registry.get()
    champ_trusted = evidence(registry, champ.version, trusted, metric) if champ else None
    # The champion on the holdout, scored once: its evidence's value is the gate's number.
    on_labels = evidence(registry, champ.version, holdout, metric) if champ_trusted else None
    if on_labels is not None:
        champ_value: float | None = on_labels["value"]
    else:
        champ_value = holdout_metric(registry, champ.version, holdout, metric) if champ else None
    rejected = lambda why: Decision("rejected", challenger, why, metric, value,  # noqa: E731
                                    champ.version if champ else None, champ_value, holdout.num_rows)
    if on_labels is not None:
        why = suspicious_labels(metric, champ.version, on_labels, champ_trusted, max_shift)
        if why:
            return rejected(f"suspicious labels: {why}"), champ_trusted
    why = unlearned(metric, challenger, evidence(registry, challenger, trusted, metric))
    if why:
        return rejected(f"suspicious challenger: {why}"), champ_trusted
    return challenger_verdict(metric, registry_cfg.margin, challenger, value, champ.version if champ else None,
                              champ_value, holdout.num_rows), champ_trusted


def record_decision(registry: Registry, state: LoopState, decision: Decision, ref: ModelRef,
                    trigger: str | None = None) -> None:
    """A decision in MLflow (the version's tags, its run's params and metrics) and in the loop's state."""
    registry.set_tags(ref, {"loop_action": decision.action, "gate_reason": decision.reason,
                            f"loop_{decision.metric}": f"{decision.value:.6g}" if decision.value is not None else "-",
                            "loop_compared_with": decision.other_version or "-"})
    # Run params cannot change and a version may be decided on more than once (rejected, promoted by hand,
    # rolled back): tags hold the latest decision, metrics named by action keep every one's numbers.
    a = decision.action
    metrics = {f"loop_{a}_value": decision.value, f"loop_{a}_other_value": decision.other_value,
               f"loop_{a}_rows": decision.rows}
    registry.log(ref.run_id, metrics={k: v for k, v in metrics.items() if v is not None})
    for key, value in {"action": a, "reason": decision.reason, "trigger": trigger or "-",
                       "compared_with": decision.other_version or "-"}.items():
        registry.client.set_tag(ref.run_id, f"raygbm.loop_{key}", value[:5000])
    state.append("decisions", {**decision.to_dict(), "trigger": trigger})


def apply_decision(registry_cfg: RegistryConfig, decision: Decision, trigger: str | None = None,
                   now: float | None = None, trusted: dict[str, Any] | None = None) -> None:
    """Move the alias for a promotion (and start watching it for a rollback, with ``trusted``: the previous
    champion's evidence on the trusted split), then record the decision."""
    registry = Registry(registry_cfg)
    state = LoopState(home(), registry_cfg.model_name)
    ref = registry.get(decision.version)
    if decision.action == "promoted":
        registry.promote(ref)
        registry.set_tags(ref, {"decision": "champion"})
        if decision.other_version is not None:
            state.set_watch({"version": decision.version, "previous": decision.other_version,
                             "since": now or time.time(), "status": "watching", "windows": 0, "trusted": trusted})
    record_decision(registry, state, decision, ref, trigger)


def retrain(cfg: PipelineConfig, *, trigger: str | None = None, progress: Progress = no_progress,
            now: float | None = None) -> RetrainResult:
    """One retraining of ``cfg.registry.model_name``: data, pipeline (registered as a candidate), the
    holdout gate, the alias moved or not, the decision recorded. One at a time per model name."""
    from raygbm.pipeline import run_pipeline

    name = cfg.registry.model_name
    state = LoopState(home(), name)
    now = time.time() if now is None else now
    with one_at_a_time(state):
        table = read_labelled(labelled_root(cfg.monitor), name)
        if table is None:
            raise DataError(f"no labelled traffic for model {name!r} yet (labels arrive with POST /feedback)")
        table = recent(table, rows=cfg.retrain.window_rows, seconds=cfg.retrain.window_s, now=now)
        rows, holdout = split_holdout(table, cfg.retrain.holdout_share, cfg.retrain.min_holdout_rows)
        if holdout.num_rows < cfg.retrain.min_holdout_rows:
            raise DataError(f"only {table.num_rows} labelled rows in retrain's window; the holdout needs "
                            f"retrain.min_holdout_rows={cfg.retrain.min_holdout_rows}")
        if rows.num_rows == 0 and not cfg.retrain.include_source:
            raise DataError(f"all {table.num_rows} labelled rows in retrain's window are the holdout; nothing to "
                            "retrain on (more labels, or retrain.include_source)")
        progress(f"retraining on {rows.num_rows:,} labelled rows"
                 f"{' plus the source' if cfg.retrain.include_source else ''}; {holdout.num_rows:,} held back")
        folder = state.dir / "data" / f"retrain-{int(now * 1000)}"
        run_cfg = stage_data(cfg, rows, folder)
        trials = cfg.tune.trials if cfg.retrain.trials is None else cfg.retrain.trials
        if trials:
            run_cfg = run_cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"trials": trials})})
        outcome, _ = run_pipeline(run_cfg, progress=progress, tune=bool(trials), promote=False)
        progress(f"challenger v{outcome.version}: comparing with the champion on the holdout")
        decision, trusted = gate_challenger(cfg.registry, outcome.version, training_rows(holdout), trusted_rows(cfg),
                                            cfg.retrain.max_label_shift)
        apply_decision(cfg.registry, decision, trigger, now, trusted)
    return RetrainResult(outcome.version, decision, rows.num_rows, holdout.num_rows, folder)
