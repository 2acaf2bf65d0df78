"""How a configuration is scored, and how many rounds its refit gets: the validation scheme.

The rule (``tune.cv_folds``):

- ``auto`` (the default): k-fold CV with ``AUTO_CV_FOLDS`` folds on train + validation when those splits
  hold fewer than ``tune.cv_below_rows`` rows and trials run in-process; otherwise the holdout (fit on
  train, score on validation). On small data one validation split is a noisy judge: a configuration can
  win on it by chance and lose out of sample. On large data the holdout is already precise, and k fits
  per configuration would cost k times as much.
- an int >= 2: always k-fold CV; ``null`` or ``0``: always the holdout.

The same scheme scores the trials, the tuned configuration against LightGBM's defaults, and fixes the
rounds of the refit: the best iteration on the holdout, or the rounded mean of the folds' best iterations
(each fold early-stopped on its own held-out rows). Everything here is plain Python: no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa

from raygbm.config import ResourcesConfig, TrainConfig, TuneConfig
from raygbm.metrics import better
from raygbm.training.train import RunMeta, gain_importance, lgb_dataset, lgb_params, metric_name, trial_mode

AUTO_CV_FOLDS = 5
# The selection's CV draws its folds with this offset from tune.seed: the configuration the search picked
# on its folds is re-scored (against the defaults) on folds it was not picked on.
SELECTION_SEED_OFFSET = 1


@dataclass(frozen=True)
class Scheme:
    """The validation scheme of one pipeline run."""

    folds: int | None  # None: the holdout
    rows: int  # train + validation rows it was chosen for
    reason: str
    seed: int  # tune.seed: the trials' folds; the selection's folds use seed + SELECTION_SEED_OFFSET

    @property
    def kind(self) -> str:
        return "cv" if self.folds else "holdout"

    def describe(self) -> str:
        return f"{self.folds}-fold CV" if self.folds else "holdout (validation split)"


def choose_scheme(cv_folds: int | str | None, cv_below_rows: int, rows: int, trial_mode: str, seed: int = 42) -> Scheme:
    """The documented rule (module docstring) for ``rows`` train + validation rows."""
    if cv_folds == "auto":
        if trial_mode == "ray_train":
            return Scheme(None, rows, "auto: data-parallel (Ray Train) trials use the holdout", seed)
        if rows < cv_below_rows:
            return Scheme(AUTO_CV_FOLDS, rows, f"auto: {rows:,} train+validation rows < tune.cv_below_rows "
                          f"({cv_below_rows:,})", seed)
        return Scheme(None, rows, f"auto: {rows:,} train+validation rows >= tune.cv_below_rows ({cv_below_rows:,})",
                      seed)
    if cv_folds:
        return Scheme(int(cv_folds), rows, f"tune.cv_folds: {cv_folds}", seed)
    return Scheme(None, rows, f"tune.cv_folds: {'null' if cv_folds is None else cv_folds}", seed)


def validation_scheme(meta: RunMeta, tune: TuneConfig, resources: ResourcesConfig) -> Scheme:
    """The scheme for this run's data (``choose_scheme`` with its row counts and trial mode)."""
    train_rows = meta.rows("train")
    rows = train_rows + meta.rows("validation")
    mode = trial_mode(min(train_rows, tune.sample_rows or train_rows), resources)
    return choose_scheme(tune.cv_folds, tune.cv_below_rows, rows, mode, tune.seed)


# ------------------------------------------------------------------------------------------ k-fold CV


@dataclass
class CVResult:
    """One configuration cross-validated: per-fold scores and best rounds, and out-of-fold predictions."""

    metric: str  # the LightGBM metric, scored on each fold's held-out rows at its best round
    fold_scores: list[float]
    fold_best_iterations: list[int]
    y: np.ndarray  # the labels, in the table's row order
    oof: np.ndarray  # each row's prediction by the fold model that did not train on it
    gain: dict[str, float]  # feature gain summed over the fold models
    models: list[str] = field(default_factory=list, repr=False)  # each fold model (LightGBM text, cut at its best round)

    @property
    def score(self) -> float:
        return float(np.mean(self.fold_scores))

    @property
    def score_std(self) -> float:
        return float(np.std(self.fold_scores))

    @property
    def rounds(self) -> int:
        """The rounded mean of the folds' best iterations."""
        return refit_rounds(float(np.mean(self.fold_best_iterations)))


def refit_rounds(best_iteration: float, scale: float = 1.0) -> int:
    """Rounds for the refit: ``best_iteration × scale``, rounded, at least one."""
    return max(1, int(round(best_iteration * scale)))


