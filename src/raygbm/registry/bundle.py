"""The model bundle: its file format, its manifest, and loading one (text and JSON only).

A bundle is a folder: the LightGBM text model, the preprocessor JSON, the schema, the test metrics, the
LightGBM parameters, the drift monitor's reference profile, and ``manifest.json`` with the sha256 of
every other file (``register.write_bundle`` writes one). The registry stores the manifest's own sha256 as a tag on the model version, so a
bundle read back is verified end to end. Nothing is ever unpickled. Batch prediction, the champion
gate and the endpoint all load a ``Bundle``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from raygbm.errors import DataError, RegistryError
from raygbm.paths import sha256_file

if TYPE_CHECKING:  # lightgbm and the preprocessor load on first use: the registry imports this module
    import lightgbm as lgb

    from raygbm.data.features import Preprocessor

MODEL_FILE = "model.txt"
PREPROCESSOR_FILE = "preprocessor.json"
SCHEMA_FILE = "schema.json"
METRICS_FILE = "metrics.json"
PARAMS_FILE = "params.json"
MANIFEST_FILE = "manifest.json"
BUNDLE_FORMAT = "raygbm.bundle/1"


def write_manifest(bundle: Path) -> str:
    """Write ``manifest.json`` over every other file in the bundle; returns the manifest's sha256."""
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    manifest = {"format": BUNDLE_FORMAT, "sha256": {str(p.relative_to(bundle)): sha256_file(p) for p in files}}
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return sha256_file(bundle / MANIFEST_FILE)


def verify_bundle(bundle: Path, manifest_sha256: str | None) -> dict[str, Any]:
    """Check the manifest (against the pinned hash) and every file it lists; returns the manifest."""
    mpath = bundle / MANIFEST_FILE
    if not mpath.exists():
        raise RegistryError(f"{bundle}: no {MANIFEST_FILE}: not a raygbm model bundle")
    found = sha256_file(mpath) if manifest_sha256 else None
    if manifest_sha256 and found != manifest_sha256:
        raise RegistryError(f"{bundle}: {MANIFEST_FILE} does not match the sha256 pinned in the registry "
                            f"(sha256 {found}, pinned {manifest_sha256})")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != BUNDLE_FORMAT:
        raise RegistryError(f"{bundle}: unknown bundle format {manifest.get('format')!r}")
    for rel, digest in manifest["sha256"].items():
        p = bundle / rel
        if not p.exists():
            raise RegistryError(f"{bundle}: {rel} is missing")
        found = sha256_file(p)
        if found != digest:
            raise RegistryError(f"{bundle}: {rel} does not match its sha256 in the manifest "
                                f"(sha256 {found}, manifest {digest})")
    return manifest


@dataclass
class Bundle:
    path: Path
    booster: lgb.Booster
    preprocessor: Preprocessor
    metrics: dict[str, Any]

    @classmethod
    def load(cls, path: Path, manifest_sha256: str | None = None) -> "Bundle":
        import lightgbm as lgb

        from raygbm.data.features import Preprocessor

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
        wanted = self.preprocessor.input_columns
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise DataError(f"input lacks column(s) the model needs: {', '.join(missing[:8])}")
        duplicated = [c for c in wanted if schema.names.count(c) > 1]
        if duplicated:
            raise DataError(f"input has duplicated column(s) the model needs: {', '.join(duplicated[:8])}")
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
                ok = str(got) == trained or pa.types.is_timestamp(got) and str(trained).startswith(("timestamp", "date"))
            if not ok:
                raise DataError(f"column {c!r} is {got}, but the model was trained on {trained}")

    def features(self, raw: pa.Table) -> pa.Table:
        """Raw rows → the model's features (and the encoded label when present)."""
        self.check_columns(raw.schema)
        return self.preprocessor.transform_table(raw)

    def scores(self, features: pa.Table) -> np.ndarray:
        from raygbm.registry.evaluate import features_matrix

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

    def _labelled_features(self, raw: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """Raw labelled rows → (the model's features, the encoded label)."""
        feats = self.features(raw)
        y = np.asarray(feats.column(self.preprocessor.schema.label))
        if self.task != "regression" and (y < 0).any():
            raise DataError("the data has label values this model never saw")
        return feats, y

    def test_metrics(self, raw: pa.Table) -> dict[str, Any]:
        """Every task metric on raw labelled rows, through this bundle's own preprocessing."""
        from raygbm.metrics import task_metrics

        feats, y = self._labelled_features(raw)
        k = len(self.preprocessor.label_classes_ or []) or None
        return task_metrics(self.task, y, self.scores(feats), self.threshold, k)

    def test_metric(self, raw: pa.Table, metric: str) -> float:
        """The gate metric on raw labelled rows."""
        return float(self.test_metrics(raw)[metric])

    def evidence(self, raw: pa.Table, metric: str) -> dict[str, Any]:
        """What raw labelled rows say about this model, beside what they would say about no model at all:
        ``value`` (its metric), ``chance`` (the metric of a constant prediction of these rows' own label
        prior: AUC 0.5, the prior's log loss, the labels' standard deviation as RMSE) and ``shares`` (each
        class's share of the labels; None for regression). The loop checks labels against them."""
        from raygbm.metrics import task_metrics

        feats, y = self._labelled_features(raw)
        classes = self.preprocessor.label_classes_ or []
        k = len(classes) or None
        if self.task == "regression":
            constant, shares = np.full(len(y), y.mean()), None
        else:
            prior = np.bincount(y.astype(int), minlength=len(classes)) / max(len(y), 1)
            constant = np.full(len(y), prior[1]) if self.task == "binary" else np.tile(prior, (len(y), 1))
            shares = {str(c): float(prior[i]) for i, c in enumerate(classes)}
        try:
            value = float(task_metrics(self.task, y, self.scores(feats), self.threshold, k)[metric])
            chance = float(task_metrics(self.task, y, constant, self.threshold, k)[metric])
        except ValueError as exc:  # e.g. one class only: AUC undefined
            raise DataError(f"{metric} is undefined on these rows ({exc})") from None
        return {"value": value, "chance": chance, "shares": shares, "rows": len(y)}
