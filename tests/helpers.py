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


# A clean environment for a registered model (issue 26): the full MLflow and the model's own requirements
# from the package index, nothing else (no raygbm, no Ray); shared by test sessions, rebuilt when the
# requirements change.
MODEL_ENV = Path(os.environ.get("RAYGBM_MODEL_ENV") or REPO / ".venv-mlflow-model")


def model_env(requirements: list[str]) -> Path:
    """The python of a virtual environment holding exactly ``requirements`` (pip-resolved from the index),
    built at ``MODEL_ENV`` if it is missing or was built for others. Built in place with a marker written
    last, so an interrupted build is never used (a venv's scripts name its own path: it cannot be staged
    elsewhere and renamed); a lock file keeps two sessions from building it at once."""
    import fcntl
    import json
    import shutil
    import subprocess
    import sys

    marker, wanted = MODEL_ENV / "raygbm-model-env.json", sorted(requirements)

    def ready() -> bool:
        try:
            return json.loads(marker.read_text()) == wanted
        except (OSError, ValueError):
            return False

    python = MODEL_ENV / "bin" / "python"
    if ready():
        return python
    with open(MODEL_ENV.with_name(MODEL_ENV.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready():
            return python
        shutil.rmtree(MODEL_ENV, ignore_errors=True)
        subprocess.run([sys._base_executable, "-m", "venv", str(MODEL_ENV)], check=True, capture_output=True)
        out = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                              "--no-compile", *wanted], capture_output=True, text=True)
        if out.returncode != 0:
            raise AssertionError(f"pip install {' '.join(wanted)}: {(out.stdout + out.stderr)[-2000:]}")
        marker.write_text(json.dumps(wanted))
        return python


# A /predict request that a replica holds while it waits for the rest of the body: more body than HAProxy
# buffers before it picks a replica (tune.bufsize, 16 KB; serve.fast_ingress), and not all of it.
HELD_REQUEST = (b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 500000\r\n\r\n["
                + b" " * 65536)


def read_response(sock: Any) -> bytes:
    """One HTTP response (headers and a content-length body), or what came before the connection closed."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        if not (chunk := sock.recv(65536)):
            return answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0)
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body
