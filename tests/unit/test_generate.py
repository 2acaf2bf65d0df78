from datetime import datetime, timezone

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raygbm.data.generate import (
    CATEGORICAL,
    DRIFT_SHIFTED_CATEGORICAL,
    DRIFT_SHIFTED_NUMERIC,
    NUMERIC,
    DriftSpec,
    GeneratorSpec,
    generate_dataset,
)
from raygbm.errors import ConfigError


def test_deterministic_and_independent_of_shard_count(tmp_path):
    a = generate_dataset(tmp_path / "a", GeneratorSpec(rows=150_000, shards=3, seed=5))
    b = generate_dataset(tmp_path / "b", GeneratorSpec(rows=150_000, shards=7, seed=5))
    c = generate_dataset(tmp_path / "c", GeneratorSpec(rows=150_000, shards=3, seed=6))
    ta, tb, tc = (pq.read_table(p[0].parent) for p in (a, b, c))
    assert len(a) == 3 and len(b) == 7
    assert ta.sort_by("id").equals(tb.sort_by("id"))
    assert not ta.sort_by("id").equals(tc.sort_by("id"))
    assert ta.num_rows == 150_000
    assert pc.min(ta["id"]).as_py() == 0 and pc.max(ta["id"]).as_py() == 149_999


def test_realistic_columns(tmp_path):
    generate_dataset(tmp_path, GeneratorSpec(rows=100_000, shards=2, seed=1, positive_rate=0.2))
    t = pq.read_table(tmp_path)
    assert set(NUMERIC + CATEGORICAL) <= set(t.column_names)
    assert str(t.schema.field("event_time").type) == "timestamp[us, tz=UTC]"
    assert t["num_6"].null_count > 0.05 * t.num_rows  # missing values
    assert t["cat_3"].null_count > 0
    assert abs(pc.mean(t["label"]).as_py() - 0.2) < 0.02  # class balance as asked
    times = np.asarray(pc.cast(t["event_time"], "int64"))
    assert (np.diff(times[np.argsort(np.asarray(t["id"]))]) > 0).all()


def test_signal_is_learnable(tmp_path):
    import lightgbm as lgb

    generate_dataset(tmp_path, GeneratorSpec(rows=40_000, shards=1, seed=2))
    df = pq.read_table(tmp_path).to_pandas()
    X = df[NUMERIC].to_numpy(dtype=float)
    y = df["label"].to_numpy()
    model = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(X[:30000], y[:30000]), 60)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[30000:], model.predict(X[30000:])) > 0.70  # numerics alone; categories add more


def test_drift_shifts_only_named_features(tmp_path):
    generate_dataset(tmp_path, GeneratorSpec(rows=100_000, shards=1, seed=3, drift=DriftSpec(start_row=50_000)))
    df = pq.read_table(tmp_path).to_pandas().sort_values("id")
    before, after = df.iloc[:50_000], df.iloc[50_000:]
    for c in NUMERIC:
        shift = after[c].mean() - before[c].mean()
        if c in DRIFT_SHIFTED_NUMERIC:
            assert shift > 1.0, c
        else:
            assert abs(shift) < 0.1 * before[c].std() + 1e-9, c
    c = DRIFT_SHIFTED_CATEGORICAL[0]
    assert before[c].value_counts().idxmax() != after[c].value_counts().idxmax()


def test_drift_at_time_maps_to_row():
    spec = DriftSpec.at_time(datetime(2026, 1, 1, 1, tzinfo=timezone.utc))
    assert spec.start_row == 3600 // 15


@pytest.mark.parametrize("kw", [{"rows": 0}, {"rows": 5, "shards": 6}, {"task": "ranking"}, {"positive_rate": 1.0}])
def test_bad_spec(kw):
    args = {"rows": 10, "shards": 1, **kw}
    with pytest.raises(ConfigError):
        GeneratorSpec(**args)


def test_no_partial_files_left(tmp_path):
    generate_dataset(tmp_path, GeneratorSpec(rows=1000, shards=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]


def test_concept_only_drift_changes_the_label_relation_not_the_features(tmp_path):
    from typer.testing import CliRunner

    from raygbm.cli import app

    args = ["generate", "--rows", "40000", "--shards", "1", "--seed", "7"]
    assert CliRunner().invoke(app, [*args, "--output", str(tmp_path / "plain")]).exit_code == 0
    out = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "concept"), "--drift-from-row", "0", "--concept-only"])
    assert out.exit_code == 0, out.output
    plain, concept = (pq.read_table(tmp_path / d).to_pandas().sort_values("id") for d in ("plain", "concept"))
    assert plain[NUMERIC + CATEGORICAL].equals(concept[NUMERIC + CATEGORICAL])  # the same features, row for row
    assert (plain["label"] != concept["label"]).mean() > 0.1
    # num_0's effect flips: its correlation with the label changes sign where sin(2·num_0) is large.
    strong = np.abs(np.sin(2 * plain["num_0"].fillna(0))) > 0.8
    effect = lambda d: np.corrcoef(np.sin(2 * d["num_0"][strong]), d["label"][strong])[0, 1]  # noqa: E731
    assert effect(plain) > 0.1 and effect(concept) < -0.1
