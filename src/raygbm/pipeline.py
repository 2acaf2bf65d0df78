"""The stages composed: preprocess → tune → score the best (and LightGBM's defaults) by the validation
scheme → refit the winner on train + validation → evaluate on test → register.

Each stage lives in its own package (``data``, ``training``, ``registry``); this module only runs them in
order. Ray must be initialised by the entry point.
"""

from __future__ import annotations

from typing import Any

from raygbm.config import PipelineConfig, TrainConfig
from raygbm.data.preprocess import preprocess
from raygbm.errors import stage
from raygbm.progress import Progress, no_progress
from raygbm.registry.register import Outcome, evaluate_and_register
from raygbm.training.finished import load_trained, save_trained, trained_dir
from raygbm.training.fit import Trained, final_model, keep_better_than_defaults, score_configuration
from raygbm.training.select import validation_scheme
from raygbm.training.train import RunMeta
from raygbm.training.tune import TuneResult, tune_search, typed_params


def run_pipeline(cfg: PipelineConfig, *, progress: Progress = no_progress, force: bool = False, tune: bool = True,
                 shards: Any = None, promote: bool = True) -> tuple[Outcome, TuneResult | None]:
    """Preprocess, tune (unless ``tune`` is false), then ``train_and_register``; returns the outcome and
    the search. ``promote`` false: the model is registered as a candidate whatever the gate says."""
    with stage("data"):
        pre = preprocess(cfg, progress=progress, force=force, shards=shards)
        meta = RunMeta.load(pre.run_dir)
    tuning = None
    if tune:
        with stage("tune"):
            tuning = tune_search(meta, cfg.train, cfg.tune, cfg.resources, progress=progress, force=force)
        progress(f"best {tuning.metric} {tuning.best_score:.6g} after {len(tuning.trials)} trials")
    return train_and_register(meta, cfg, tuning, progress, force=force, promote=promote), tuning


def train_and_register(meta: RunMeta, cfg: PipelineConfig, tuning: TuneResult | None = None,
                       progress: Progress = no_progress, *, force: bool = False, promote: bool = True) -> Outcome:
    """Score ``train.params`` (with the search's best over them) by the validation scheme, keep LightGBM's
    defaults instead when they score better (after a search), fit the registered model (the refit on
    train + validation, unless ``train.refit`` is off), evaluate it on test and register it. A training
    already finished for the same data, config and search (``training.finished``) is reused unless ``force``."""
    kept = trained_dir(meta, cfg, tuning.best_params if tuning else None)
    found = None if force else load_trained(kept, meta)
    if found is not None:
        progress(f"reusing finished training {kept}")
        trained, train = found
    else:
        with stage("train"):
            trained, train = _train(meta, cfg, tuning, progress)
            save_trained(kept, trained, train)
    with stage("register"):
        return evaluate_and_register(meta, trained, train, cfg.evaluate, cfg.registry, tuning, progress,
                                     monitor=cfg.monitor, promote=promote)


def _train(meta: RunMeta, cfg: PipelineConfig, tuning: TuneResult | None,
           progress: Progress) -> tuple[Trained, TrainConfig]:
    """The train stage: the selected configuration's registered model, and that configuration."""
    scheme = validation_scheme(meta, cfg.tune, cfg.resources)
    progress(f"selection by {scheme.describe()} ({scheme.reason})")
    train = cfg.train
    if tuning is not None:
        train = cfg.train.model_copy(update={"params": {**cfg.train.params, **typed_params(tuning.best_params)}})
    candidate = score_configuration(meta, train, scheme, cfg.evaluate, cfg.resources, progress)
    if tuning is not None and cfg.tune.compare_defaults:
        candidate = keep_better_than_defaults(meta, candidate, cfg, progress)
    return final_model(candidate, cfg.resources, progress), candidate.train
