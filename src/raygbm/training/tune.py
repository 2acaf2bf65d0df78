"""Hyperparameter search with Ray Tune: Optuna TPE (or random/grid) sampling, ASHA early stopping.

Two kinds of trial, picked by data size (``resources.trial_mode``):

- ``in_process``: the trial is a Tune function actor that runs ``lgb.train`` itself. A Tune report is a
  local call (unlike Ray Train's, which is a barrier across workers), and there is no Train worker
  group to start per trial. Trial actors are reused, and each caches the
  split tables it read, so a trial after the first pays only for building its ``lgb.Dataset``.
- ``ray_train``: the trial builds a multi-worker ``LightGBMTrainer`` (Train V2 inside Tune) whose workers'
  every-K-rounds reports reach Tune, and so ASHA, through ``TuneReportCallback``.

Every trial reports ``score`` (the validation metric, or the k-fold mean) and ``iteration``; ASHA uses
``iteration`` as its clock. Results live under ``$RAYGBM_HOME/tune/<name>`` so an interrupted search is
resumed with ``Tuner.restore`` instead of started again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa

from raygbm.config import ResourcesConfig, TrainConfig, TuneConfig
from raygbm.errors import ConfigError
from raygbm.metrics import best, tune_mode
from raygbm.paths import home, write_text_atomic
from raygbm.progress import Progress, no_progress
from raygbm.training.select import grouped_folds, validation_scheme
from raygbm.training.train import (
    ReportEveryK,
    RunMeta,
    best_metrics,
    boost,
    lgb_dataset,
    lgb_datasets,
    lgb_params,
    metric_name,
    train_with_ray,
    trial_mode,
)

BEST_FILE = "best.json"
# LightGBM wants these as integers; Tune's samplers (and a search's saved results) may hand back floats.
_INT_PARAMS = frozenset({"num_leaves", "min_data_in_leaf", "max_bin", "bagging_freq", "max_depth", "min_data_in_bin"})


def typed_params(params: dict[str, Any]) -> dict[str, Any]:
    """Sampled parameters with the types LightGBM takes them as."""
    return {k: int(v) if k in _INT_PARAMS else v for k, v in params.items()}


def search_space(space: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """Config space entries → Ray Tune domains."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, spec in space.items():
        kind, args = next(iter(spec.items()))
        if kind == "uniform":
            out[name] = tune.uniform(*args)
        elif kind == "loguniform":
            out[name] = tune.loguniform(*args)
        elif kind == "int":
            out[name] = tune.randint(int(args[0]), int(args[1]) + 1)
        elif kind == "logint":
            out[name] = tune.lograndint(int(args[0]), int(args[1]) + 1)
        elif kind == "choice":
            out[name] = tune.choice(args)
        else:
            out[name] = tune.grid_search(args)
    return out


def has_grid(space: dict[str, dict[str, list[Any]]]) -> bool:
    return any("grid" in spec for spec in space.values())


@dataclass
class TrialSetup:
    """What every trial needs besides its sampled params (shipped once via ``tune.with_parameters``)."""

    run_dir: str
    features: list[str]
    categorical: list[str]
    label: str
    task: str
    num_classes: int | None
    train: dict[str, Any]
    resources: dict[str, Any]
    trial_mode: str  # "in_process" or "ray_train"
    cv_folds: int | None
    cv_seed: int
    sample_rows: int | None
    storage: str

    @classmethod
    def of(cls, meta: RunMeta, train: TrainConfig, tune_cfg: TuneConfig, resources: ResourcesConfig, trial_mode: str,
           storage: Path, cv_folds: int | None) -> "TrialSetup":
        return cls(run_dir=str(meta.run_dir), features=meta.features, categorical=meta.categorical, label=meta.label,
                   task=meta.task, num_classes=meta.num_classes, train=train.model_dump(mode="json"),
                   resources=resources.model_dump(mode="json"), trial_mode=trial_mode, cv_folds=cv_folds,
                   cv_seed=tune_cfg.seed, sample_rows=tune_cfg.sample_rows, storage=str(storage))

    def meta(self) -> RunMeta:
        return RunMeta(Path(self.run_dir), self.label, self.task, self.num_classes, self.categorical, self.features)


def trial_train_config(base: dict[str, Any], params: dict[str, Any]) -> TrainConfig:
    return TrainConfig.model_validate({**base, "params": {**base["params"], **typed_params(params)}})


_TABLES: dict[tuple[Any, ...], tuple[pa.Table, pa.Table]] = {}