def _can_stratify(y: np.ndarray, folds: int) -> bool:
    """A class rarer than the folds cannot be spread over them."""
    _, counts = np.unique(y, return_counts=True)
    return bool(counts.min() >= folds)


def fold_indices(y: np.ndarray, folds: int, seed: int, stratified: bool) -> list[np.ndarray]:
    """Each fold's held-out row indices (sorted): stratified by label for classification."""
    from sklearn.model_selection import KFold, StratifiedKFold

    stratified = stratified and _can_stratify(y, folds)
    splitter = (StratifiedKFold if stratified else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    return [np.sort(test) for _, test in splitter.split(np.zeros(len(y)), y)]


def duplicate_groups(table: pa.Table) -> np.ndarray | None:
    """Each row's group of identical rows (features and label), or None when every row is distinct. The
    data split keeps identical rows together (a seeded hash of the whole row): CV folds must too, or a fold
    scores rows its model trained on, and a search that rewards memorising wins on the folds and loses on
    test (statsmodels' randhie: 20,190 rows, 9,125 distinct)."""
    from raygbm.data.split import row_hash

    h = row_hash(table, table.column_names)
    _, groups = np.unique(h, return_inverse=True)
    return groups if groups.max() + 1 < len(h) else None


def grouped_folds(table: pa.Table, y: np.ndarray, folds: int, seed: int, stratified: bool) -> list[np.ndarray] | None:
    """Where rows repeat, each fold's held-out row indices with identical rows kept together
    (``duplicate_groups``; stratified by label where the classes allow); None where every row is distinct."""
    groups = duplicate_groups(table)
    if groups is None:
        return None
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    stratified = stratified and _can_stratify(y, folds)
    splitter = (StratifiedGroupKFold if stratified else GroupKFold)(n_splits=folds, shuffle=True, random_state=seed)
    return [np.sort(test) for _, test in splitter.split(np.zeros(len(y)), y, groups)]


def cross_validate(table: pa.Table, meta: RunMeta, train: TrainConfig, folds: int, seed: int,
                   threads: int = 1) -> CVResult:
    """``folds`` models of ``train``'s configuration, each early-stopped on its own held-out fold.

    As ``lgb.cv`` does, the features are binned once on all rows and each fold uses a subset of that
    dataset; unlike ``lgb.cv`` every fold stops at its own best round, which gives the best iterations
    whose mean the refit uses, and out-of-fold predictions.
    """
    params = lgb_params(train, meta.task, meta.num_classes, threads)
    metric = metric_name(meta.task, train.metric)
    y = np.asarray(table.column(meta.label))
    full = lgb_dataset(table, meta.label, meta.categorical, params=params).construct()
    X = table.drop_columns([meta.label])
    oof = np.zeros((len(y), meta.num_classes) if meta.task == "multiclass" else len(y))
    scores, iterations, models, gain = [], [], [], dict.fromkeys(meta.features, 0.0)
    stratified = meta.task != "regression"
    for held in grouped_folds(table, y, folds, seed, stratified) or fold_indices(y, folds, seed, stratified):
        fit_rows = np.setdiff1d(np.arange(len(y)), held)
        dtrain, dvalid = full.subset(fit_rows.tolist()), full.subset(held.tolist())
        callbacks = []
        if train.early_stopping_rounds:
            callbacks.append(lgb.early_stopping(train.early_stopping_rounds, first_metric_only=True, verbose=False))
        booster = lgb.train(params, dtrain, num_boost_round=train.num_boost_round, valid_sets=[dvalid],
                            valid_names=["fold"], callbacks=callbacks)
        best = booster.best_iteration or booster.current_iteration()
        iterations.append(int(best))
        scores.append(float(booster.best_score["fold"][metric]))
        oof[held] = booster.predict(X.take(pa.array(held)), num_iteration=best)
        models.append(booster.model_to_string(num_iteration=best))
        for k, v in gain_importance(booster).items():
            gain[k] += v
    return CVResult(metric, scores, iterations, y, oof, gain, models)


def paired_comparison(metric: str, tuned: list[float], defaults: list[float]) -> dict[str, Any]:
    """The tuned configuration's fold scores against the defaults' on the same folds."""
    diff = np.asarray(tuned) - np.asarray(defaults)
    return {"mean_difference": float(diff.mean()), "folds_tuned_better": int(sum(
        better(metric, t, d) for t, d in zip(tuned, defaults)))}
