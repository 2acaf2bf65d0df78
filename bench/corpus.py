"""Real public datasets that ship inside installed packages (nothing is downloaded): scikit-learn's bundled
sets and the full OpenML datasets it ships as test fixtures, statsmodels' datasets and palmerpenguins; plus
``raygbm generate`` data with a shifted scoring period. Each loads as the Arrow table a user would write to
Parquet, in the column types such a user holds: pandas ``category`` columns (dictionary<string, int8>),
nullable integers, booleans, missing values, dates.

Used by ``bench/quality.py`` (raygbm against plain LightGBM on every dataset) and by the corpus smoke test
(``tests/unit/test_corpus.py``: each dataset end to end on a small budget).
"""

from __future__ import annotations

import csv
import gzip
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class DatasetSpec:
    name: str
    load: Callable[[int], pa.Table]  # rows (only the generated sets use it) → the raw table
    label: str
    sets: list[str] = field(default_factory=list)  # what a user would set: ids to drop, the time split
    not_features: list[str] = field(default_factory=list)  # columns plain LightGBM is not given either
    repeat: bool = True  # small: repeated over split seeds
    kinds: str = ""  # what it exercises (docs/benchmarks.md's table)
    generated: bool = False


def _sklearn_bundled(loader: str) -> Callable[[int], pa.Table]:
    def load(_rows: int) -> pa.Table:
        import sklearn.datasets

        d = getattr(sklearn.datasets, loader)()
        cols = {f"f{i}": d.data[:, i].astype(np.float64) for i in range(d.data.shape[1])}
        target = d.target.astype(np.float64 if loader == "load_diabetes" else np.int64)
        return pa.table({**cols, "target": target})

    return load


def _openml_fixture(dataset_id: int, columns: list[str] | None = None, booleans: bool = False) -> Callable[[int], pa.Table]:
    """A full OpenML dataset scikit-learn ships as a test fixture (ARFF, gzipped): nominal attributes as
    string columns ('?' missing), numeric ones as float64; ``booleans``: nominal attributes whose values
    are exactly t/f as bool columns."""

    def load(_rows: int) -> pa.Table:
        import sklearn

        folder = Path(sklearn.__file__).parent / "datasets" / "tests" / "data" / "openml" / f"id_{dataset_id}"
        lines = gzip.open(next(folder.glob("data-*.arff.gz")), "rt").read().splitlines()
        names, kinds, body = [], [], []
        for i, line in enumerate(lines):
            low = line.strip().lower()
            if low.startswith("@attribute"):
                name, kind = next(csv.reader([line.strip().split(None, 1)[1]], delimiter=" ", quotechar="'",
                                             skipinitialspace=True))[:2]
                names.append(name)
                kinds.append(kind.lower())
            elif low.startswith("@data"):
                body = [x for x in lines[i + 1:] if x.strip() and not x.startswith("%")]
                break
        quote = '"' if any(x.startswith('"') or ',"' in x for x in body[:50]) else "'"
        rows = list(csv.reader(body, quotechar=quote, escapechar="\\", skipinitialspace=True))
        assert all(len(r) == len(names) for r in rows), f"openml {dataset_id}: ragged rows"
        out: dict[str, pa.Array] = {}
        for j, (name, kind) in enumerate(zip(names, kinds)):
            if columns is not None and name not in columns:
                continue
            values = [None if r[j] == "?" else r[j] for r in rows]
            if kind in ("numeric", "real", "integer"):
                out[name] = pa.array([float(v) if v is not None else None for v in values], pa.float64())
            elif booleans and set(values) - {None} == {"t", "f"}:
                out[name] = pa.array([None if v is None else v == "t" for v in values], pa.bool_())
            else:
                out[name] = pa.array(values, pa.string())
        return pa.table(out)

    return load


def _from_pandas(df) -> pa.Table:
    """A DataFrame as ``df.to_parquet`` stores it (categoricals as dictionaries, nullable dtypes kept)."""
    with tempfile.TemporaryDirectory() as d:
        df.to_parquet(Path(d) / "x.parquet", index=False)
        return pq.read_table(Path(d) / "x.parquet")


def _penguins(_rows: int) -> pa.Table:
    """palmerpenguins: species from measurements; island and sex as pandas categoricals, with missing values."""
    import palmerpenguins

    df = palmerpenguins.load_penguins()
    for c in ("species", "island", "sex"):
        df[c] = df[c].astype("category")
    return _from_pandas(df)


def _statsmodels(name: str) -> "object":
    import importlib

    return importlib.import_module(f"statsmodels.datasets.{name}").load_pandas().data