def sample_table(table: pa.Table, rows: int | None, seed: int) -> pa.Table:
    """A seeded sample of ``rows`` rows in their original order (the whole table if it is smaller)."""
    import numpy as np

    if rows is None or table.num_rows <= rows:
        return table
    idx = np.sort(np.random.default_rng(seed).choice(table.num_rows, rows, replace=False))
    return table.take(pa.array(idx))


def _split_tables(meta: RunMeta, sample_rows: int | None, seed: int) -> tuple[pa.Table, pa.Table]:
    """Train and validation tables, cached per trial actor (actors are reused across trials)."""
    key = (str(meta.run_dir), tuple(meta.features), sample_rows, seed)
    if key not in _TABLES:
        _TABLES.clear()
        _TABLES[key] = (sample_table(meta.split("train"), sample_rows, seed),
                        sample_table(meta.split("validation"), sample_rows, seed + 1))
    return _TABLES[key]


def tune_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """One trial: Ray Tune's function trainable."""
    import ray.tune

    meta = setup.meta()
    train = trial_train_config(setup.train, params)
    if setup.trial_mode == "ray_train":
        _ray_train_trial(meta, train, setup)
        return
    lgbp = lgb_params(train, meta.task, meta.num_classes, setup.resources["cpus_per_trial"])
    tr, va = _split_tables(meta, setup.sample_rows, setup.cv_seed)
    reporter = ReportEveryK(train.report_every, 10**9, lambda m, _model: ray.tune.report(m))
    if setup.cv_folds:
        final = _cv_trial(lgbp, pa.concat_tables([tr, va]), meta, train, setup, reporter)
    else:
        dtrain, dvalid = lgb_datasets(tr, va, meta.label, meta.categorical)
        booster = boost(lgbp, dtrain, dvalid, train, [reporter])
        final = {**best_metrics(booster), "iteration": booster.current_iteration(),
                 "best_iteration": booster.best_iteration or booster.current_iteration()}
    ray.tune.report(final)


def _ray_train_trial(meta: RunMeta, train: TrainConfig, setup: TrialSetup) -> None:
    """A trial that drives a multi-worker LightGBMTrainer; the workers' reports are the trial's."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    # The workers report every K rounds and at the end; TuneReportCallback forwards each report.
    train_with_ray(meta, train, ResourcesConfig.model_validate(setup.resources), Path(setup.storage) / "train",
                   f"trial-{trial_id}", callbacks=[TuneReportCallback()])


def _cv_trial(lgbp: dict[str, Any], full: pa.Table, meta: RunMeta, train: TrainConfig, setup: TrialSetup,
              reporter: ReportEveryK) -> dict[str, float]:
    """k-fold CV over train + validation; the final report: the best round's fold mean (and its spread)."""
    callbacks: list[Any] = [reporter]
    if train.early_stopping_rounds:
        callbacks.append(lgb.early_stopping(train.early_stopping_rounds, first_metric_only=True, verbose=False))
    # Where rows repeat, identical rows stay in one fold, as the data split keeps them (select.grouped_folds).
    held = grouped_folds(full, np.asarray(full.column(meta.label)), setup.cv_folds, setup.cv_seed, meta.task != "regression")
    folds = [(np.setdiff1d(np.arange(full.num_rows), h), h) for h in held] if held else None
    hist = lgb.cv(lgbp, lgb_dataset(full, meta.label, meta.categorical), num_boost_round=train.num_boost_round,
                  nfold=setup.cv_folds, stratified=meta.task != "regression", shuffle=True, seed=setup.cv_seed,
                  folds=folds, callbacks=callbacks)
    key = next(k for k in hist if k.endswith("-mean"))
    values = hist[key]
    best_i = best(lgbp["metric"], range(len(values)), key=values.__getitem__)
    return {"score": float(values[best_i]), f"cv-{lgbp['metric']}": float(values[best_i]),
            f"cv-{lgbp['metric']}-stdv": float(hist[key.replace("-mean", "-stdv")][best_i]),
            "iteration": len(values), "best_iteration": best_i + 1}


# ------------------------------------------------------------------------------------------- the search


@dataclass
class TuneResult:
    name: str
    path: Path
    best_params: dict[str, Any]
    best_score: float
    metric: str  # the LightGBM metric the trials were scored on
    mode: str  # Tune's mode for that metric: "max" or "min"
    trials: list[dict[str, Any]]  # one per trial (trial_record): id, params, score, iterations, status, history
    wall_s: float
    trial_mode: str
    restored: bool = False
    fit_s: float = 0.0  # Tuner.fit() alone
    concurrency: int = 1
    cv_folds: int | None = None  # the trials' scheme: k-fold CV on train + validation, or None: the holdout

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TuneResult":
        return cls(**{**d, "path": Path(d["path"])})


