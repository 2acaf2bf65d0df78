"""A model bundle on disk: what batch prediction, the gate and the endpoint load (text and JSON only)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa

from raygbm.errors import DataError
from raygbm.evaluate import features_matrix, task_metrics
from raygbm.features import Preprocessor
from raygbm.registry import MODEL_FILE, PREPROCESSOR_FILE, verify_bundle

METRICS_FILE = "metrics.json"


@dataclass
class Bundle:
    path: Path
    booster: lgb.Booster
    preprocessor: Preprocessor
    metrics: dict[str, Any]

    @classmethod
    def load(cls, path: Path, manifest_sha256: str | None = None) -> "Bundle":
        path = Path(path)
        verify_bundle(path, manifest_sha256)
        booster = lgb.Booster(model_file=str(path / MODEL_FILE))
        pre = Preprocessor.from_json((path / PREPROCESSOR_FILE).read_text())
        metrics = json.loads((path / METRICS_FILE).read_text()) if (path / METRICS_FILE).exists() else {}
        return cls(path, booster, pre, metrics)

    @property
    def task(self) -> str:
        return self.preprocessor.task_

    @property
    def threshold(self) -> float:
        return float(self.metrics.get("threshold", 0.5))

    def check_columns(self, schema: pa.Schema) -> None:
        """Every raw column the model reads is present, numeric where it was numeric, and of the
        training type for categorical columns (codes are looked up by value)."""
        s = self.preprocessor.schema
        wanted = list(dict.fromkeys(s.features + s.derived_inputs + [c for d in self.preprocessor.config.derived for c in d.inputs]))
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise DataError(f"input lacks column(s) the model needs: {', '.join(missing[:8])}")
        for c in wanted:
            got, trained = schema.field(c).type, s.types.get(c)
            if pa.types.is_dictionary(got):
                got = got.value_type
            if c in s.categorical:
                ok = str(got) == trained or (pa.types.is_string(got) or pa.types.is_large_string(got)) == ("string" in str(trained))
                ok = ok and (pa.types.is_integer(got) or pa.types.is_string(got) or pa.types.is_large_string(got) or pa.types.is_boolean(got))
            elif c in s.numeric:
                ok = pa.types.is_integer(got) or pa.types.is_floating(got) or pa.types.is_boolean(got)
            else:
                ok = str(got) == trained or pa.types.is_timestamp(got) and "timestamp" in str(trained)
            if not ok:
                raise DataError(f"column {c!r} is {got}, but the model was trained on {trained}")

    def features(self, raw: pa.Table) -> pa.Table:
        """Raw rows → the model's features (and the encoded label when present)."""
        self.check_columns(raw.schema)
        return self.preprocessor.transform_table(raw)

    def scores(self, features: pa.Table) -> np.ndarray:
        return self.booster.predict(features_matrix(self.booster, features), num_threads=0)

    def labelled(self, scores: np.ndarray) -> tuple[list[Any], np.ndarray]:
        """(prediction in the label's own values, score): the positive-class probability for binary,
        the winning class's probability for multiclass, the value itself for regression. Plain Python
        and numpy: the endpoint maps every request through this."""
        classes = self.preprocessor.label_classes_
        if self.task == "binary":
            return [classes[i] for i in (scores >= self.threshold).tolist()], scores
        if self.task == "multiclass":
            return [classes[i] for i in scores.argmax(axis=1).tolist()], scores.max(axis=1)
        return scores.tolist(), scores

    def predictions(self, scores: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """``labelled`` as Arrow columns (the batch paths)."""
        prediction, score = self.labelled(scores)
        return pa.array(prediction), pa.array(score, pa.float64())

    def test_metrics(self, raw: pa.Table) -> dict[str, Any]:
        """Every task metric on raw labelled rows, through this bundle's own preprocessing."""
        feats = self.features(raw)
        y = np.asarray(feats.column(self.preprocessor.schema.label))
        if self.task != "regression" and (y < 0).any():
            raise DataError("the data has label values this model never saw")
        k = len(self.preprocessor.label_classes_ or []) or None
        return task_metrics(self.task, y, self.scores(feats), self.threshold, k)

    def test_metric(self, raw: pa.Table, metric: str) -> float:
        """The gate metric on raw labelled rows."""
        return float(self.test_metrics(raw)[metric])