def _fair(_rows: int) -> pa.Table:
    """statsmodels' fair (1974 survey): had any affair, from integer codes (rating, religiousness,
    education, occupations) held as nullable integers."""
    import pandas as pd

    df = _statsmodels("fair").copy()
    df["had_affair"] = (df.pop("affairs") > 0).astype("int64")
    for c in ("rate_marriage", "children", "religious", "educ", "occupation", "occupation_husb"):
        df[c] = df[c].round().astype(pd.Int64Dtype())
    return _from_pandas(df)


def _randhie(_rows: int) -> pa.Table:
    """statsmodels' randhie (RAND health insurance experiment): doctor visits (a count, regression); the
    0/1 indicators as booleans."""
    df = _statsmodels("randhie").copy()
    for c in ("idp", "hlthg", "hlthf", "hlthp"):
        df[c] = df[c].astype(bool)
    df["mdvis"] = df["mdvis"].astype("float64")
    return _from_pandas(df)


def _anes96(_rows: int) -> pa.Table:
    """statsmodels' anes96 (1996 election study): the vote from party id, education and income codes
    (education as a pandas categorical of its labels)."""
    import pandas as pd

    df = _statsmodels("anes96").copy()
    df["vote"] = df["vote"].astype("int64")
    for c in ("TVnews", "selfLR", "ClinLR", "DoleLR", "PID", "income", "age"):
        df[c] = df[c].round().astype(pd.Int64Dtype())
    labels = {1: "MS", 2: "HSdrop", 3: "HS", 4: "Coll", 5: "CCdeg", 6: "BAdeg", 7: "MAdeg"}
    df["educ"] = pd.Categorical(df["educ"].round().astype(int).map(labels))
    return _from_pandas(df.drop(columns=["logpopul"]))


def _macrodata(_rows: int) -> pa.Table:
    """statsmodels' macrodata (US quarterly, 1959-2009): unemployment from the other series, with the
    quarter as a date column and a time split (train on the oldest quarters, score the newest)."""
    import pandas as pd

    df = _statsmodels("macrodata").copy()
    df["quarter_start"] = pd.to_datetime({"year": df.pop("year").astype(int),
                                          "month": (df.pop("quarter").astype(int) - 1) * 3 + 1, "day": 1}).dt.date
    return _from_pandas(df)


def _generated(task: str) -> Callable[[int], pa.Table]:
    def load(rows: int) -> pa.Table:
        from raygbm.data.generate import DriftSpec, GeneratorSpec, generate_dataset

        with tempfile.TemporaryDirectory() as d:
            generate_dataset(d, GeneratorSpec(rows=rows, shards=1, seed=11, task=task,
                                              drift=DriftSpec(start_row=int(rows * 0.85))))
            return pq.read_table(d)

    return load


def datasets() -> list[DatasetSpec]:
    # Titanic: the passenger's own attributes; boat and body record what happened (the label leaks).
    titanic = ["pclass", "survived", "sex", "age", "sibsp", "parch", "fare", "embarked"]
    gen = dict(sets=["data.drop=[id]", "split.time=event_time"], not_features=["id", "event_time"], repeat=False,
               generated=True)
    return [
        DatasetSpec("breast_cancer", _sklearn_bundled("load_breast_cancer"), "target", kinds="floats"),
        DatasetSpec("diabetes", _sklearn_bundled("load_diabetes"), "target", kinds="floats"),
        DatasetSpec("digits", _sklearn_bundled("load_digits"), "target", kinds="pixel counts, 10 classes"),
        DatasetSpec("wine", _sklearn_bundled("load_wine"), "target", kinds="floats, 3 classes"),
        DatasetSpec("titanic", _openml_fixture(40945, titanic), "survived",
                    kinds="strings, missing values"),
        DatasetSpec("kr_vs_kp", _openml_fixture(3, booleans=True), "class",
                    kinds="booleans (t/f attributes), strings"),
        DatasetSpec("cpu", _openml_fixture(561), "class", kinds="a 30-value string column, regression"),
        DatasetSpec("glass2", _openml_fixture(40675), "class", kinds="floats, a string 0/1 label"),
        DatasetSpec("penguins", _penguins, "species",
                    kinds="pandas categoricals, missing values, 3 string classes"),
        DatasetSpec("fair", _fair, "had_affair", kinds="nullable integer codes"),
        DatasetSpec("randhie", _randhie, "mdvis", kinds="booleans, a count label"),
        DatasetSpec("anes96", _anes96, "vote", kinds="nullable integer codes, a pandas categorical"),
        DatasetSpec("macrodata", _macrodata, "unemp", sets=["split.time=quarter_start"], not_features=["quarter_start"],
                    repeat=False, kinds="a date column, time split"),
        DatasetSpec("generated_binary_shift", _generated("binary"), "label", kinds="generated, shifted test period",
                    **gen),  # type: ignore[arg-type]
        DatasetSpec("generated_regression_shift", _generated("regression"), "label",
                    kinds="generated, shifted test period", **gen),  # type: ignore[arg-type]
    ]
