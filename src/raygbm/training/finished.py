"""The train stage's result kept on disk, so that a re-run after a crash in registration (or a re-run of
the same command) registers the model already trained instead of training again.

A finished training is a folder ``$RAYGBM_HOME/trained/<key>``: the model as LightGBM text,
``trained.json`` (the configuration it was trained with, its features, metrics and the selection
records) and ``heldout.npz`` (the out-of-sample labels and scores the decision threshold is chosen
on). The key hashes everything the result depends on: the data run, the train, tune, selection and
resources settings, and the search's best parameters. The folder is written under a hidden staging
name and renamed into place, so a folder that exists is whole. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from raygbm.config import PipelineConfig, TrainConfig
from raygbm.paths import home
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, TrainResult

FORMAT = 1  # bump when what a stage of the same inputs produces would change
MODEL_FILE, STATE_FILE, HELDOUT_FILE = "model.txt", "trained.json", "heldout.npz"


def trained_dir(meta: RunMeta, cfg: PipelineConfig, best_params: dict[str, Any] | None) -> Path:
    """Where the train stage of this data run, config and search result is kept."""
    key = json.dumps({"format": FORMAT, "run": meta.run_dir.name, "features": meta.features,
                      "train": cfg.train.model_dump(mode="json"), "tune": cfg.tune.model_dump(mode="json"),
                      "selection": cfg.evaluate.selection.model_dump(mode="json"),
                      "resources": cfg.resources.model_dump(mode="json"), "best_params": best_params},
                     sort_keys=True, default=_plain)
    return home() / "trained" / f"train-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _plain(v: Any) -> Any:
    """numpy scalars as Python numbers for JSON."""
    return v.item() if isinstance(v, np.generic) else str(v)


def save_trained(final: Path, trained: Trained, train: TrainConfig) -> None:
    """Write the finished stage to ``final`` (staged, then renamed: readers see all of it or nothing)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".staging-{final.name}-{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir()
        (staging / MODEL_FILE).write_text(trained.result.booster.model_to_string())
        if trained.heldout is not None:
            np.savez(staging / HELDOUT_FILE, y=trained.heldout[0], scores=trained.heldout[1])
        r, m = trained.result, trained.meta
        state = {"train": train.model_dump(mode="json"), "features": m.features, "categorical": m.categorical,
                 "metrics": r.metrics, "best_iteration": r.best_iteration, "timings": r.timings,
                 "selection": trained.selection, "comparison": trained.comparison,
                 "validation": trained.validation, "refit": trained.refit}
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1, default=_plain))
        if final.exists():  # a forced re-run: replace the older copy whole
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_trained(final: Path, meta: RunMeta) -> tuple[Trained, TrainConfig] | None:
    """The finished stage kept in ``final`` for the data run ``meta``, or None if there is none."""
    import lightgbm as lgb

    if not (final / STATE_FILE).exists():
        return None
    state = json.loads((final / STATE_FILE).read_text())
    booster = lgb.Booster(model_str=(final / MODEL_FILE).read_text())
    heldout = None
    if (final / HELDOUT_FILE).exists():
        with np.load(final / HELDOUT_FILE, allow_pickle=False) as z:
            heldout = (z["y"], z["scores"])
    used = meta.with_features(state["features"])
    result = TrainResult(booster, state["metrics"], int(state["best_iteration"]), state["timings"])
    trained = Trained(result, used, state["selection"], state["comparison"], state["validation"], state["refit"],
                      heldout)
    return trained, TrainConfig.model_validate(state["train"])
