"""The bundle as an MLflow Model: a pyfunc flavour written into the bundle folder, so a registered version
loads with ``mlflow.pyfunc.load_model("models:/<name>@champion")`` (and ``mlflow models serve``, MLflow's
evaluation, and serving runtimes that load MLflow models).

It is saved with MLflow's "models from code": the python model is the source file ``pyfunc_code.py``, copied
into the bundle and run by MLflow at load time, so nothing is pickled. That file loads the bundle it sits in
through ``Bundle.load`` (every file checked against the manifest's sha256) and scores through the same
``features`` → ``scores`` → ``labelled`` path as the endpoint. The signature and input example come from the
training schema: the raw input columns a request carries, not the preprocessed features, so the rows read
back from the training shards (``pyarrow``'s ``to_pandas`` or ``pd.read_parquet``) score as they are.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raygbm.data.schema import arrow_type as value_type

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from raygbm.data.features import Preprocessor
    from raygbm.registry.bundle import Bundle

CODE_FILE = Path(__file__).with_name("pyfunc_code.py")
# raygbm's own source travels in the model (``code/raygbm``, MLflow's ``code_paths``: put on ``sys.path``
# when the model loads), so an environment with only MLflow and the requirements below loads and scores it
# (``mlflow models serve``, KServe's and SageMaker's MLflow runtimes). Where raygbm is imported already, that
# copy is used instead.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# What the bundle's loading and scoring import, pinned at the versions the model was saved with (the scores
# depend on them), except pyarrow, which only reads and builds tables: a floor, because the full ``mlflow``
# package that serving environments install beside these caps pyarrow below 26 up to 3.17 (see
# ``raygbm.ui``), and a pin would leave the environment unresolvable.
REQUIREMENTS = ("lightgbm", "numpy", "pandas", "pydantic", "pyyaml", "mlflow-skinny")
PYARROW_FLOOR = "pyarrow>=25"
# An input example's time for timestamp columns: the schema has no typical value for them. MLflow's
# ``datetime`` columns are timezone-naive; the preprocessor reads naive times as UTC (``as_training_time``).
EXAMPLE_TIME = datetime(2024, 1, 1, 12)


ANY = "any"


def _kind(arrow_type: str) -> str:
    """A raw column's kind from its type as the data schema keeps it: int, float, bool, string, timestamp,
    timestamp_tz, date, dictionary, or other (decimal and anything the data stage leaves out)."""
    t = arrow_type.lower()
    if t.startswith("dictionary<"):
        return "dictionary"
    if t.startswith("timestamp"):
        return "timestamp_tz" if "tz=" in t else "timestamp"
    if t.startswith("date"):
        return "date"
    if t in ("bool", "boolean"):
        return "bool"
    if t.startswith(("int", "uint")):
        return "int"
    if t in ("halffloat", "float", "double", "float16", "float32", "float64"):
        return "float"
    if t in ("string", "large_string", "utf8", "large_utf8", "string_view"):
        return "string"
    return "other"


# The MLflow type of each raw kind: the one MLflow's schema check (``_enforce_mlflow_datatype``) accepts in
# every form pandas hands that Arrow type over, from ``pyarrow``'s ``to_pandas`` and ``pd.read_parquet``
# alike, with and without missing values (and pandas' nullable and Arrow-backed dtypes); ``Any`` where no
# MLflow type accepts them all: ``BundleScorer`` then takes the column as the endpoint does, and the model's
# metadata keeps every column's Arrow type (``raygbm_input_types``). Marking a column optional
# (``required=False``) would not help: it lets the column be absent, and its values are checked the same.
_MLFLOW_INPUT = {
    # float64 with NaN and float32 (upcast); MLflow's ``float`` refuses float64.
    "float": "double",
    # str, object with None.
    "string": "string",
    # datetime64 naive of any unit; dates arrive as objects (datetime.date) and become datetime64.
    "timestamp": "datetime", "date": "datetime",
    # int64 (``double`` refuses it, the error), float64 with NaN when there are missing values
    # (``long``/``integer`` refuse it), pandas' Int64 with <NA> (every MLflow type refuses it).
    "int": ANY,
    # object with None when there are missing values, pandas' ``boolean`` with <NA> (``boolean`` refuses).
    "bool": ANY,
    # pandas' ``category`` (every MLflow type refuses it).
    "dictionary": ANY,
    # datetime64[.., tz] (MLflow's ``datetime`` is naive and refuses a zone).
    "timestamp_tz": ANY,
    # decimals arrive as objects.
    "other": ANY,
}


def input_spec(name: str, arrow_type: str) -> Any:
    """The signature's column of a raw input column of this Arrow type (required: the endpoint refuses
    rows without a column the model reads)."""
    from mlflow.types import ColSpec
    from mlflow.types.schema import AnyType

    kind = _MLFLOW_INPUT[_kind(arrow_type)]
    return ColSpec(AnyType() if kind == ANY else kind, name)


def _mlflow_value_type(arrow_type: str) -> str:
    """The MLflow type of a value of this Arrow type (the ``prediction`` output: the label's own values)."""
    kind = _kind(arrow_type)
    if kind == "dictionary":
        # The values are the column's type (pandas writes every categorical as
        # ``dictionary<values=string, indices=int8, ordered=0>``); the indices are an encoding detail.
        return _mlflow_value_type(str(value_type(arrow_type)))
    t = arrow_type.lower()
    if kind == "int":
        return "integer" if t in ("int8", "int16", "int32", "uint8", "uint16") else "long"
    if kind == "float":
        return "double" if t in ("double", "float64") else "float"
    return {"bool": "boolean", "timestamp": "datetime", "timestamp_tz": "datetime", "date": "datetime"}.get(kind, "string")


def input_types(pre: Preprocessor) -> dict[str, str]:
    """The raw input columns with their Arrow types as the data stage read them (the training schema's)."""
    return {c: pre.schema.types.get(c, "string") for c in pre.input_columns}


def signature(pre: Preprocessor) -> Any:
    """Inputs: the raw columns the model reads, each of the MLflow type that takes its raw type as pandas
    holds it (``Any`` for integers, booleans, dictionaries, zoned times: no MLflow type takes all their
    forms; ``BundleScorer`` then checks them against the training type, as the endpoint does; the exact
    Arrow types are in the model's metadata, ``raygbm_input_types``). All are required: the endpoint
    refuses rows without a column the model reads. Extra columns are ignored (MLflow drops them).
    Outputs: prediction (the label's values), score."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([input_spec(c, t) for c, t in input_types(pre).items()])
    if pre.task_ == "regression":
        prediction = "double"
    else:
        prediction = _mlflow_value_type(pre.schema.types.get(pre.schema.label, "string"))
    outputs = Schema([ColSpec(prediction, "prediction"), ColSpec("double", "score")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(pre: Preprocessor, rows: int = 2) -> pd.DataFrame:
    """Rows made from the training schema and the preprocessor's statistics: each numeric feature at its
    imputation value (the training median by default), each categorical at its most frequent categories,
    timestamps at ``EXAMPLE_TIME``. No training row is copied into the model."""
    import pandas as pd

    cols: dict[str, list[Any]] = {}
    numeric = set(pre.numeric_features)
    for c, arrow_type in input_types(pre).items():
        kind = _kind(arrow_type)
        if c in numeric:
            cols[c] = [float(pre.impute_.get(c, 0.0))] * rows
        elif c in pre.categories_ and pre.categories_[c]:
            cats = pre.categories_[c]
            cols[c] = [cats[i % len(cats)] for i in range(rows)]
        elif kind in ("timestamp", "timestamp_tz", "date"):
            cols[c] = [EXAMPLE_TIME] * rows
        elif kind == "bool":
            cols[c] = [False] * rows
        elif kind in ("int", "float"):
            cols[c] = [0] * rows
        else:
            cols[c] = [""] * rows
    return pd.DataFrame(cols)


def requirements() -> list[str]:
    """The model's pip requirements: every one on PyPI (raygbm itself travels as code, not as a requirement)."""
    return [f"{name}=={version(name)}" for name in REQUIREMENTS] + [PYARROW_FLOOR]


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
                   pip_requirements=requirements(), code_paths=[str(PACKAGE_DIR)],
                   metadata={"raygbm_bundle": "raygbm.bundle/1", "raygbm_input_types": input_types(pre)})
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

        prediction, score = self.bundle.predictions(self.bundle.scores(self.bundle.features(self.table(frame))))
        return pd.DataFrame({"prediction": prediction.to_pandas(), "score": score.to_numpy()})

    def table(self, frame: pd.DataFrame) -> pa.Table:
        """The columns the model reads as an Arrow table, each as the endpoint takes it: what pandas made
        of an integer categorical with missing values (float64 with NaN) back to the training integers,
        and times given as text or epoch seconds (what JSON carries, and the saved input example) as
        times. Other columns go as they are: ``Bundle.features`` checks them against the training types.
        Extra columns (the label, an identifier) are left out."""
        import pyarrow as pa

        pre = self.bundle.preprocessor
        wanted = set(pre.input_columns)
        table = pa.Table.from_pandas(frame[[c for c in frame.columns if c in wanted]], preserve_index=False)
        for i, name in enumerate(table.column_names):
            trained = pre.schema.types.get(name, "")
            col = table.column(i)
            kind = _kind(trained)
            if kind in ("timestamp", "timestamp_tz", "date") and not _is_time(col.type):
                col = _times(name, col)
            elif name in pre.schema.categorical and pa.types.is_floating(col.type):
                col = _integers(name, col, trained)
            table = table.set_column(i, name, col)
        return table


