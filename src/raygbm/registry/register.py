"""Evaluate and register a trained model: test metrics, the bundle, the report and model card, the MLflow
runs (a parent per model, a child per tuning trial), the registered version, and the champion alias
moved when the gate says so."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow.parquet as pq

from raygbm.config import EvaluateConfig, MonitorConfig, RegistryConfig, TrainConfig
from raygbm.data.features import Preprocessor
from raygbm.data.split import RAW_TEST
from raygbm.errors import DataError
from raygbm.metrics import gate_metric
from raygbm.monitoring.reference import REFERENCE_FILE, Calibration, reference_profile
from raygbm.paths import home
from raygbm.progress import Progress, no_progress
from raygbm.registry.bundle import (
    METRICS_FILE,
    MODEL_FILE,
    PARAMS_FILE,
    PREPROCESSOR_FILE,
    SCHEMA_FILE,
    Bundle,
    write_manifest,
)
from raygbm.registry.card import card_html, model_card
from raygbm.registry.evaluate import Evaluation, evaluate_model, features_matrix
from raygbm.registry.gate import Gate, gate_decision, score_champion
from raygbm.registry.mlflow_model import write_pyfunc
from raygbm.registry.plots import save_plots
from raygbm.registry.store import BUNDLE_PATH, ModelRef, Registry, local_bundle
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, lgb_params
from raygbm.training.tune import TuneResult, sample_table

CARD_FILE = "model_card.md"
BUNDLE_TAG = "raygbm.manifest_sha256"  # on the MLflow run: the bundle it was started for
PUBLISHED_TAG = "published"  # on the version: its report, run and alias are done


@dataclass
class Outcome:
    """What evaluating and registering one model came to (``raygbm run --json`` prints its ``to_dict``)."""

    version: str  # the registered model version
    run_id: str  # the MLflow parent run
    decision: str  # "champion" or "candidate"
    reason: str
    metrics: dict[str, Any]  # test metrics
    gate_metric: str
    champion_score: float | None  # the earlier champion's gate metric on the same test rows
    report_dir: Path  # the local copy of the report: model card, plots, evaluation.json, ...
    card_path: Path  # the model card (Markdown) inside report_dir
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Registration:
    """One model on its way into the registry: what was trained, its evaluation, and the bundle written."""

    meta: RunMeta
    trained: Trained
    ev: Evaluation
    params: dict[str, Any]
    data_report: dict[str, Any]
    tuning: TuneResult | None
    metric: str  # the gate metric
    bundle_dir: Path
    manifest_sha: str


def write_bundle(dest: Path, booster: lgb.Booster, run_dir: Path, metrics: dict[str, Any], reference: dict[str, Any],
                 params: dict[str, Any]) -> str:
    """Write a new bundle folder ``dest``: the model, the preprocess run's preprocessor and schema, the
    test metrics, the drift reference and the parameters, the MLflow pyfunc flavour over them
    (``registry.mlflow_model``), then the manifest. Returns the manifest's sha256."""
    dest.mkdir()
    booster.save_model(str(dest / MODEL_FILE))
    shutil.copy(run_dir / PREPROCESSOR_FILE, dest / PREPROCESSOR_FILE)
    shutil.copy(run_dir / SCHEMA_FILE, dest / SCHEMA_FILE)
    (dest / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    (dest / REFERENCE_FILE).write_text(json.dumps(reference, allow_nan=False))
    (dest / PARAMS_FILE).write_text(json.dumps(params, indent=1, sort_keys=True, default=str))
    write_pyfunc(dest, Preprocessor.from_json((dest / PREPROCESSOR_FILE).read_text()))
    return write_manifest(dest)


def registered_params(train: TrainConfig, meta: RunMeta, trained: Trained) -> dict[str, Any]:
    """The LightGBM parameters a model was trained with, and its boosting rounds (threads left out)."""
    params = {**lgb_params(train, meta.task, meta.num_classes, 1), "num_boost_round": trained.result.best_iteration}
    params.pop("num_threads", None)
    return params


def write_report(report_dir: Path, ev: Evaluation, arrays: dict[str, Any], data_report: dict[str, Any],
                 tuning: TuneResult | None, trained: Trained) -> list[str]:
    """The report folder, all but the model card: plots, evaluation, data report, tuning, feature
    selection and the defaults comparison. Returns the plots' file names."""
    plots = save_plots(report_dir / "plots", ev, arrays, tuning.to_dict() if tuning else None)
    (report_dir / "evaluation.json").write_text(json.dumps(ev.to_dict(), indent=1))
    (report_dir / "data_report.json").write_text(json.dumps(data_report, indent=1))
    if tuning:
        (report_dir / "tuning.json").write_text(json.dumps(tuning.to_dict(), indent=1, default=str))
    if trained.selection:
        (report_dir / "selection.json").write_text(json.dumps(trained.selection, indent=1))
    if trained.comparison:
        (report_dir / "defaults_comparison.json").write_text(json.dumps(trained.comparison, indent=1))
    if trained.validation or trained.refit:
        (report_dir / "model_selection.json").write_text(
            json.dumps({"validation": trained.validation, "refit": trained.refit}, indent=1))
    return plots


def write_card(report_dir: Path, ref: ModelRef, new: Registration, gate: Gate, plots: list[str]) -> Path:
    """The model card, as Markdown and HTML, in the report folder; returns the Markdown file."""
    ev, params, trained, data_report, tuning = new.ev, new.params, new.trained, new.data_report, new.tuning
    card_md = model_card(name=ref.name, version=ref.version, ev=ev, params=params,
                         best_iteration=trained.result.best_iteration, data_report=data_report,
                         tuning=tuning.to_dict() if tuning else None,
                         gate={"decision": gate.decision, "reason": gate.reason},
                         plots=plots, selection=trained.selection, comparison=trained.comparison,
                         validation=trained.validation, refit=trained.refit)
    (report_dir / CARD_FILE).write_text(card_md)
    (report_dir / "model_card.html").write_text(card_html(card_md, report_dir))
    return report_dir / CARD_FILE


def log_training_run(registry: Registry, new: Registration) -> str:
    """An MLflow parent run with the parameters and metrics, a child run per tuning trial and the
    defaults comparison; returns the parent run's id (left open for the artifacts)."""
    meta, trained, ev, params, tuning = new.meta, new.trained, new.ev, new.params, new.tuning
    data_report, manifest_sha = new.data_report, new.manifest_sha
    parent = registry.start_run(f"{'tune+' if tuning else ''}train {meta.run_dir.name}",
                                tags={"raygbm.task": meta.task, "raygbm.data": str(data_report.get("source")),
                                      BUNDLE_TAG: manifest_sha})
    registry.log(parent, params={**params, "features": len(trained.meta.features), "data_run": meta.run_dir.name},
                 metrics={f"test_{k}": v for k, v in ev.metrics.items()} | {
                     f"valid_{k}": v for k, v in trained.result.metrics.items()})
    if tuning:
        registry.log(parent, params={"tune_trials": len(tuning.trials), "tune_mode": tuning.trial_mode},
                     metrics={"tune_best_score": tuning.best_score, "tune_wall_s": tuning.wall_s})
        log_trials(registry, parent, tuning)
    if trained.comparison:
        registry.log(parent, params={"kept": trained.comparison["kept"]},
                     metrics={f"selection_{k}": v for k, v in trained.comparison.items() if isinstance(v, float)})
    registry.log(parent, **selection_log(trained))
    return parent


def selection_log(trained: Trained) -> dict[str, dict[str, Any]]:
    """The parent run's params and metrics for the selection (scheme, score, best iteration) and the refit."""
    params: dict[str, Any] = {"refit": trained.refit is not None}
    metrics: dict[str, float] = {}
    v = trained.validation
    if v:
        params.update(selection_scheme=v["scheme"], selection_folds=v["folds"] or 0,
                      selection_best_iteration=v["best_iteration"])
        if v.get("score") is not None:
            metrics[f"selection_{v['metric']}"] = metrics["selection_score"] = float(v["score"])
        if "score_std" in v:
            metrics["selection_score_std"] = float(v["score_std"])
    if trained.refit:
        params.update(refit_rounds=trained.refit["rounds"], refit_rounds_scale=trained.refit["rounds_scale"],
                      refit_rows=trained.refit["rows"])
    return {"params": params, "metrics": metrics}


def log_trials(registry: Registry, parent: str, tuning: TuneResult) -> None:
    """One MLflow child run per tuning trial: its parameters, score and validation history."""
    for t in tuning.trials:
        child = registry.start_run(f"trial {t['trial_id']}", tags={"raygbm.status": t["status"]}, parent=parent)
        registry.log(child, params=t["params"], metrics={"score": t["score"] or float("nan"), "iterations": t["iterations"]})
        registry.log_history(child, "validation_score", t["history"])
        registry.end_run(child)


def publish(registry: Registry, ref: ModelRef, gate: Gate, report_dir: Path) -> None:
    """Attach the report to the version's run, close it, and move the champion alias if the gate says so.
    Each step may be repeated: a registration interrupted anywhere here is finished by running it again."""
    registry.log_artifacts(ref.run_id, report_dir, "report")
    registry.end_run(ref.run_id)
    if gate.decision == "champion":
        registry.promote(ref)
    registry.set_tags(ref, {PUBLISHED_TAG: "true"})


def keep_report(report_dir: Path, ref: ModelRef) -> Path:
    """A local copy of the report next to the cached bundle, for people (and `make demo`) to open."""
    out = home() / "models" / ref.name / f"{ref.version}-report"
    staging = out.with_name(f".{out.name}-{uuid.uuid4().hex[:8]}")  # copied whole, then renamed into place
    try:
        shutil.copytree(report_dir, staging)
        if out.exists():
            shutil.rmtree(out)
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def evaluate_and_register(
    meta: RunMeta,
    trained: Trained,
    train: TrainConfig,
    evaluate: EvaluateConfig,
    registry_cfg: RegistryConfig,
    tuning: TuneResult | None,
    progress: Progress = no_progress,
    *,
    monitor: MonitorConfig | None = None,
    promote: bool = True,
) -> Outcome:
    """Test metrics, plots, card; log everything to MLflow; register; move the champion alias if it wins.
    ``monitor``: the window size and false-alarm rate the drift thresholds are calibrated for. ``promote``
    false: registered as a candidate whatever the test split says (the loop gates it on recent traffic)."""
    booster = trained.result.booster
    metric = gate_metric(meta.task, registry_cfg.metric)
    progress("evaluating on the test split")
    ev, arrays = evaluate_model(booster, trained.meta.split("test"), trained.meta.split("validation"), meta.label,
                                meta.task, meta.num_classes, metric, evaluate.permutation_rows, trained.heldout)
    if metric not in ev.metrics:
        raise DataError(f"registry.metric {metric!r} is not a {meta.task} metric (have: {', '.join(ev.metrics)})")
    registry = Registry(registry_cfg)
    data_report = json.loads((meta.run_dir / "data_report.json").read_text())
    params = registered_params(train, meta, trained)
    work = Path(tempfile.mkdtemp(prefix="raygbm-register-"))
    try:
        bundle_dir, report_dir = work / BUNDLE_PATH, work / "report"
        manifest_sha = write_bundle(bundle_dir, booster, meta.run_dir, ev.metrics,
                                    _reference(booster, trained.meta, data_report, monitor or MonitorConfig(),
                                               threshold=float(ev.metrics.get("threshold", 0.5))), params)
        plots = write_report(report_dir, ev, arrays, data_report, tuning, trained)
        new = Registration(meta, trained, ev, params, data_report, tuning, metric, bundle_dir, manifest_sha)
        ref = registry.find(manifest_sha)
        if ref is None:
            gate, champ_value, ref = _register_new(registry, new, registry_cfg.margin, progress, promote)
        else:  # this very bundle is registered already (by an interrupted run, or an earlier one)
            gate = Gate(ref.tags.get("decision", "candidate"), ref.tags.get("gate_reason", ""))
            champ_value = float(ref.tags["champion_score"]) if ref.tags.get("champion_score") else None
            progress(f"the same model is registered as v{ref.version}"
                     + ("" if ref.tags.get(PUBLISHED_TAG) else ": finishing its registration"))
        write_card(report_dir, ref, new, gate, plots)
        if not ref.tags.get(PUBLISHED_TAG):  # never again once done: the alias may have moved on since
            publish(registry, ref, gate, report_dir)
        kept = keep_report(report_dir, ref)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Outcome(version=ref.version, run_id=ref.run_id, decision=gate.decision, reason=gate.reason, metrics=ev.metrics,
                   gate_metric=metric, champion_score=champ_value, report_dir=kept, card_path=kept / CARD_FILE,
                   params=params)


def _register_new(registry: Registry, new: Registration, margin: float, progress: Progress,
                  promote: bool = True) -> tuple[Gate, float | None, ModelRef]:
    """The gate against the champion, the MLflow run with the whole bundle, then the version naming it
    (so no version ever points at a partial bundle). Runs an interrupted attempt left open are closed.
    ``promote`` false: registered as a candidate whatever the test split says (the loop gates it)."""
    progress("comparing with the champion")
    metric, manifest_sha = new.metric, new.manifest_sha
    champ, champ_value, why = score_champion(registry, new.meta, metric)
    new_value = float(new.ev.metrics[metric])
    gate = gate_decision(metric, new_value, champ.version if champ else None, champ_value, why, margin)
    if not promote:
        gate = Gate("candidate", f"held for the loop's gate on recent labelled rows (test split: {gate.reason})")
    progress("logging to MLflow and registering")
    registry.close_unfinished_runs(BUNDLE_TAG, manifest_sha)
    parent = log_training_run(registry, new)
    registry.log_artifacts(parent, new.bundle_dir, BUNDLE_PATH)
    tags = {"task": new.meta.task, "gate_metric": metric, f"test_{metric}": f"{new_value:.6g}", "decision": gate.decision,
            "gate_reason": gate.reason, **({"champion_score": repr(champ_value)} if champ_value is not None else {})}
    return gate, champ_value, registry.register(parent, manifest_sha, tags)


# Where the drift reference's rows come from. Feature bins: the training split. Feature thresholds are
# calibrated on held-out rows of another split; the score's bins and thresholds come from the test split,
# the only rows no fitted model trained on (the registered model may be refit on train + validation, so
# its validation scores are in-sample).
REFERENCE_SPLITS = {"bins": "train", "features": "validation", "prediction": "test"}


def _reference(booster: lgb.Booster, meta: RunMeta, report: dict[str, Any], monitor: MonitorConfig,
               rows: int = 100_000, threshold: float = 0.5) -> dict[str, Any]:
    """The drift monitor's reference (``REFERENCE_SPLITS``), with thresholds calibrated for ``monitor``'s
    window size and false-alarm rate, and ``performance``: what each window's performance is held to and
    the score calibration map (JSON) that estimates it, from the same held-out rows as the score's bins.
    A split without rows is replaced by the next one (train last)."""
    from raygbm.monitoring.performance import performance_reference

    tables = {}
    for seed, split in enumerate(("train", "validation", "test")):
        table = sample_table(meta.split(split), rows, seed)
        tables[split] = table if table.num_rows else None
    pick = {role: next(s for s in (split, "validation", "test", "train") if tables[s] is not None)
            for role, split in REFERENCE_SPLITS.items()}
    missing = {c: float(v.get("null_frac", 0.0)) for c, v in report.get("columns", {}).items() if v.get("role") in ("numeric", "categorical")}
    cal = Calibration(features_matrix(booster, tables[pick["features"]]), monitor.window_size, monitor.false_alarm_rate,
                      monitor.calibration_draws, {"features": pick["features"], "prediction": pick["prediction"]})
    held_out = tables[pick["prediction"]]
    scores = booster.predict(features_matrix(booster, held_out))
    out = reference_profile(features_matrix(booster, tables[pick["bins"]]), booster.feature_name(), meta.categorical,
                            scores, missing, calibration=cal)
    out["performance"] = performance_reference(meta.task, np.asarray(held_out.column(meta.label)), scores, threshold,
                                               monitor.window_size)
    return out


def evaluate_registered(meta: RunMeta, registry_cfg: RegistryConfig, version: str | None) -> tuple[ModelRef, dict[str, Any]]:
    """A registered model's metrics on this run's raw test rows (``raygbm evaluate``)."""
    registry = Registry(registry_cfg)
    ref, path = local_bundle(registry, version)
    bundle = Bundle.load(path, ref.tags.get("manifest_sha256"))
    raw = pq.read_table(meta.run_dir / RAW_TEST)
    metrics = bundle.test_metrics(raw)
    metrics["test_rows"] = raw.num_rows
    return ref, metrics

