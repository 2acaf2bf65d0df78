"""The stages composed: preprocess → tune → train the best → evaluate → register (and the champion gate).

Each function takes only the config sections it needs. Ray must be initialised by the entry point.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightgbm as lgb
import pyarrow.parquet as pq

from raygbm.bundle import METRICS_FILE, Bundle
from raygbm.config import EvaluateConfig, PipelineConfig, RegistryConfig, ResourcesConfig, TrainConfig
from raygbm.errors import DataError
from raygbm.direction import better
from raygbm.evaluate import (
    card_html,
    evaluate_model,
    gain_importance,
    gate_metric,
    model_card,
    save_plots,
    selected_features,
)
from raygbm.paths import home
from raygbm.registry import (
    BUNDLE_PATH,
    MODEL_FILE,
    PREPROCESSOR_FILE,
    ModelRef,
    Registry,
    RegistryError,
    local_bundle,
    write_manifest,
)
from raygbm.monitor import REFERENCE_FILE
from raygbm.split import RAW_TEST
from raygbm.train import RunMeta, TrainResult, best_metrics, boost, lgb_datasets, lgb_params, train_with_ray
from raygbm.tune import TuneResult, trial_mode

Say = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# ------------------------------------------------------------------------------------------- training


def _fit_in_task(run_dir: str, features: list[str], label: str, task: str, num_classes: int | None,
                 categorical: list[str], train: dict[str, Any], threads: int) -> tuple[str, dict[str, float], int, float]:
    """Runs as a Ray task holding ``threads`` CPUs; returns the model as LightGBM text."""
    meta = RunMeta(Path(run_dir), label, task, num_classes, categorical, features)
    cfg = TrainConfig.model_validate(train)
    dtrain, dvalid = lgb_datasets(meta.split("train"), meta.split("validation"), label, categorical)
    t = time.perf_counter()
    booster = boost(lgb_params(cfg, task, num_classes, threads), dtrain, dvalid, cfg)
    return booster.model_to_string(), best_metrics(booster), booster.best_iteration or booster.current_iteration(), time.perf_counter() - t


def _node_cpus() -> int:
    import ray

    return max(int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")) or 1


def fit_model(meta: RunMeta, train: TrainConfig, resources: ResourcesConfig, say: Say = _quiet) -> TrainResult:
    """One model with fixed params: a Ray task using a whole node's CPUs when the data fits one worker,
    else a data-parallel LightGBMTrainer."""
    import ray

    rows = meta.rows("train")
    if trial_mode(rows, resources) == "ray_train":
        say(f"training on {resources.num_workers} Ray Train worker(s)")
        return train_with_ray(meta, train, resources, home() / "train", f"train-{uuid.uuid4().hex[:8]}")
    threads = _node_cpus()
    say(f"training ({rows:,} rows, {threads} threads)")
    fit = ray.remote(num_cpus=threads)(_fit_in_task)
    text, metrics, best, boost_s = ray.get(fit.remote(
        str(meta.run_dir), meta.features, meta.label, meta.task, meta.num_classes, meta.categorical,
        train.model_dump(mode="json"), threads))
    return TrainResult(lgb.Booster(model_str=text), metrics, best, {"boost_s": boost_s})


@dataclass
class Trained:
    result: TrainResult
    meta: RunMeta  # the features the model uses (after selection)
    selection: dict[str, Any] | None
    # The tuned configuration against LightGBM's defaults on validation (run_pipeline), when compared.
    comparison: dict[str, Any] | None = None


def train_final(meta: RunMeta, train: TrainConfig, evaluate: EvaluateConfig, resources: ResourcesConfig,
                say: Say = _quiet) -> Trained:
    """Train with ``train.params``; with feature selection on, drop low-gain features and fit again."""
    result = fit_model(meta, train, resources, say)
    sel = evaluate.selection
    if not sel.enabled:
        return Trained(result, meta, None)
    keep = selected_features(gain_importance(result.booster), sel.min_gain_share)
    dropped = [f for f in meta.features if f not in keep]
    selection = {"min_gain_share": sel.min_gain_share, "dropped": dropped, "kept": keep}
    if not dropped:
        return Trained(result, meta, selection)
    say(f"feature selection dropped {len(dropped)} feature(s); training again")
    reduced = meta.with_features(keep)
    return Trained(fit_model(reduced, train, resources, say), reduced, selection)


# ------------------------------------------------------------------------------- evaluation + registry


@dataclass
class Outcome:
    version: str
    run_id: str
    decision: str  # "champion" or "candidate"
    reason: str
    metrics: dict[str, Any]
    gate_metric: str
    champion_score: float | None
    bundle: Path
    card: Path
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def champion_score(registry: Registry, meta: RunMeta, metric: str) -> tuple[ModelRef | None, float | None, str]:
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


def evaluate_and_register(
    meta: RunMeta,
    trained: Trained,
    train: TrainConfig,
    evaluate: EvaluateConfig,
    registry_cfg: RegistryConfig,
    tuning: TuneResult | None,
    say: Say = _quiet,
) -> Outcome:
    """Test metrics, plots, card; log everything to MLflow; register; move the champion alias if it wins."""
    used = trained.meta
    booster = trained.result.booster
    metric = gate_metric(meta.task, registry_cfg.metric)
    say("evaluating on the test split")
    ev, arrays = evaluate_model(booster, used.split("test"), used.split("validation"), meta.label, meta.task,
                                meta.num_classes, metric, evaluate.permutation_rows)
    if metric not in ev.metrics:
        raise DataError(f"registry.metric {metric!r} is not a {meta.task} metric (have: {', '.join(ev.metrics)})")
    registry = Registry(registry_cfg)
    say("comparing with the champion")
    champ, champ_value, why = champion_score(registry, meta, metric)
    new_value = float(ev.metrics[metric])
    if champ is None:
        decision, reason = "champion", "first model: " + why
    elif champ_value is None:
        decision, reason = "candidate", why
    elif better(metric, new_value, champ_value, registry_cfg.margin):
        decision, reason = "champion", f"test {metric} {new_value:.6g} beats champion v{champ.version}'s {champ_value:.6g}"
    else:
        decision, reason = "candidate", (f"test {metric} {new_value:.6g} does not beat champion v{champ.version}'s "
                                         f"{champ_value:.6g} by more than {registry_cfg.margin:g}")

    report = json.loads((meta.run_dir / "data_report.json").read_text())
    params = {**lgb_params(train, meta.task, meta.num_classes, 1), "num_boost_round": trained.result.best_iteration}
    params.pop("num_threads", None)
    work = Path(tempfile.mkdtemp(prefix="raygbm-register-"))
    try:
        bundle = work / BUNDLE_PATH
        bundle.mkdir()
        booster.save_model(str(bundle / MODEL_FILE))
        shutil.copy(meta.run_dir / PREPROCESSOR_FILE, bundle / PREPROCESSOR_FILE)
        shutil.copy(meta.run_dir / "schema.json", bundle / "schema.json")
        (bundle / METRICS_FILE).write_text(json.dumps(ev.metrics, indent=1))
        (bundle / REFERENCE_FILE).write_text(json.dumps(_reference(booster, used, report), allow_nan=False))
        (bundle / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True, default=str))
        manifest_sha = write_manifest(bundle)

        extra = work / "report"
        plots = save_plots(extra / "plots", ev, arrays, tuning.trials if tuning else None)
        (extra / "evaluation.json").write_text(json.dumps(ev.to_dict(), indent=1))
        (extra / "data_report.json").write_text(json.dumps(report, indent=1))
        if tuning:
            (extra / "tuning.json").write_text(json.dumps(tuning.to_dict(), indent=1, default=str))
        if trained.selection:
            (extra / "selection.json").write_text(json.dumps(trained.selection, indent=1))
        if trained.comparison:
            (extra / "defaults_comparison.json").write_text(json.dumps(trained.comparison, indent=1))

        say("logging to MLflow and registering")
        parent = registry.start_run(f"{'tune+' if tuning else ''}train {meta.run_dir.name}",
                                    tags={"raygbm.task": meta.task, "raygbm.data": str(report.get("source"))})
        registry.log(parent, params={**params, "features": len(used.features), "data_run": meta.run_dir.name},
                     metrics={f"test_{k}": v for k, v in ev.metrics.items()} | {
                         f"valid_{k}": v for k, v in trained.result.metrics.items()})
        if tuning:
            registry.log(parent, params={"tune_trials": len(tuning.trials), "tune_mode": tuning.trial_mode},
                         metrics={"tune_best_score": tuning.best_score, "tune_wall_s": tuning.wall_s})
            for t in tuning.trials:
                child = registry.start_run(f"trial {t['trial_id']}", tags={"raygbm.status": t["status"]}, parent=parent)
                registry.log(child, params=t["params"], metrics={"score": t["score"] or float("nan"), "iterations": t["iterations"]})
                registry.log_history(child, "validation_score", t["history"])
                registry.end_run(child)
        if trained.comparison:
            registry.log(parent, params={"kept": trained.comparison["kept"]},
                         metrics={f"valid_{k}": v for k, v in trained.comparison.items() if isinstance(v, float)})
        ref = registry.register(parent, manifest_sha, {"task": meta.task, "gate_metric": metric,
                                                        f"test_{metric}": f"{new_value:.6g}", "decision": decision})
        card_md = model_card(name=ref.name, version=ref.version, ev=ev, params=params,
                             best_iteration=trained.result.best_iteration, data_report=report,
                             tuning=tuning.to_dict() if tuning else None, gate={"decision": decision, "reason": reason},
                             plots=plots, selection=trained.selection, comparison=trained.comparison)
        (extra / "model_card.md").write_text(card_md)
        (extra / "model_card.html").write_text(card_html(card_md))
        registry.log_artifacts(parent, bundle, BUNDLE_PATH)
        registry.log_artifacts(parent, extra, "report")
        registry.end_run(parent)
        if decision == "champion":
            registry.promote(ref)
        registry.set_tags(ref, {"gate_reason": reason})

        # A local copy of the report next to the cached bundle, for people (and `make demo`) to open.
        out = home() / "models" / ref.name / f"{ref.version}-report"
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(extra, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Outcome(ref.version, parent, decision, reason, ev.metrics, metric, champ_value, out, out / "model_card.md", params)


def _reference(booster: lgb.Booster, meta: RunMeta, report: dict[str, Any], rows: int = 100_000) -> dict[str, Any]:
    """The drift monitor's reference: training features (a seeded sample) and validation scores."""
    from raygbm.evaluate import features_matrix
    from raygbm.monitor import reference_profile
    from raygbm.tune import sample_table

    train = sample_table(meta.split("train"), rows, 0)
    valid = sample_table(meta.split("validation"), rows, 1)
    missing = {c: float(v.get("null_frac", 0.0)) for c, v in report.get("columns", {}).items() if v.get("role") in ("numeric", "categorical")}
    return reference_profile(features_matrix(booster, train), booster.feature_name(), meta.categorical,
                             booster.predict(features_matrix(booster, valid)), missing)