def _is_time(t: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_timestamp(t) or pa.types.is_date(t)


def _times(name: str, col: pa.ChunkedArray) -> pa.ChunkedArray:
    """ISO 8601 text or epoch seconds as UTC instants (naive text is UTC, as ``as_training_time`` reads
    naive times); the preprocessor then takes them to the training time type."""
    import pyarrow as pa

    from raygbm.data.features import as_datetime
    from raygbm.errors import DataError

    out = []
    for v in col.to_pylist():
        try:
            t = None if v is None else as_datetime(v)
        except (ValueError, OverflowError, OSError):
            t = v
        if t is not None and not isinstance(t, datetime):
            raise DataError(f"column {name!r}: expected an ISO 8601 time or epoch seconds, got {v!r}")
        out.append(None if t is None else (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc))
    return pa.chunked_array([pa.array(out, pa.timestamp("us", tz="UTC"))])


def _integers(name: str, col: pa.ChunkedArray, trained: str) -> pa.ChunkedArray:
    """An integer categorical that reached pandas as float64 (its missing values as NaN) as the
    training integers; a value with a fraction is not one of its categories."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from raygbm.errors import DataError

    try:
        want = value_type(trained)
    except ValueError:
        return col
    if not pa.types.is_integer(want):
        return col
    try:
        return pc.cast(col, want)  # safe: a fraction or an out-of-range value raises
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"column {name!r} is {col.type} with values that are not {want} categories") from None
