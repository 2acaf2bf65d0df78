"""Fitting the model that gets registered: one LightGBM fit on the train split (in a Ray task using a
node's CPUs when the data fits one worker, else data-parallel with Ray Train), optional feature selection
by gain, and the comparison with LightGBM's defaults. Ray must be initialised by the entry point."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb

from raygbm.config import EvaluateConfig, PipelineConfig, ResourcesConfig, TrainConfig
from raygbm.paths import home
from raygbm.progress import Progress, no_progress
from raygbm.training.direction import better
from raygbm.training.train import (
    RunMeta,
    TrainResult,
    best_metrics,
    boost,
    gain_importance,
    lgb_datasets,
    lgb_params,
    train_with_ray,
)
from raygbm.training.tune import trial_mode


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


def fit_model(meta: RunMeta, train: TrainConfig, resources: ResourcesConfig,
              progress: Progress = no_progress) -> TrainResult:
    """One model with fixed params: a Ray task using a whole node's CPUs when the data fits one worker,
    else a data-parallel LightGBMTrainer."""
    import ray

    rows = meta.rows("train")
    if trial_mode(rows, resources) == "ray_train":
        progress(f"training on {resources.num_workers} Ray Train worker(s)")
        return train_with_ray(meta, train, resources, home() / "train", f"train-{uuid.uuid4().hex[:8]}")
    threads = _node_cpus()
    progress(f"training ({rows:,} rows, {threads} threads)")
    fit = ray.remote(num_cpus=threads)(_fit_in_task)
    text, metrics, best, boost_s = ray.get(fit.remote(
        str(meta.run_dir), meta.features, meta.label, meta.task, meta.num_classes, meta.categorical,
        train.model_dump(mode="json"), threads))
    return TrainResult(lgb.Booster(model_str=text), metrics, best, {"boost_s": boost_s})


def selected_features(gain: dict[str, float], min_share: float) -> list[str]:
    """Features whose share of the total gain is at least ``min_share`` (never fewer than one)."""
    total = sum(gain.values()) or 1.0
    keep = [n for n, g in gain.items() if g / total >= min_share]
    return keep or [max(gain, key=gain.__getitem__)]


@dataclass
class Trained:
    result: TrainResult
    meta: RunMeta  # the features the model uses (after selection)
    selection: dict[str, Any] | None
    # The tuned configuration against LightGBM's defaults on validation (run_pipeline), when compared.
    comparison: dict[str, Any] | None = None


def train_final(meta: RunMeta, train: TrainConfig, evaluate: EvaluateConfig, resources: ResourcesConfig,
                progress: Progress = no_progress) -> Trained:
    """Train with ``train.params``; with feature selection on, drop low-gain features and fit again."""
    result = fit_model(meta, train, resources, progress)
    sel = evaluate.selection
    if not sel.enabled:
        return Trained(result, meta, None)
    keep = selected_features(gain_importance(result.booster), sel.min_gain_share)
    dropped = [f for f in meta.features if f not in keep]
    selection = {"min_gain_share": sel.min_gain_share, "dropped": dropped, "kept": keep}
    if not dropped:
        return Trained(result, meta, selection)
    progress(f"feature selection dropped {len(dropped)} feature(s); training again")
    reduced = meta.with_features(keep)
    return Trained(fit_model(reduced, train, resources, progress), reduced, selection)


def defaults_config(train: TrainConfig) -> TrainConfig:
    """LightGBM's default parameters and 100 rounds, as plain ``LGBMClassifier()`` / ``LGBMRegressor()``
    fit, with the same early stopping on validation as the tuned fit: both then pick their best round on
    the validation split, so neither score carries a bias the other lacks."""
    return train.model_copy(update={"params": {}, "num_boost_round": 100})


def keep_better_than_defaults(meta: RunMeta, trained: Trained, train: TrainConfig, cfg: PipelineConfig, metric: str,
                              progress: Progress = no_progress) -> tuple[Trained, TrainConfig]:
    """Fit LightGBM's defaults on the same split; keep whichever scores better on validation (on
    ``metric``, the LightGBM metric both were early-stopped on).

    Tuning samples rows and stops trials early, so on data where every reasonable configuration is
    about as good, the tuned one can land just below the defaults: this makes sure the pipeline never
    registers a model that validates worse than LightGBM out of the box.
    """
    defaults = defaults_config(train)
    progress("fitting LightGBM's defaults for comparison")
    base = train_final(meta, defaults, cfg.evaluate, cfg.resources, progress)
    tuned_score, default_score = trained.result.metrics.get("score"), base.result.metrics.get("score")
    use_defaults = (tuned_score is not None and default_score is not None
                    and better(metric, default_score, tuned_score))
    comparison = {"tuned_validation": tuned_score, "defaults_validation": default_score,
                  "kept": "lightgbm defaults" if use_defaults else "tuned"}
    progress(f"validation: tuned {tuned_score:.6g}, LightGBM defaults {default_score:.6g}: keeping {comparison['kept']}"
        if tuned_score is not None and default_score is not None else "no validation score to compare")
    chosen, chosen_train = (base, defaults) if use_defaults else (trained, train)
    chosen.comparison = comparison
    return chosen, chosen_train