def experiment_name(meta: RunMeta, train: TrainConfig, tune: TuneConfig, resources: ResourcesConfig) -> str:
    """Same data, schedule and search → same name, so a crashed search is found and restored. (The refit
    settings do not change the trials: a new refit reuses the search.)"""
    schedule = train.model_dump(mode="json", exclude={"refit", "refit_rounds_scale", "ensemble"})
    key = json.dumps({"run": meta.run_dir.name, "features": meta.features, "train": schedule,
                      "tune": tune.model_dump(mode="json"), "mode": resources.trial_mode}, sort_keys=True)
    return f"tune-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class TrialPlan:
    """How the trials run on this cluster."""

    trial_mode: str  # "in_process" or "ray_train"
    resources: dict[str, float]  # what each trial asks Tune for
    concurrency: int  # trials at a time


def plan_trials(train_rows: int, tune_cfg: TuneConfig, resources: ResourcesConfig, cluster_cpus: int) -> TrialPlan:
    """The kind of trial for the (sampled) data size, its resource request, and how many fit at once."""
    kind = trial_mode(min(train_rows, tune_cfg.sample_rows or train_rows), resources)
    if kind == "ray_train" and tune_cfg.cv_folds not in ("auto", None, 0):
        raise ConfigError("tune.cv_folds needs in-process trials (resources.trial_mode: in_process): "
                          "k-fold CV is meant for data small enough to fit one worker")
    if kind == "in_process":
        per_trial: dict[str, float] = {"CPU": resources.cpus_per_trial}
        need = resources.cpus_per_trial
    else:
        # The trial itself only drives a LightGBMTrainer; its workers hold the CPUs. Capping concurrency
        # at what the workers can get keeps N trial drivers from waiting forever on each other's CPUs.
        # (Tune refuses an empty request, so the driver asks for a little memory and no CPU.)
        per_trial = {"CPU": 0, "memory": 64 * 1024 * 1024}
        need = resources.num_workers * resources.cpus_per_worker
    if need > cluster_cpus:
        raise ConfigError(f"a trial needs {need} CPUs but the cluster has {cluster_cpus}: lower resources.num_workers, "
                          "cpus_per_worker or cpus_per_trial")
    fits = cluster_cpus // need
    return TrialPlan(kind, per_trial, min(resources.max_concurrent_trials or fits, fits) or 1)


def _search_algorithm(tune_cfg: TuneConfig) -> Any:
    """Optuna TPE, or Tune's random search; None (Tune's own variant generator) for a grid."""
    if has_grid(tune_cfg.space):
        return None
    if tune_cfg.search == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=tune_cfg.seed,
                                                               n_startup_trials=min(8, tune_cfg.trials or 8)))
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=tune_cfg.seed)