def evaluate_registered(meta: RunMeta, registry_cfg: RegistryConfig, version: str | None) -> tuple[ModelRef, dict[str, Any]]:
    """A registered model's metrics on this run's raw test rows (``raygbm evaluate``)."""
    registry = Registry(registry_cfg)
    ref, path = local_bundle(registry, version)
    bundle = Bundle.load(path, ref.tags.get("manifest_sha256"))
    raw = pq.read_table(meta.run_dir / RAW_TEST)
    metrics = bundle.test_metrics(raw)
    metrics["test_rows"] = raw.num_rows
    return ref, metrics


# ------------------------------------------------------------------------------------------- the whole


def run_pipeline(cfg: PipelineConfig, *, say: Say = _quiet, force: bool = False, tune: bool = True,
                 shards: Any = None) -> tuple[Outcome, TuneResult | None]:
    from raygbm.data import preprocess
    from raygbm.tune import tune_search

    pre = preprocess(cfg, progress=say, force=force, shards=shards)
    meta = RunMeta.load(pre.run_dir)
    train = cfg.train
    tuning = None
    if tune:
        tuning = tune_search(meta, cfg.train, cfg.tune, cfg.resources, progress=say, force=force)
        say(f"best validation {tuning.metric} {tuning.best_score:.6g} after {len(tuning.trials)} trials")
        train = cfg.train.model_copy(update={"params": {**cfg.train.params, **_lgb_types(tuning.best_params)}})
    trained = train_final(meta, train, cfg.evaluate, cfg.resources, say)
    if tuning is not None and cfg.tune.compare_defaults:
        trained, train = keep_better_than_defaults(meta, trained, train, cfg, tuning.metric, say)
    return evaluate_and_register(meta, trained, train, cfg.evaluate, cfg.registry, tuning, say), tuning


