"""The drift monitor's log directory runs out of space (a 4 MiB tmpfs filled to the last byte): the
endpoint keeps answering every request, GET /drift shows the write error while windows go on in
memory, and windows are written to disk again once space returns. Its own deployment (the monitor's
``log_dir`` is fixed when the monitor actor starts). Prints ``FAULT monitor-disk-full ...``.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raygbm.config import EvaluateConfig, MonitorConfig, RegistryConfig, ServeConfig, TrainConfig, load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.data.split import RAW_TEST
from raygbm.monitoring.actor import MONITOR_ACTOR
from raygbm.registry.register import evaluate_and_register
from raygbm.serving.deploy import deploy
from raygbm.training.fit import Trained
from raygbm.training.train import RunMeta, train_in_process
from tests.conftest import make_shards
from tests.helpers import wait_until

pytestmark = pytest.mark.slow
PORT = 8126
URL = f"http://127.0.0.1:{PORT}"
WINDOW = 200


def _call(path: str, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(URL + path, data=body, method="POST" if body is not None else "GET",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root and mount rights; skipped where the CI container has none)."""
    mount = tmp_path / "monitor"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({(r.stderr or r.stdout).strip()[:120]}): the disk-full "
                    "fault needs root with mount rights")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the file system has no byte left (ENOSPC at every size down to one byte)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def _windows_on_disk(mount: Path) -> list[int]:
    return [json.loads(line)["index"] for p in mount.glob("*/v*/windows.jsonl")
            for line in p.read_text().splitlines()]


def test_a_full_monitor_disk_keeps_serving_and_reports_the_error(tmp_path, home, small_disk):
    import ray
    from ray import serve

    data = make_shards(tmp_path / "data", rows=6000, shards=1, seed=12)
    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(data), "data.label": "label"})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    train = TrainConfig(num_boost_round=20, early_stopping_rounds=None)
    evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                          EvaluateConfig(permutation_rows=200), RegistryConfig(), None)
    try:  # a monitor left by another module would keep its own log_dir
        ray.kill(ray.get_actor(MONITOR_ACTOR, namespace="raygbm"))
    except ValueError:
        pass
    monitor = MonitorConfig(window_size=WINDOW, log_dir=str(small_disk), log_flush_s=0.1, calibration_draws=1000)
    deploy(RegistryConfig(), ServeConfig(port=PORT, max_rows=2000), monitor)
    try:
        fields = list(_call("/model")[1]["request_schema"]["oneOf"][0]["properties"])
        raw = pq.read_table(meta.run_dir / RAW_TEST)
        rows = [{c: (v.isoformat() if hasattr(v, "isoformat") else v) for c, v in zip(fields, values)}
                for values in zip(*(raw.column(c).to_pylist() for c in fields))]

        def serve_windows(n: int) -> dict:
            """``n`` more windows of rows through POST /predict (every answer a 200), then GET /drift."""
            before = len(_call("/drift")[1]["windows"])
            for i in range(n):
                status, out = _call("/predict", json.dumps(rows[i * WINDOW:(i + 1) * WINDOW]).encode())
                assert status == 200, out
            return wait_until(lambda: (d := _call("/drift")[1]) and len(d["windows"]) >= before + n and d, 30,
                              message=f"{n} more windows")

        first = serve_windows(1)
        assert first["log_error"] is None and _windows_on_disk(small_disk) == [0]
        filler = fill(small_disk)
        full = serve_windows(2)
        assert "No space left on device" in (full["log_error"] or ""), full["log_error"]
        assert _windows_on_disk(small_disk) in ([0], [0, 1], [0, 1, 2])  # whole lines only, if any fitted
        filler.unlink()
        again = serve_windows(2)
        written = _windows_on_disk(small_disk)
        resumed = again["log_error"] is None and written[-2:] == [3, 4]
        print(f"FAULT monitor-disk-full requests_ok=yes error_shown={'yes' if full['log_error'] else 'no'} "
              f"windows_resumed={'yes' if resumed else 'no'}")
        assert resumed, (again["log_error"], written)
        assert list(small_disk.glob("*/v*/rows/part-*.parquet"))
    finally:
        serve.shutdown()
        ray.kill(ray.get_actor(MONITOR_ACTOR, namespace="raygbm"))
