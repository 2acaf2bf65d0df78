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