def defaults_config(train: TrainConfig) -> TrainConfig:
    """LightGBM's default parameters and 100 rounds, as plain ``LGBMClassifier()`` / ``LGBMRegressor()``
    fit, with the same early stopping on validation as the tuned fit: both then pick their best round on
    the validation split, so neither score carries a bias the other lacks."""
    return train.model_copy(update={"params": {}, "num_boost_round": 100})


def keep_better_than_defaults(meta: RunMeta, trained: Trained, train: TrainConfig, cfg: PipelineConfig, metric: str,
                              say: Say = _quiet) -> tuple[Trained, TrainConfig]:
    """Fit LightGBM's defaults on the same split; keep whichever scores better on validation (on
    ``metric``, the LightGBM metric both were early-stopped on).

    Tuning samples rows and stops trials early, so on data where every reasonable configuration is
    about as good, the tuned one can land just below the defaults: this makes sure the pipeline never
    registers a model that validates worse than LightGBM out of the box.
    """
    defaults = defaults_config(train)
    say("fitting LightGBM's defaults for comparison")
    base = train_final(meta, defaults, cfg.evaluate, cfg.resources, say)
    tuned_score, default_score = trained.result.metrics.get("score"), base.result.metrics.get("score")
    use_defaults = (tuned_score is not None and default_score is not None
                    and better(metric, default_score, tuned_score))
    comparison = {"tuned_validation": tuned_score, "defaults_validation": default_score,
                  "kept": "lightgbm defaults" if use_defaults else "tuned"}
    say(f"validation: tuned {tuned_score:.6g}, LightGBM defaults {default_score:.6g}: keeping {comparison['kept']}"
        if tuned_score is not None and default_score is not None else "no validation score to compare")
    chosen, chosen_train = (base, defaults) if use_defaults else (trained, train)
    chosen.comparison = comparison
    return chosen, chosen_train


def _lgb_types(params: dict[str, Any]) -> dict[str, Any]:
    from raygbm.tune import _INT_PARAMS

    return {k: int(v) if k in _INT_PARAMS else v for k, v in params.items()}


def ensure_champion(registry_cfg: RegistryConfig) -> None:
    if Registry(registry_cfg).get() is None:
        raise RegistryError("no champion model yet: run `raygbm run` first")
