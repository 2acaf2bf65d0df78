"""Small test utilities: await a condition instead of sleeping a fixed time, and point RAYGBM_HOME at a
folder for a block of code (also from module-scoped fixtures, where monkeypatch is not available)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
# The MLflow UI's environment for the tests (full MLflow, created on first use): shared by test sessions.
UI_ENV = Path(os.environ.get("RAYGBM_UI_ENV") or REPO / ".venv-mlflow-ui")


def wait_until(cond: Callable[[], T], timeout: float, *, interval: float = 0.1, message: str = "condition") -> T:
    """Call ``cond`` until it returns a truthy value, and return that value.

    An exception from ``cond`` counts as "not yet" and is retried; after ``timeout`` seconds this raises
    AssertionError naming ``message`` (and the last exception ``cond`` raised, if any).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = cond()
        except Exception as exc:  # retried; the last one goes into the timeout message
            last_error = exc
        else:
            if value:
                return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(min(interval, remaining))


@contextmanager
def raygbm_home(path: str | Path) -> Iterator[Path]:
    """Set RAYGBM_HOME to ``path`` inside the block; restore the previous value (or unset it) on exit."""
    old = os.environ.get("RAYGBM_HOME")
    os.environ["RAYGBM_HOME"] = str(path)
    try:
        yield Path(path)
    finally:
        if old is None:
            os.environ.pop("RAYGBM_HOME", None)
        else:
            os.environ["RAYGBM_HOME"] = old


def store_file(reg: Any, version: str, name: str = "model.txt") -> Path:
    """A file of a version's bundle in the MLflow artifact store itself (not the local cache)."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    return Path(local_file_uri_to_path(reg.client.get_run(reg.get(version).run_id).info.artifact_uri)) / "model" / name


def flip_one_byte(path: Path) -> None:
    """Flip the lowest bit of the middle byte of a file (a tampered or bit-rotted artifact)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def registered_model(data_dir: Path, max_rows: int) -> tuple[Any, Any]:
    """A binary model (numeric, categorical and time features, a derived hour) trained on 3,000 generated
    rows without Ray, registered as v1 in the store of the current RAYGBM_HOME, and loaded as a replica
    loads it: (the ``ServedModel``, the data run's ``RunMeta``)."""
    from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
    from raygbm.data.preprocess import LocalRunner, preprocess
    from raygbm.registry.register import evaluate_and_register
    from raygbm.serving.deploy import model_spec
    from raygbm.serving.model_slot import load_served_model
    from raygbm.training.fit import Trained
    from raygbm.training.train import RunMeta, train_in_process
    from tests.conftest import make_shards

    data = make_shards(data_dir, rows=3000, shards=1)
    cfg = load_config(None, ["data.drop=[id]", "features.derived=[{name: h, op: hour, inputs: [event_time]}]"],
                      {"data.source": str(data), "data.label": "label"})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    train = TrainConfig(num_boost_round=10, early_stopping_rounds=None)
    evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                          EvaluateConfig(permutation_rows=200), RegistryConfig(), None)
    return load_served_model(model_spec(RegistryConfig(), "1"), max_rows), meta
