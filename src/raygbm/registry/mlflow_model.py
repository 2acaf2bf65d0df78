"""The bundle as an MLflow Model: a pyfunc flavour written into the bundle folder, so a registered version
loads with ``mlflow.pyfunc.load_model("models:/<name>@champion")`` (and ``mlflow models serve``, MLflow's
evaluation, and serving runtimes that load MLflow models).

It is saved with MLflow's "models from code": the python model is the source file ``pyfunc_code.py``, copied
into the bundle and run by MLflow at load time, so nothing is pickled. That file loads the bundle it sits in
through ``Bundle.load`` (every file checked against the manifest's sha256) and scores through the same
``features`` → ``scores`` → ``labelled`` path as the endpoint. The signature and input example come from the
training schema: the raw input columns a request carries, not the preprocessed features.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raygbm.data.schema import arrow_type as value_type

if TYPE_CHECKING:
    import pandas as pd

    from raygbm.data.features import Preprocessor
    from raygbm.registry.bundle import Bundle

CODE_FILE = Path(__file__).with_name("pyfunc_code.py")
# What `mlflow models serve` (its own environment) needs to load the model: raygbm itself and what its
# bundle loading imports, at the versions this model was saved with.
REQUIREMENTS = ("lightgbm", "numpy", "pandas", "pyarrow", "pydantic", "pyyaml", "mlflow-skinny")
# An input example's time for timestamp columns: the schema has no typical value for them. MLflow's
# ``datetime`` columns are timezone-naive; the preprocessor reads naive times as UTC (``as_training_time``).
EXAMPLE_TIME = datetime(2024, 1, 1, 12)


def _mlflow_type(arrow_type: str, numeric: bool) -> str:
    """The MLflow column type of a raw column from its Arrow type name. Numeric features are read as
    float64 whatever their stored type, so they are ``double``: an integer column with missing values
    reaches pandas as float64 with NaN."""
    if numeric:
        return "double"
    t = arrow_type.lower()
    if t.startswith("dictionary<"):
        # The values are the column's type (pandas writes every categorical as
        # ``dictionary<values=string, indices=int8, ordered=0>``); the indices are an encoding detail.
        t = str(value_type(arrow_type)).lower()
    if t.startswith("timestamp") or t.startswith("date"):
        return "datetime"
    if t == "bool":
        return "boolean"
    if t in ("int8", "int16", "int32", "uint8", "uint16"):
        return "integer"
    if "int" in t:
        return "long"
    if t in ("float", "halffloat", "float32", "float16"):
        return "float"
    if t in ("double", "float64"):
        return "double"
    return "string"


def _pandas_extension(arrow_type: str) -> bool:
    """Whether pandas reads a column of this training type back as one of its own dtypes that MLflow's
    schema check refuses for every MLflow type: ``category`` (a dictionary column), nullable ``Int64``
    and ``boolean`` (integers and booleans that pandas wrote). Such a column is declared ``Any``:
    ``BundleScorer`` checks it against the training type, as the endpoint does."""
    t = arrow_type.lower()
    return t.startswith("dictionary<") or t == "bool" or t.startswith(("int", "uint"))


def signature(pre: Preprocessor) -> Any:
    """Inputs: the raw columns the model reads (with their training types); outputs: prediction, score."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    numeric = set(pre.numeric_features)
    types = pre.schema.types
    inputs = Schema([ColSpec(AnyType() if _pandas_extension(types.get(c, "")) else
                             _mlflow_type(types.get(c, "string"), c in numeric), c) for c in pre.input_columns])
    if pre.task_ == "regression":
        prediction = "double"
    else:
        prediction = _mlflow_type(pre.schema.types.get(pre.schema.label, "string"), False)
    outputs = Schema([ColSpec(prediction, "prediction"), ColSpec("double", "score")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(pre: Preprocessor, rows: int = 2) -> pd.DataFrame:
    """Rows made from the training schema and the preprocessor's statistics: each numeric feature at its
    imputation value (the training median by default), each categorical at its most frequent categories,
    timestamps at ``EXAMPLE_TIME``. No training row is copied into the model."""
    import pandas as pd

    cols: dict[str, list[Any]] = {}
    numeric = set(pre.numeric_features)
    for c in pre.input_columns:
        kind = _mlflow_type(pre.schema.types.get(c, "string"), c in numeric)
        if c in numeric:
            cols[c] = [float(pre.impute_.get(c, 0.0))] * rows
        elif c in pre.categories_ and pre.categories_[c]:
            cats = pre.categories_[c]
            cols[c] = [cats[i % len(cats)] for i in range(rows)]
        elif kind == "datetime":
            cols[c] = [EXAMPLE_TIME] * rows
        elif kind == "boolean":
            cols[c] = [False] * rows
        elif kind in ("integer", "long", "float", "double"):
            cols[c] = [0] * rows
        else:
            cols[c] = [""] * rows
    return pd.DataFrame(cols)


def requirements() -> list[str]:
    from raygbm._version import __version__

    return [f"raygbm=={__version__}"] + [f"{name}=={version(name)}" for name in REQUIREMENTS]


def write_pyfunc(bundle_dir: Path, pre: Preprocessor) -> list[str]:
    """Add the pyfunc flavour to a bundle being written (before its manifest, which then covers the
    flavour's files too). MLflow saves into an empty folder, so it saves beside the bundle and the files
    move in. Returns the names of the files added."""
    from mlflow.pyfunc import save_model

    from raygbm.registry.store import silence_mlflow_logging

    silence_mlflow_logging()
    work = Path(tempfile.mkdtemp(prefix=".pyfunc-", dir=bundle_dir.parent))
    try:
        saved = work / "model"
        save_model(str(saved), python_model=str(CODE_FILE), signature=signature(pre), input_example=input_example(pre),
                   pip_requirements=requirements(), metadata={"raygbm_bundle": "raygbm.bundle/1"})
        _deterministic(saved / "MLmodel", bundle_dir)
        added = []
        for p in sorted(saved.iterdir()):
            if (bundle_dir / p.name).exists():
                raise FileExistsError(f"{p.name}: both a bundle file and an MLflow model file")
            shutil.move(str(p), bundle_dir / p.name)
            added.append(p.name)
        return added
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _deterministic(mlmodel: Path, bundle_dir: Path) -> None:
    """The same model gives the same bundle, byte for byte (registration finds an interrupted one by its
    manifest hash): MLflow's random ``model_uuid`` becomes one derived from the bundle's files written so
    far, and its save time is left out (MLflow fills it in when the model is loaded)."""
    import hashlib
    import uuid

    import yaml

    digest = hashlib.sha256()
    for f in sorted(p for p in bundle_dir.iterdir() if p.is_file()):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    doc = yaml.safe_load(mlmodel.read_text())
    doc["model_uuid"] = uuid.UUID(bytes=digest.digest()[:16], version=5).hex
    doc.pop("utc_time_created", None)
    mlmodel.write_text(yaml.safe_dump(doc, sort_keys=True))


class BundleScorer:
    """The pyfunc model's logic: raw rows in a DataFrame → ``prediction`` and ``score``, as the endpoint
    answers them."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle

    @classmethod
    def load(cls, bundle_dir: Path) -> "BundleScorer":
        from raygbm.registry.bundle import Bundle

        return cls(Bundle.load(bundle_dir))

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd
        import pyarrow as pa

        table = pa.Table.from_pandas(frame, preserve_index=False)
        prediction, score = self.bundle.predictions(self.bundle.scores(self.bundle.features(table)))
        return pd.DataFrame({"prediction": prediction.to_pandas(), "score": score.to_numpy()})
