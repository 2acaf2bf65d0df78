"""The MLflow Model takes raw rows as the data stage reads them (issue 26): the signature's column types
are those MLflow's schema check accepts for each raw Arrow type in every form pandas hands it over, and the
frames read back from the training shards (``pyarrow``'s ``to_pandas``, ``pd.read_parquet``, pandas'
nullable and Arrow-backed dtypes) score through ``mlflow.pyfunc`` exactly as the bundle scores the Arrow
table, extra columns (the label, an identifier) ignored. Embedded sqlite store, no Ray."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.registry.bundle import Bundle
from raygbm.registry.mlflow_model import input_spec
from raygbm.registry.register import evaluate_and_register
from raygbm.registry.store import Registry, local_bundle, tracking_uri
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.type_matrix import DERIVED, LABELS, type_matrix, write_type_matrix


def _forms(path) -> dict[str, pd.DataFrame]:
    """The DataFrames a user gets from Parquet files (a file or a folder of shards)."""
    return {"pyarrow": pq.read_table(path).to_pandas(),
            "pandas": pd.read_parquet(path),
            "pandas nullable": pd.read_parquet(path, dtype_backend="numpy_nullable"),
            "pandas arrow": pd.read_parquet(path, dtype_backend="pyarrow")}


def _register(data, label: str, overrides: list[str], monkeypatch) -> tuple[Bundle, object]:
    """preprocess → train → register data as the champion; (the bundle, the champion as an MLflow pyfunc)."""
    import mlflow.pyfunc

    cfg = load_config(None, overrides, {"data.source": str(data), "data.label": label})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    train = TrainConfig(num_boost_round=15, early_stopping_rounds=None)
    evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                          EvaluateConfig(permutation_rows=100), RegistryConfig(), None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri())
    ref, path = local_bundle(Registry(), "champion")
    return Bundle.load(path, ref.tags["manifest_sha256"]), mlflow.pyfunc.load_model("models:/raygbm@champion")


def _assert_scores_as_the_bundle(bundle: Bundle, pyfunc, raw: pa.Table, frame: pd.DataFrame, what: str) -> None:
    expected = bundle.scores(bundle.features(raw))
    out = pyfunc.predict(frame)
    score = expected if expected.ndim == 1 else expected.max(axis=1)
    np.testing.assert_array_equal(out["score"].to_numpy(), score, err_msg=what)
    assert out["prediction"].tolist() == bundle.labelled(expected)[0], what


def test_every_raw_type_passes_mlflow_schema_check_in_every_pandas_form(tmp_path):
    """No training: each column of the type matrix (every raw type, with missing values) as pandas
    hands it over, checked by MLflow's own schema check against the signature's column."""
    from mlflow.models import validate_schema
    from mlflow.types import ColSpec, Schema

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    table = type_matrix(400)
    seen = {}
    for name in table.column_names:
        arrow_type = str(table.schema.field(name).type)
        pq.write_table(table.select([name]), tmp_path / f"{name}.parquet")
        forms = _forms(tmp_path / f"{name}.parquet")
        forms["pyarrow, no missing values"] = pa.table({name: table.column(name).drop_null()}).to_pandas()
        spec = Schema([input_spec(name, arrow_type)])
        for what, frame in forms.items():
            validate_schema(frame, spec)  # raises MlflowException when refused
        seen[name] = (arrow_type, spec.inputs[0].to_dict()["type"], {str(f[name].dtype) for f in forms.values()})
    # What the forms were: integers with missing values reach pandas as float64, Int64 with <NA> or int64,
    # booleans as object, bool or boolean, dictionaries as category, zoned times with their zone.
    assert {"float64", "Int64", "int64"} <= seen["x_int64"][2] and seen["x_int64"][1] == "any"
    assert {"object", "bool", "boolean"} <= seen["x_bool"][2] and seen["x_bool"][1] == "any"
    assert "category" in seen["x_cat"][2] and seen["x_cat"][1] == "any"
    assert "datetime64[ms, Europe/Paris]" in seen["x_ts_tz"][2] and seen["x_ts_tz"][1] == "any"
    assert seen["x_num"][1] == seen["x_float32"][1] == "double"
    assert seen["x_str"][1] == seen["x_large_str"][1] == "string"
    assert seen["x_ts"][1] == seen["x_date"][1] == "datetime"
    # The types MLflow would refuse: the error (double for an integer), long for an integer
    # with missing values, datetime for a zoned time, string for a category.
    from mlflow.exceptions import MlflowException

    frames = _forms(tmp_path / "x_int64.parquet")
    with pytest.raises(MlflowException, match="Can not safely convert int64 to float64"):
        validate_schema(pa.table({"x_int64": table.column("x_int64").drop_null()}).to_pandas(),
                        Schema([ColSpec("double", "x_int64")]))
    with pytest.raises(MlflowException, match="float64"):
        validate_schema(frames["pandas"], Schema([ColSpec("long", "x_int64")]))
    with pytest.raises(MlflowException, match="timezone-naive"):
        validate_schema(_forms(tmp_path / "x_ts_tz.parquet")["pyarrow"], Schema([ColSpec("datetime", "x_ts_tz")]))
    with pytest.raises(MlflowException):
        validate_schema(_forms(tmp_path / "x_cat.parquet")["pyarrow"], Schema([ColSpec("string", "x_cat")]))


@pytest.mark.parametrize("label", ["y_int", "y_class"])
def test_type_matrix_read_back_scores_through_pyfunc(label, tmp_path, home, monkeypatch):
    """Every raw type with missing values, the shards read back whole (the label too): pyfunc scores
    them as the bundle scores the Arrow table, through every pandas reading."""
    assert label in LABELS
    data = write_type_matrix(tmp_path / "data", label, rows=2000)
    # x_int32 (0..4) as a categorical: integer categories, which pandas hands over as float64 with NaN.
    overrides = [f"features.derived={DERIVED}", "data.categorical=[x_int32, x_str, x_large_str, x_cat]"]
    bundle, pyfunc = _register(data, label, overrides, monkeypatch)
    raw = pq.read_table(data)
    types = bundle.preprocessor.schema.types
    assert pyfunc.metadata.metadata["raygbm_input_types"] == {c: types[c] for c in bundle.preprocessor.input_columns}
    forms = _forms(data)
    assert "x_int32" in bundle.preprocessor.schema.categorical and str(forms["pandas"]["x_int32"].dtype) == "float64"
    assert label in forms["pyarrow"].columns
    for what, frame in forms.items():
        _assert_scores_as_the_bundle(bundle, pyfunc, raw, frame, what)
    # Times as JSON carries them (ISO text, naive meaning UTC) score the same.
    frame = forms["pyarrow"].copy()
    frame["x_ts_tz"] = [None if pd.isna(t) else t.tz_convert("UTC").tz_localize(None).isoformat()
                        for t in frame["x_ts_tz"]]
    _assert_scores_as_the_bundle(bundle, pyfunc, raw, frame, "x_ts_tz as ISO text")
    # An integer categorical with a fraction is refused, not rounded.
    bad = forms["pandas"].head(3).copy()
    bad["x_int32"] = [1.5, 2.0, None]
    with pytest.raises(Exception, match="x_int32.* not int32 categories"):
        pyfunc.predict(bad)


def test_penguins_with_integer_and_categorical_columns_score_through_pyfunc(tmp_path, home, monkeypatch):
    """A real dataset (palmerpenguins) as pandas users hold it: species, island and sex as categories,
    the integral measurements as nullable Int64 with <NA>, year as int64. The file pandas writes, read
    back every way, and the user's own frame, score as the bundle does."""
    import palmerpenguins

    df = palmerpenguins.load_penguins()
    for c in ("species", "island", "sex"):
        df[c] = df[c].astype("category")
    for c in ("flipper_length_mm", "body_mass_g"):
        df[c] = df[c].astype("Int64")
    assert df["body_mass_g"].isna().any() and df["sex"].isna().any() and str(df["year"].dtype) == "int64"
    data = tmp_path / "data"
    data.mkdir()
    df.to_parquet(data / "penguins.parquet", index=False)
    bundle, pyfunc = _register(data, "species", [], monkeypatch)
    inputs = bundle.preprocessor.input_columns
    assert {"island", "sex", "year", "flipper_length_mm", "body_mass_g"} <= set(inputs)
    types = pyfunc.metadata.metadata["raygbm_input_types"]
    assert types["body_mass_g"] == "int64" and types["island"].startswith("dictionary<values=string")
    raw = pq.read_table(data)
    forms = _forms(data)
    assert str(forms["pyarrow"]["body_mass_g"].dtype) == "Int64" and str(forms["pandas"]["sex"].dtype) == "category"
    forms["the user's own frame"] = df
    for what, frame in forms.items():
        _assert_scores_as_the_bundle(bundle, pyfunc, raw, frame, what)
