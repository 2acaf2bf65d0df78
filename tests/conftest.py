"""Shared fixtures: every test generates its own small data and uses its own RAYGBM_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

from raygbm.data.generate import GeneratorSpec, generate_dataset


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("RAYGBM_HOME", str(h))
    return h


def make_shards(out: Path, rows: int = 4000, shards: int = 4, seed: int = 0, **kw) -> Path:
    generate_dataset(out, GeneratorSpec(rows=rows, shards=shards, seed=seed, row_group_rows=1000, **kw))
    return out


@pytest.fixture
def shards_dir(tmp_path: Path) -> Path:
    return make_shards(tmp_path / "data")


@pytest.fixture
def figure(capsys: pytest.CaptureFixture[str]):
    """``figure(line)``: print a measured figure of a reliability test on the terminal, even under
    pytest's output capture (docs/reliability.md quotes these lines)."""

    def show(line: str) -> None:
        with capsys.disabled():
            print(f"\nFIGURE {line}", flush=True)

    return show


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the collected tests in reverse order (a check that no test depends on an earlier one)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()
