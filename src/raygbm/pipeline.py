"""The stages composed: preprocess → tune → fit the best (or LightGBM's defaults) → evaluate → register.

Each stage lives in its own package (``data``, ``training``, ``registry``); this module only runs them in
order. Ray must be initialised by the entry point.
"""

from __future__ import annotations

from typing import Any

from raygbm.config import PipelineConfig
from raygbm.data.preprocess import preprocess
from raygbm.progress import Progress, no_progress
from raygbm.registry.register import Outcome, evaluate_and_register
from raygbm.training.fit import keep_better_than_defaults, train_final
from raygbm.training.train import RunMeta
from raygbm.training.tune import TuneResult, tune_search, typed_params


def run_pipeline(cfg: PipelineConfig, *, progress: Progress = no_progress, force: bool = False, tune: bool = True,
                 shards: Any = None) -> tuple[Outcome, TuneResult | None]:
    """Preprocess, tune (unless ``tune`` is false), train with the best parameters (or LightGBM's
    defaults, when they validate better), evaluate and register; returns the outcome and the search."""
    pre = preprocess(cfg, progress=progress, force=force, shards=shards)
    meta = RunMeta.load(pre.run_dir)
    train = cfg.train
    tuning = None
    if tune:
        tuning = tune_search(meta, cfg.train, cfg.tune, cfg.resources, progress=progress, force=force)
        progress(f"best validation {tuning.metric} {tuning.best_score:.6g} after {len(tuning.trials)} trials")
        train = cfg.train.model_copy(update={"params": {**cfg.train.params, **typed_params(tuning.best_params)}})
    trained = train_final(meta, train, cfg.evaluate, cfg.resources, progress)
    if tuning is not None and cfg.tune.compare_defaults:
        trained, train = keep_better_than_defaults(meta, trained, train, cfg, tuning.metric, progress)
    return evaluate_and_register(meta, trained, train, cfg.evaluate, cfg.registry, tuning, progress,
                                 monitor=cfg.monitor), tuning

