"""Endpoint memory under large and wide requests: the resident memory of our replica (and Serve's proxy)
after 200 large or wide requests against after warm-up, beside a plain uvicorn + FastAPI app that reads
the same bodies with pyarrow and scores them with the same booster, in one run.

    python bench/serve_memory.py [--requests 200] [--rows 50000]

The requests cycle through: a CSV table of --rows rows, the same as Arrow IPC, a JSON list of records at
serve.max_rows, and a CSV header 100,000 columns wide (refused). Ends with:

    RESULT replica_rss_ratio=... proxy_rss_ratio=... plain_rss_ratio=... replica_warm_mb=... replica_after_mb=...
"""


# No ``from __future__ import annotations``: FastAPI reads the plain app's route annotations at runtime.
import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve import clean_up, register_model, wait_ready  # noqa: E402

ARROW, CSV, JSON = "application/vnd.apache.arrow.stream", "text/csv", "application/json"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def plain_server(bundle_dir: str, port: int) -> None:
    """The baseline: pyarrow reads the table body, the booster scores it, the scores go back as JSON."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from raygbm.registry.bundle import Bundle

    bundle = Bundle.load(Path(bundle_dir))
    app = FastAPI()

    @app.post("/predict/batch")
    async def batch(request: Request) -> JSONResponse:
        body = await request.body()
        kind = request.headers.get("content-type", "")
        try:
            table = pa.ipc.open_stream(body).read_all() if kind == ARROW else pacsv.read_csv(io.BytesIO(body))
            scores = bundle.scores(bundle.features(table))
        except Exception:
            return JSONResponse({"error": "bad table"}, status_code=400)
        return JSONResponse({"scores": np.asarray(scores).round(6).tolist()[:10], "rows": table.num_rows})

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        import pyarrow as pa

        try:
            records = json.loads(await request.body())
            table = pa.Table.from_pylist(records if isinstance(records, list) else [records])
            scores = bundle.scores(bundle.features(table))
        except Exception:
            return JSONResponse({"error": "bad records"}, status_code=400)
        return JSONResponse({"scores": np.asarray(scores).tolist()})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def bodies(raw: Any, fields: list[str], rows: int, max_rows: int) -> list[tuple[str, bytes, str]]:
    """(path, body, content type) of each kind of request, cycled through."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = raw.select(fields)
    while table.num_rows < rows:
        table = pa.concat_tables([table, table])
    table = table.slice(0, rows)
    csv_sink, arrow_sink = pa.BufferOutputStream(), pa.BufferOutputStream()
    pacsv.write_csv(table, csv_sink)
    with pa.ipc.new_stream(arrow_sink, table.schema) as w:
        w.write_table(table)
    records = [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}
               for r in table.slice(0, max_rows).to_pylist()]
    wide = ",".join(f"c{i}" for i in range(100_000)).encode() + b"\n" + b"1," * 99_999 + b"1\n"
    return [("/predict/batch", csv_sink.getvalue().to_pybytes(), CSV),
            ("/predict/batch", arrow_sink.getvalue().to_pybytes(), ARROW),
            ("/predict", json.dumps(records).encode(), JSON),
            ("/predict/batch", wide, CSV)]


def send(url: str, path: str, body: bytes, kind: str) -> int:
    """The answer's status; 0 when the server closed the connection instead."""
    req = urllib.request.Request(url + path, data=body, method="POST", headers={"content-type": kind})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code
    except urllib.error.URLError as e:
        if isinstance(e.reason, ConnectionError):
            return 0
        raise


def drive(url: str, requests: list[tuple[str, bytes, str]], count: int) -> dict[int, int]:
    statuses: dict[int, int] = {}
    for i in range(count):
        status = send(url, *requests[i % len(requests)])
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def measure(url: str, pids: dict[str, int], requests: list, count: int) -> dict[str, tuple[float, float]]:
    """RSS of each process after a warm-up (two of each request) and after ``count`` requests."""
    drive(url, requests, 2 * len(requests))
    warm = {name: rss_mb(pid) for name, pid in pids.items()}
    statuses = drive(url, requests, count)
    after = {name: rss_mb(pid) for name, pid in pids.items()}
    print(f"  {url}: statuses {statuses}; " + ", ".join(
        f"{n} {warm[n]:.0f} → {after[n]:.0f} MB ({after[n] / warm[n]:.2f}×)" for n in pids), flush=True)
    return {n: (warm[n], after[n]) for n in pids}


def serve_pids() -> dict[str, int]:
    import ray
    from ray.util.state import list_actors

    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                        limit=10_000)
    replica = next(a.pid for a in alive if "ModelServer" in a.class_name)
    proxy = next(a.pid for a in alive if a.class_name == "ProxyActor")
    return {"replica": replica, "proxy": proxy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rows", type=int, default=50_000, help="rows per table body")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raygbm-bench-memory-"))
    os.environ["RAYGBM_HOME"] = str(work / "home")
    plain = None
    try:
        cfg, _, bundle, raw = register_model(argparse.Namespace(rows=100_000, trees=200), work)
        from raygbm.config import MonitorConfig, RegistryConfig, ServeConfig
        from raygbm.runtime import ensure_ray
        from raygbm.serving.deploy import deploy

        serve_cfg = ServeConfig(port=8433)  # the default config otherwise: Serve's proxy, 1 replica
        fields = list(dict.fromkeys(bundle.preprocessor.schema.features))
        requests = bodies(raw, fields, args.rows, serve_cfg.max_rows)
        print(f"bodies: CSV {len(requests[0][1]) / 1e6:.1f} MB, Arrow {len(requests[1][1]) / 1e6:.1f} MB, "
              f"JSON {len(requests[2][1]) / 1e6:.2f} MB, wide CSV {len(requests[3][1]) / 1e6:.1f} MB", flush=True)

        plain = subprocess.Popen([sys.executable, __file__, "--plain-server", str(bundle.path), "8434"])
        wait_ready("http://127.0.0.1:8434", "/predict/batch", requests[1][1])
        plain_mb = measure("http://127.0.0.1:8434", {"plain": plain.pid}, requests, args.requests)

        ensure_ray(cfg.resources, serve_cfg)
        url = deploy(RegistryConfig(), serve_cfg, MonitorConfig())
        wait_ready(url)
        ours = measure(url, serve_pids(), requests, args.requests)
        ratio = {n: after / warm for n, (warm, after) in {**ours, **plain_mb}.items()}
        print(f"RESULT replica_rss_ratio={ratio['replica']:.3f} proxy_rss_ratio={ratio['proxy']:.3f} "
              f"plain_rss_ratio={ratio['plain']:.3f} replica_warm_mb={ours['replica'][0]:.0f} "
              f"replica_after_mb={ours['replica'][1]:.0f} requests={args.requests} rows={args.rows}")
    finally:
        if plain is not None:
            plain.terminate()
            plain.wait()
        clean_up(work)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--plain-server"]:
        plain_server(sys.argv[2], int(sys.argv[3]))
    else:
        main()
