"""Fitting the model that gets registered, in three steps:

1. ``score_configuration``: a configuration scored by the run's validation scheme (``training.select``):
   on the holdout, one fit on train early-stopped on validation; under k-fold CV, k fold models on
   train + validation. With feature selection on, low-gain features are dropped and it is scored again.
2. ``keep_better_than_defaults``: LightGBM's defaults scored the same way; the better of the two is kept.
3. ``final_model``: under k-fold CV with ``train.ensemble``, the average of the k fold models as one
   LightGBM model (``training.ensemble``); else with ``train.refit`` (the default), one fit on train +
   validation for the selected rounds × ``train.refit_rounds_scale``, the test split untouched; otherwise
   the holdout model (under CV: one fit on train, early-stopped on validation).

Each fit is a Ray task using a node's CPUs when the data fits one worker, else data-parallel Ray Train.
Ray must be initialised by the entry point.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np

from raygbm.config import EvaluateConfig, PipelineConfig, ResourcesConfig, TrainConfig
from raygbm.metrics import better
from raygbm.paths import home
from raygbm.progress import Progress, no_progress
from raygbm.training.select import (
    SELECTION_SEED_OFFSET,
    CVResult,
    Scheme,
    cross_validate,
    paired_comparison,
    refit_rounds,
)
from raygbm.training.train import (
    RunMeta,
    TrainResult,
    best_metrics,
    boost,
    gain_importance,
    lgb_datasets,
    lgb_params,
    metric_name,
    train_with_ray,
    trial_mode,
)

REFIT_SPLITS = ("train", "validation")


def fit_rows(meta: RunMeta, train: dict[str, Any], threads: int, fit_on: tuple[str, ...],
             holdout: str | None) -> tuple[str, dict[str, float], int, float]:
    """One in-process fit on the ``fit_on`` splits, early-stopped on ``holdout`` (none: exactly
    ``num_boost_round`` rounds); returns the model as LightGBM text, its validation metrics, its best
    iteration and the boosting time. The body of the Ray task ``fit_model`` starts."""
    cfg = TrainConfig.model_validate(train)
    dtrain, dvalid = lgb_datasets(meta.splits(fit_on), meta.split(holdout) if holdout else None, meta.label,
                                  meta.categorical)
    t = time.perf_counter()
    booster = boost(lgb_params(cfg, meta.task, meta.num_classes, threads), dtrain, dvalid, cfg)
    return booster.model_to_string(), best_metrics(booster), booster.best_iteration or booster.current_iteration(), time.perf_counter() - t


def _node_cpus() -> int:
    """A node's CPUs, but no more than are free now: on a Ray that also serves (a retraining next to the
    endpoint's replicas and monitor), a task asking for a whole node's CPUs would never be scheduled."""
    import ray

    total = max(int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")) or 1
    return max(1, min(total, int(ray.available_resources().get("CPU", 0))))


def fit_model(meta: RunMeta, train: TrainConfig, resources: ResourcesConfig, progress: Progress = no_progress,
              fit_on: tuple[str, ...] = ("train",), holdout: str | None = "validation") -> TrainResult:
    """One model with fixed params on the ``fit_on`` splits: a Ray task using a whole node's CPUs when the
    data fits one worker, else a data-parallel LightGBMTrainer."""
    import ray

    rows = sum(meta.rows(s) for s in fit_on)
    if trial_mode(rows, resources) == "ray_train":
        progress(f"training on {resources.num_workers} Ray Train worker(s)")
        return train_with_ray(meta, train, resources, home() / "train", f"train-{uuid.uuid4().hex[:8]}",
                              fit_on=fit_on, holdout=holdout)
    threads = _node_cpus()
    progress(f"training ({rows:,} rows, {threads} threads)")
    fit = ray.remote(num_cpus=threads)(fit_rows)
    text, metrics, best, boost_s = ray.get(fit.remote(meta, train.model_dump(mode="json"), threads, fit_on, holdout))
    return TrainResult(lgb.Booster(model_str=text), metrics, best, {"boost_s": boost_s})


def cv_rows(meta: RunMeta, train: dict[str, Any], folds: int, seed: int, threads: int) -> CVResult:
    """k-fold CV on train + validation (the body of the Ray task ``cross_validate_model`` starts)."""
    return cross_validate(meta.splits(REFIT_SPLITS), meta, TrainConfig.model_validate(train), folds, seed, threads)


def cross_validate_model(meta: RunMeta, train: TrainConfig, folds: int, seed: int,
                         progress: Progress = no_progress) -> CVResult:
    import ray

    threads = _node_cpus()
    progress(f"{folds}-fold CV on train + validation ({threads} threads)")
    task = ray.remote(num_cpus=threads)(cv_rows)
    return ray.get(task.remote(meta, train.model_dump(mode="json"), folds, seed, threads))


def selected_features(gain: dict[str, float], min_share: float) -> list[str]:
    """Features whose share of the total gain is at least ``min_share`` (never fewer than one)."""
    total = sum(gain.values()) or 1.0
    keep = [n for n, g in gain.items() if g / total >= min_share]
    return keep or [max(gain, key=gain.__getitem__)]


@dataclass
class Candidate:
    """A configuration scored by the validation scheme."""

    train: TrainConfig
    meta: RunMeta  # the features it uses (after feature selection)
    scheme: Scheme
    score: float | None  # the holdout's validation score, or the mean of the fold scores
    best_iteration: int  # holdout: early stopping's best round; CV: the rounded mean of the folds' best rounds
    model: TrainResult | None = None  # the holdout model (holdout scheme only)
    cv: CVResult | None = None
    # Labels and out-of-sample scores: the holdout model on validation, or the out-of-fold predictions.
    heldout: tuple[np.ndarray, np.ndarray] | None = None
    selection: dict[str, Any] | None = None  # feature selection
    comparison: dict[str, Any] | None = None  # against LightGBM's defaults

    def record(self) -> dict[str, Any]:
        """How it was scored, for MLflow and the model card."""
        out: dict[str, Any] = {"scheme": self.scheme.kind, "folds": self.scheme.folds, "reason": self.scheme.reason,
                               "metric": metric_name(self.meta.task, self.train.metric), "score": self.score,
                               "best_iteration": self.best_iteration}
        if self.cv is not None:
            out.update(score_std=self.cv.score_std, fold_scores=self.cv.fold_scores,
                       fold_best_iterations=self.cv.fold_best_iterations)
        return out


@dataclass
class Trained:
    result: TrainResult  # the registered model
    meta: RunMeta  # the features the model uses (after selection)
    selection: dict[str, Any] | None
    # The tuned configuration against LightGBM's defaults (run_pipeline), when compared.
    comparison: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None  # Candidate.record() of the configuration
    refit: dict[str, Any] | None = None  # splits, rows, rounds (None: the model fitted on train)
    # Labels and scores for choosing the decision threshold when the model's own validation scores are
    # not out of sample (a refit trained on validation); None: the model's validation scores.
    heldout: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


def _score(meta: RunMeta, train: TrainConfig, scheme: Scheme, resources: ResourcesConfig,
           progress: Progress) -> Candidate:
    if scheme.folds:
        cv = cross_validate_model(meta, train, scheme.folds, scheme.seed + SELECTION_SEED_OFFSET, progress)
        return Candidate(train, meta, scheme, cv.score, cv.rounds, cv=cv, heldout=(cv.y, cv.oof))
    result = fit_model(meta, train, resources, progress)
    valid = meta.split("validation")
    heldout = (np.asarray(valid.column(meta.label)), result.booster.predict(valid.drop_columns([meta.label])))
    return Candidate(train, meta, scheme, result.metrics.get("score"), result.best_iteration, model=result,
                     heldout=heldout)


def score_configuration(meta: RunMeta, train: TrainConfig, scheme: Scheme, evaluate: EvaluateConfig,
                        resources: ResourcesConfig, progress: Progress = no_progress) -> Candidate:
    """Score ``train.params`` by the scheme; with feature selection on, drop low-gain features and score again."""
    cand = _score(meta, train, scheme, resources, progress)
    sel = evaluate.selection
    if not sel.enabled:
        return cand
    gain = cand.cv.gain if cand.cv is not None else gain_importance(cand.model.booster)  # type: ignore[union-attr]
    keep = selected_features(gain, sel.min_gain_share)
    dropped = [f for f in meta.features if f not in keep]
    if dropped:
        progress(f"feature selection dropped {len(dropped)} feature(s); scoring again")
        cand = _score(meta.with_features(keep), train, scheme, resources, progress)
    cand.selection = {"min_gain_share": sel.min_gain_share, "dropped": dropped, "kept": keep}
    return cand


def defaults_config(train: TrainConfig) -> TrainConfig:
    """LightGBM's default parameters and 100 rounds, as plain ``LGBMClassifier()`` / ``LGBMRegressor()``
    fit, with the same early stopping as the tuned configuration: both then pick their best round the
    same way, so neither score carries a bias the other lacks."""
    return train.model_copy(update={"params": {}, "num_boost_round": 100})


def keep_better_than_defaults(meta: RunMeta, tuned: Candidate, cfg: PipelineConfig,
                              progress: Progress = no_progress) -> Candidate:
    """Score LightGBM's defaults by the same scheme (under CV: the same folds) and keep whichever scores
    better, on the LightGBM metric both were early-stopped on.

    Tuning samples rows and stops trials early, so on data where every reasonable configuration is
    about as good, the tuned one can land just below the defaults: this makes sure the pipeline never
    registers a configuration that validates worse than LightGBM out of the box.
    """
    progress("scoring LightGBM's defaults for comparison")
    base = score_configuration(meta, defaults_config(tuned.train), tuned.scheme, cfg.evaluate, cfg.resources, progress)
    metric = metric_name(meta.task, tuned.train.metric)
    t, d = tuned.score, base.score
    use_defaults = t is not None and d is not None and better(metric, d, t)
    comparison: dict[str, Any] = {"scheme": tuned.scheme.kind, "metric": metric, "tuned_score": t,
                                  "defaults_score": d, "kept": "lightgbm defaults" if use_defaults else "tuned"}
    if tuned.cv is not None and base.cv is not None:
        comparison.update(paired_comparison(metric, tuned.cv.fold_scores, base.cv.fold_scores))
    progress(f"{tuned.scheme.describe()} {metric}: tuned {t:.6g}, LightGBM defaults {d:.6g}: keeping {comparison['kept']}"
             if t is not None and d is not None else "no validation score to compare")
    chosen = base if use_defaults else tuned
    chosen.comparison = comparison
    return chosen


def rounds_scale(cand: Candidate) -> float:
    """``train.refit_rounds_scale`` as a number: ``auto`` scales by the refit's rows over the rows each
    selection model trained on (k/(k-1) under k-fold CV; (train+validation)/train on the holdout)."""
    scale = cand.train.refit_rounds_scale
    if scale != "auto":
        return float(scale)
    if cand.scheme.folds:
        return cand.scheme.folds / (cand.scheme.folds - 1)
    train_rows = cand.meta.rows("train")
    return sum(cand.meta.rows(s) for s in REFIT_SPLITS) / max(1, train_rows)


def final_model(cand: Candidate, resources: ResourcesConfig, progress: Progress = no_progress) -> Trained:
    """The model to register: under CV with ``train.ensemble`` the average of the fold models; else the refit
    on train + validation (``train.refit``), or the holdout model."""
    train, meta = cand.train, cand.meta
    record = cand.record()
    if train.ensemble and cand.cv is not None and cand.cv.models:
        return _fold_ensemble(cand, record, progress)
    if not train.refit:
        # The model fitted on train, early-stopped on validation: its own validation scores are out of sample.
        result = cand.model if cand.model is not None else fit_model(meta, train, resources, progress)
        return Trained(result, meta, cand.selection, cand.comparison, record)
    scale = rounds_scale(cand)
    rounds = refit_rounds(cand.best_iteration, scale)
    rows = sum(meta.rows(s) for s in REFIT_SPLITS)
    progress(f"refit on train + validation ({rows:,} rows): {rounds} rounds = best iteration {cand.best_iteration} "
             f"× {scale:.4g}")
    fixed = train.model_copy(update={"num_boost_round": rounds, "early_stopping_rounds": None})
    result = fit_model(meta, fixed, resources, progress, fit_on=REFIT_SPLITS, holdout=None)
    refit = {"splits": list(REFIT_SPLITS), "rows": rows, "rounds": rounds, "rounds_scale": scale,
             "selection_best_iteration": cand.best_iteration}
    return Trained(result, meta, cand.selection, cand.comparison, record, refit, cand.heldout)


def _fold_ensemble(cand: Candidate, record: dict[str, Any], progress: Progress) -> Trained:
    """The k fold models of the selection's CV as one model (``training.ensemble``): no refit; the
    threshold is chosen on the out-of-fold predictions, as for a refit."""
    from raygbm.training.ensemble import average_models

    cv = cand.cv
    assert cv is not None
    rows = sum(cand.meta.rows(s) for s in REFIT_SPLITS)
    progress(f"ensemble of the {len(cv.models)} fold models ({rows:,} train + validation rows; rounds "
             f"{', '.join(map(str, cv.fold_best_iterations))})")
    booster = lgb.Booster(model_str=average_models(cv.models))
    result = TrainResult(booster, {"score": cv.score}, cand.best_iteration, {})
    refit = {"splits": list(REFIT_SPLITS), "rows": rows, "rounds": cand.best_iteration, "rounds_scale": 1.0,
             "selection_best_iteration": cand.best_iteration, "ensemble": len(cv.models),
             "fold_rounds": cv.fold_best_iterations}
    return Trained(result, cand.meta, cand.selection, cand.comparison, record, refit, cand.heldout)