def _open_tuner(trainable: Any, path: Path, train: TrainConfig, tune_cfg: TuneConfig, mode: str, plan: TrialPlan,
                force: bool, progress: Progress) -> tuple[Any, bool]:
    """The interrupted search saved at ``path`` restored, or a new one there; returns (tuner, restored)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from raygbm.training.budget import ScoredTimeBudget

    if path.exists() and tune.Tuner.can_restore(str(path)) and not force:
        progress(f"resuming interrupted search {path}")
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True), True
    if path.exists():
        shutil.rmtree(path)
    scheduler = (
        ASHAScheduler(time_attr="iteration", max_t=train.num_boost_round,
                      grace_period=min(tune_cfg.grace_period, train.num_boost_round),
                      reduction_factor=tune_cfg.reduction_factor)
        if tune_cfg.asha else FIFOScheduler()
    )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(tune_cfg.space),
        tune_config=tune.TuneConfig(
            # num_samples -1: sample until the time budget ends the search.
            metric="score", mode=mode, num_samples=tune_cfg.trials or -1,
            search_alg=_search_algorithm(tune_cfg), scheduler=scheduler, max_concurrent_trials=plan.concurrency,
            reuse_actors=plan.trial_mode == "in_process",
        ),
        run_config=tune.RunConfig(
            name=path.name, storage_path=str(path.parent), verbose=0,
            stop=ScoredTimeBudget(tune_cfg.time_budget_s) if tune_cfg.time_budget_s else None,
            failure_config=tune.FailureConfig(max_failures=1),
            # Trials are cheap to rerun; Tune keeps only the experiment state it needs to restore.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    return tuner, False


def _fit(tuner: Any) -> tuple[Any, float]:
    """``tuner.fit()`` and its wall time."""
    # Tune's own console tables would interleave with our progress display.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with warnings.catch_warnings():
        # Optuna warns for every intermediate value a restored trial reports again.
        warnings.filterwarnings("ignore", message="The reported value is ignored", category=UserWarning)
        t = time.perf_counter()
        grid = tuner.fit()
        return grid, time.perf_counter() - t


def trial_record(result: Any, train: TrainConfig, metric: str) -> dict[str, Any]:
    """One finished (or stopped, or failed) trial as a plain dict: what TuneResult keeps of it."""
    m = result.metrics or {}
    hist = result.metrics_dataframe
    history = [] if hist is None or "score" not in hist else [
        [int(i), float(s)] for i, s in zip(hist["iteration"], hist["score"]) if not _nan(s)]
    return {
        "trial_id": m.get("trial_id"),
        "params": {k: v for k, v in (result.config or {}).items()},
        "score": best(metric, [s for _, s in history]) if history else None,
        "iterations": int(m.get("iteration", 0) or 0),
        "time_s": float(m.get("time_total_s", 0.0) or 0.0),
        "status": "error" if result.error else ("complete" if _completed(m, train) else "stopped early"),
        "history": history,
        # The LightGBM metrics of the trial's last report: validation-<metric>, or cv-<metric> when it
        # cross-validated.
        "last_metrics": {k: float(v) for k, v in m.items() if k.startswith(("validation-", "cv-")) and not _nan(v)},
    }


def _best_trial(trials: list[dict[str, Any]], grid: Any, metric: str) -> dict[str, Any]:
    scored = [t for t in trials if t["score"] is not None]
    if not scored:
        first_error = next((r.error for r in grid if r.error), None)
        if first_error is None:
            raise ConfigError("the search ended before any tuning trial reported a score")
        raise ConfigError(f"every tuning trial failed: {first_error}")
    return best(metric, scored, key=lambda t: t["score"])


def tune_search(
    meta: RunMeta,
    train: TrainConfig,
    tune_cfg: TuneConfig,
    resources: ResourcesConfig,
    *,
    progress: Progress = no_progress,
    force: bool = False,
) -> TuneResult:
    """Run (or resume, or reuse) the search; Ray must be initialised."""
    import ray
    from ray import tune

    t0 = time.perf_counter()
    path = home() / "tune" / experiment_name(meta, train, tune_cfg, resources)
    if (path / BEST_FILE).exists() and not force:
        progress(f"reusing finished search {path}")
        return TuneResult.from_dict(json.loads((path / BEST_FILE).read_text()))

    metric = metric_name(meta.task, train.metric)
    mode = tune_mode(metric)
    plan = plan_trials(meta.rows("train"), tune_cfg, resources, int(ray.cluster_resources().get("CPU", 1)))
    scheme = validation_scheme(meta, tune_cfg, resources)
    setup = TrialSetup.of(meta, train, tune_cfg, resources, plan.trial_mode, path, scheme.folds)
    trainable = tune.with_resources(tune.with_parameters(tune_trial, setup=setup), plan.resources)
    tuner, restored = _open_tuner(trainable, path, train, tune_cfg, mode, plan, force, progress)
    budget = " ".join(filter(None, [f"{tune_cfg.trials} trials" if tune_cfg.trials else "",
                                    f"{tune_cfg.time_budget_s:g} s" if tune_cfg.time_budget_s else ""]))
    progress(f"tuning: {budget}, {plan.trial_mode.replace('_', '-')}, {plan.concurrency} at a time, "
             f"scored by {scheme.describe()}")
    grid, fit_s = _fit(tuner)
    trials = [trial_record(r, train, metric) for r in grid]
    top = _best_trial(trials, grid, metric)
    result = TuneResult(name=path.name, path=path, best_params=top["params"], best_score=top["score"], metric=metric,
                        mode=mode, trials=trials, wall_s=time.perf_counter() - t0,
                        trial_mode=plan.trial_mode, restored=restored, fit_s=fit_s, concurrency=plan.concurrency,
                        cv_folds=scheme.folds)
    write_text_atomic(path / BEST_FILE, json.dumps(result.to_dict(), indent=1, default=str))
    return result


def _completed(m: dict[str, Any], train: TrainConfig) -> bool:
    """Ran to its end: the final report (it carries best_iteration) or ASHA's max_t."""
    return "best_iteration" in m or int(m.get("iteration", 0) or 0) >= train.num_boost_round


def _nan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True
