"""raygbm from Python: notebooks and scripts, the same pipeline as the CLI.

    import raygbm

    outcome = raygbm.run("data/", label="label", trials=4)   # preprocess, tune, train, evaluate, register
    print(outcome.version, outcome.decision, outcome.metrics["roc_auc"])
    model = raygbm.load_model()                              # the champion ("3" for a version)
    model.predict(df)                                        # DataFrame: prediction, score

``run`` starts an embedded Ray as ``raygbm run`` does (or joins ``RAY_ADDRESS``) and leaves it running
for the next call; ``load_model`` needs no Ray. Errors are the CLI's typed exceptions
(``raygbm.errors``), each with the exit code the CLI would give: a rejected challenger is an outcome
(``outcome.decision == "candidate"``), not an exception. Importing ``raygbm`` imports none of this until
an attribute is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from raygbm.registry.bundle import Bundle
    from raygbm.registry.register import Outcome


def _config(config: str | Path | None, overrides: dict[str, Any] | None, fields: dict[str, Any]) -> Any:
    import json

    from raygbm.config import load_config

    # ``key=value`` in the CLI's own syntax: the value as YAML (JSON is YAML), so lists and nulls pass.
    sets = [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()]
    return load_config(config, sets, fields)


def run(data: str | Path, label: str | None = None, *, config: str | Path | None = None,
        overrides: dict[str, Any] | None = None, task: str | None = None, trials: int | None = None,
        force: bool = False) -> Outcome:
    """The whole pipeline on Parquet shards (a folder, glob, file or URI), as ``raygbm run``:
    ``overrides`` are config keys, e.g. ``{"tune.trials": 8, "data.drop": ["id"]}``; ``trials=0`` skips
    tuning. Returns the registration's outcome (version, decision, reason, test metrics, report folder)."""
    from raygbm.data.schema import check_shards
    from raygbm.pipeline import run_pipeline
    from raygbm.runtime import ensure_ray

    cfg = _config(config, overrides, {"data.source": str(data), "data.label": label, "data.task": task,
                                      "tune.trials": trials or None})
    if not cfg.data.label:
        from raygbm.errors import DataError

        raise DataError("no label column given (label= or data.label in the config)")
    shards = check_shards(cfg.data.source, label=cfg.data.label, quarantine=cfg.data.quarantine,
                          extra=cfg.data.extra_shards)
    ensure_ray(cfg.resources, cfg.serve)
    outcome, _ = run_pipeline(cfg, force=force, tune=trials != 0, shards=shards)
    return outcome


@dataclass(frozen=True)
class Model:
    """A registered version, loaded and verified (every file against its manifest's sha256)."""

    name: str
    version: str
    bundle: Bundle

    @property
    def task(self) -> str:
        return self.bundle.task

    @property
    def features(self) -> list[str]:
        """The raw columns a row must carry (others are ignored)."""
        return list(self.bundle.preprocessor.input_columns)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Raw rows (a pandas DataFrame, or a pyarrow Table) → ``prediction`` (the label's own values) and
        ``score``, as the endpoint and the MLflow Model answer them; for multiclass also one
        ``proba_<class>`` column per class."""
        import pandas as pd
        import pyarrow as pa

        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        scores = self.bundle.scores(self.bundle.features(table))
        prediction, score = self.bundle.predictions(scores)
        out = pd.DataFrame({"prediction": prediction.to_pandas(), "score": score.to_numpy()})
        if self.bundle.task == "multiclass":
            for i, c in enumerate(self.bundle.preprocessor.label_classes_):
                out[f"proba_{c}"] = scores[:, i]
        return out


def load_model(version: str | int = "champion", *, config: str | Path | None = None,
               overrides: dict[str, Any] | None = None) -> Model:
    """A registered version (a number, or ``"champion"``) of the config's model, from the registry
    (``MLFLOW_TRACKING_URI``, or raygbm's own store under ``RAYGBM_HOME``), cached and verified locally."""
    from raygbm.registry.bundle import Bundle
    from raygbm.registry.store import Registry, local_bundle

    cfg = _config(config, overrides, {})
    ref, bundle_dir = local_bundle(Registry(cfg.registry), None if str(version) == "champion" else str(version))
    return Model(cfg.registry.model_name, ref.version, Bundle.load(bundle_dir))
