"""Bad input through the real CLI: exit code 2, one stderr line naming the file, nothing written.

These fail in the driver's shard checks, before Ray would be started.
"""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_shards


def _run(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {"RAYGBM_HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "raygbm.cli", *args], capture_output=True, text=True, env=env, timeout=120)


def _corrupt(d: Path) -> str:
    p = d / "part-00001.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return "part-00001.parquet"


def _retyped(d: Path) -> str:
    p = d / "part-00002.parquet"
    t = pq.read_table(p)
    pq.write_table(t.set_column(t.column_names.index("num_4"), "num_4", t["num_4"].cast(pa.float32())), p)
    return "part-00002.parquet"


def _stray(d: Path) -> str:
    (d / "notes.csv").write_text("a,b\n1,2\n")
    return "notes.csv"


@pytest.mark.parametrize("damage", [_corrupt, _retyped, _stray], ids=["corrupt", "type-change", "stray-file"])
def test_bad_shard(tmp_path, damage):
    data = make_shards(tmp_path / "data", rows=2000, shards=3)
    name = damage(data)
    home = tmp_path / "home"
    r = _run("preprocess", "--data", str(data), "--label", "label", home=home)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and name in lines[0]
    assert not home.exists() or not any(home.rglob("*"))


def test_missing_label_column(tmp_path):
    data = make_shards(tmp_path / "data", rows=2000, shards=2)
    home = tmp_path / "home"
    r = _run("preprocess", "--data", str(data), "--label", "target", home=home)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "part-00000.parquet" in line and "'target' not found" in line
    assert not home.exists()


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    home = tmp_path / "home"
    r = _run("preprocess", "--data", str(tmp_path / "empty"), "--label", "label", home=home)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert str(tmp_path / "empty") in line and "no Parquet shards" in line
    assert not home.exists()


def test_invalid_config_names_field(tmp_path):
    r = _run("preprocess", "--data", "x", "--label", "y", "--set", "split.test=0.5", home=tmp_path / "h")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: invalid config: split:")


def test_generate_then_bad_args(tmp_path):
    r = _run("generate", "--rows", "1000", "--shards", "2", "--output", str(tmp_path / "g"), home=tmp_path / "h")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "g").glob("*.parquet"))) == 2
    r = _run("generate", "--rows", "1", "--shards", "2", "--output", str(tmp_path / "g2"), home=tmp_path / "h")
    assert r.returncode == 2 and "rows >= shards" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "--data", "{data}", "--output", "{out}"], "no champion model yet"),
        (["evaluate", "--data", "{data}", "--label", "label"], None),  # fails on the shards below first
        (["promote", "3"], "version 3: not found"),
        (["run", "--data", "{data}", "--label", "label", "--set", "tune.space={{num_leaves: {{between: [1, 9]}}}}"],
         "invalid config: tune.space: num_leaves: expected one of"),
        (["tune", "--data", "{data}", "--label", "nope"], "nope"),
        (["train", "--config", "{missing}"], "config file not found"),
    ],
    ids=["predict-no-model", "evaluate-bad-shard", "promote-unknown", "bad-space", "tune-missing-label", "train-no-config"],
)
def test_pipeline_commands_fail_with_one_line(tmp_path, args, message):
    data = make_shards(tmp_path / "data", rows=2000, shards=2)
    if message is None:
        message = _corrupt(data)
    fill = {"data": str(data), "out": str(tmp_path / "out.parquet"), "missing": str(tmp_path / "nope.yaml")}
    r = _run(*[a.format(**fill) for a in args], home=tmp_path / "home")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("command", ["preprocess", "tune", "train", "evaluate", "run"])
@pytest.mark.parametrize("missing", ["--data", "--label"])
def test_missing_data_or_label_fails_before_ray_starts(tmp_path, command, missing):
    data = make_shards(tmp_path / "data", rows=500, shards=1)
    given = {"--data": str(data), "--label": "label"}
    given.pop(missing)
    home = tmp_path / "home"
    r = _run(command, *[x for kv in given.items() for x in kv], home=home)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: no ") and missing in line
    assert "starting Ray" not in r.stdout + r.stderr and not home.exists()


@pytest.mark.parametrize("label", [pa.array([1, 2] * 1000, pa.timestamp("s")), pa.array([[1], [0]] * 1000),
                                   pa.array([1, 0] * 1000, pa.decimal128(5, 0))], ids=["timestamp", "list", "decimal"])
def test_a_label_of_a_type_no_task_reads_is_refused_before_any_work(tmp_path, label):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"x": pa.array(range(2000), pa.float64()), "y": label}), data / "part-0.parquet")
    home = tmp_path / "home"
    r = _run("run", "--data", str(data), "--label", "y", home=home)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    kind = str(label.type).split("[")[0].split("<")[0].split("(")[0]  # Parquet keeps seconds as milliseconds
    assert "part-0.parquet" in line and f"label column 'y' is {kind}" in line
    assert not home.exists()


def test_an_unexpected_error_prints_one_line_and_the_log_holding_the_traceback(tmp_path, monkeypatch, capsys):
    from raygbm import cli
    from raygbm.registry.store import Registry

    def broken(self):
        raise KeyError("secret-value")

    monkeypatch.setenv("RAYGBM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(Registry, "versions", broken)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["models"])
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert exit_.value.code == 1 and line.startswith("error: raygbm models failed unexpectedly (KeyError)")
    assert "secret-value" not in line and "Traceback" not in err
    log = Path(line.rsplit(" ", 1)[1])
    assert log.parent == tmp_path / "home" / "logs" and "secret-value" in log.read_text()


def test_the_loop_without_the_endpoints_token_is_refused_before_ray_starts(tmp_path):
    """/feedback labels choose the next champion: an endpoint with the loop must require its token."""
    home = tmp_path / "home"
    r = _run("serve", "--set", "retrain.enabled=true", home=home)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: retrain.enabled needs serve.require_token: true"), line
    assert not home.exists() or not any(home.rglob("*"))
    # With the token required (and no token set) the next check names the missing token, still before Ray.
    r = _run("serve", "--set", "retrain.enabled=true", "--set", "serve.require_token=true", home=home)
    assert r.returncode == 2 and "RAYGBM_ENDPOINT_TOKEN" in r.stderr and "starting Ray" not in r.stdout + r.stderr
