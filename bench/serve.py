"""Endpoint speed: our Ray Serve endpoint (validation and drift monitoring on) against plain uvicorn +
FastAPI serving the same model on the same machine, driven by wrk, in one run.

    python bench/serve.py [--duration 10] [--concurrency 16]     # needs wrk (apt-get install wrk)

Prints p50/p99 latency at concurrency 1, saturated requests/s at --concurrency, the same for the plain
app, the monitor's cost (p50 with it on against off: the drift monitor and the prediction log, its
write-ahead file included), a 10,000-row /predict/batch request against raw Booster.predict on the same
rows, and what the write-ahead record alone costs a request (and with fsync). Ends with:

    RESULT p50_ms=... p99_ms=... rps=... plain_rps=... rps_ratio=... batch_ratio=... monitor_overhead=... wal_us=...
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def wrk(url: str, body_file: Path, concurrency: int, duration: int) -> dict[str, float]:
    script = body_file.with_suffix(".lua")
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(script), url + "/predict"],
                         capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"p50_ms": ms("50%"), "p99_ms": ms("99%"), "rps": rps, "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def wait_ready(url: str, path: str = "/predict", body: bytes = b"{}", timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(url + path, data=body, method="POST",
                                                          headers={"content-type": "application/json"}), timeout=5)
            return
        except urllib.error.HTTPError:
            return  # answering (a 4xx for a bad body is fine)
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def plain_server(bundle_dir: str, port: int) -> None:
    """The baseline: plain uvicorn + FastAPI serving the same bundle the same way (strict parsing, numpy
    rows, one LightGBM thread), with no Ray. Runs in its own process (``--plain-server``)."""
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from raygbm.registry.bundle import Bundle
    from raygbm.serving.request import RequestError, RequestSchema

    bundle = Bundle.load(Path(bundle_dir))
    schema = RequestSchema(bundle.preprocessor, 1000)
    booster = bundle.booster
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        try:
            parsed = schema.parse(await request.body())
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        scores = booster.predict(parsed.features, num_threads=1)
        return JSONResponse({"predictions": [{"score": float(s)} for s in scores]})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--replicas", type=int, default=1, help="endpoint replicas (one CPU each) behind the one URL")
    ap.add_argument("--monitor-rounds", type=int, default=3, help="off/on alternations for the monitor's cost")
    ap.add_argument("--monitor-set", action="append", default=[], metavar="KEY=VALUE",
                    help="monitor config overrides, e.g. log_sample_rate=0")
    ap.add_argument("--ingress", choices=["fast", "proxy"], default="fast",
                    help="fast: the default config (serve.fast_ingress: HAProxy + direct ingress); proxy: "
                    "serve.fast_ingress=false (Serve's Python proxy)")
    return ap.parse_args()


def register_model(args: argparse.Namespace, work: Path) -> tuple[Any, Any, Any, Any]:
    """Generated data, preprocessed without Ray, one model registered: (config, run meta, bundle, raw test rows)."""
    import pyarrow.parquet as pq

    from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
    from raygbm.data.generate import GeneratorSpec, generate_dataset
    from raygbm.data.preprocess import LocalRunner, preprocess
    from raygbm.data.split import RAW_TEST
    from raygbm.registry.bundle import Bundle
    from raygbm.registry.register import evaluate_and_register
    from raygbm.registry.store import Registry, local_bundle
    from raygbm.training.fit import Trained
    from raygbm.training.train import RunMeta, train_in_process

    generate_dataset(work / "data", GeneratorSpec(rows=args.rows, shards=4, seed=5))
    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(work / "data"), "data.label": "label"})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    train = TrainConfig(num_boost_round=args.trees, early_stopping_rounds=None, params={"num_leaves": 31})
    evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                          EvaluateConfig(permutation_rows=1000), RegistryConfig(), None)
    _, bundle_dir = local_bundle(Registry())
    return cfg, meta, Bundle.load(bundle_dir), pq.read_table(meta.run_dir / RAW_TEST)


def bench_plain(bundle_dir: Path, body: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """The baseline in its own process: wrk at concurrency 1 and ``--concurrency``."""
    plain = subprocess.Popen([sys.executable, __file__, "--plain-server", str(bundle_dir), "8431"])
    try:
        wait_ready("http://127.0.0.1:8431")
        p1 = wrk("http://127.0.0.1:8431", body, 1, args.duration)
        pc = wrk("http://127.0.0.1:8431", body, args.concurrency, args.duration)
    finally:
        plain.terminate()
        plain.wait()
    print(f"plain uvicorn : c=1 p50 {p1['p50_ms']:.2f} ms p99 {p1['p99_ms']:.2f} ms {p1['rps']:.0f} rps; "
          f"c={args.concurrency} {pc['rps']:.0f} rps", flush=True)
    return p1, pc


def deploy_ours(cfg: Any, args: argparse.Namespace) -> tuple[str, Any, Any]:
    """Ray Serve with validation and drift monitoring on: (url, serve config, monitor config)."""
    import yaml

    from raygbm.config import MonitorConfig, RegistryConfig, ServeConfig
    from raygbm.runtime import ensure_ray
    from raygbm.serving.deploy import deploy

    serve_cfg = ServeConfig(port=8432, fast_ingress=args.ingress == "fast", num_replicas=args.replicas)
    ensure_ray(cfg.resources, serve_cfg)
    monitor_cfg = MonitorConfig(window_size=1000, **{k: yaml.safe_load(v) for k, v in
                                                     (kv.split("=", 1) for kv in args.monitor_set)})
    url = deploy(RegistryConfig(), serve_cfg, monitor_cfg)
    wait_ready(url)
    return url, serve_cfg, monitor_cfg


def bench_batch(url: str, meta: Any, bundle: Any, raw: Any) -> float:
    """10,000 rows through /predict/batch (Arrow IPC) against raw Booster.predict on the same rows: the ratio."""
    import numpy as np
    import pyarrow as pa

    rows = raw.slice(0, 10_000)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as w:
        w.write_table(rows)
    payload = sink.getvalue().to_pybytes()
    X = np.column_stack([np.asarray(meta.split("test").slice(0, 10_000)[c], dtype=np.float64)
                         for c in bundle.booster.feature_name()])
    batch_s, raw_s = [], []
    for _ in range(5):
        t = time.perf_counter()
        req = urllib.request.Request(url + "/predict/batch", data=payload, method="POST",
                                     headers={"content-type": "application/vnd.apache.arrow.stream"})
        urllib.request.urlopen(req, timeout=60).read()
        batch_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        bundle.booster.predict(X, num_threads=1)
        raw_s.append(time.perf_counter() - t)
    batch_ratio = min(raw_s) / min(batch_s)
    print(f"10k-row batch : {10_000 / min(batch_s):,.0f} rows/s through HTTP vs {10_000 / min(raw_s):,.0f} "
          f"rows/s raw Booster.predict (ratio {batch_ratio:.2f})", flush=True)
    return batch_ratio


def bench_monitor(url: str, body: Path, first_on_p50: float, serve_cfg: Any, monitor_cfg: Any,
                  args: argparse.Namespace) -> float:
    """Monitor off and on again on the same replicas (only user_config changes), alternating, so the
    comparison is not confounded by new replica processes; the median p50 of each counts."""
    import numpy as np

    from raygbm.config import RegistryConfig
    from raygbm.serving.deploy import swap_model

    on, off = [first_on_p50], []
    for _ in range(args.monitor_rounds):
        swap_model(RegistryConfig(), serve_cfg, monitor_cfg, monitor_on=False)
        off.append(wrk(url, body, 1, max(args.duration // 2, 3))["p50_ms"])
        swap_model(RegistryConfig(), serve_cfg, monitor_cfg, monitor_on=True)
        on.append(wrk(url, body, 1, max(args.duration // 2, 3))["p50_ms"])
    overhead = float(np.median(on)) / float(np.median(off)) - 1
    print(f"monitor on/off: c=1 p50 {', '.join(f'{v:.2f}' for v in on)} ms on, {', '.join(f'{v:.2f}' for v in off)} "
          f"ms off → monitor adds {overhead:+.1%} to the median p50", flush=True)
    return overhead


def bench_write_ahead(body: Path, work: Path) -> tuple[float, float]:
    """What a replica adds per /predict request before answering, for the prediction log's write-ahead
    file (``monitoring.wal``): the record built and written, without and with fsync (µs, medians)."""
    import numpy as np

    from raygbm.monitoring.prediction_log import RawRows
    from raygbm.monitoring.wal import WalWriter, frame

    data = body.read_bytes()
    out = []
    for fsync in (False, True):
        writer = WalWriter(work / f"wal-{fsync}", fsync=fsync)
        times = []
        for i in range(2000 if not fsync else 200):
            t = time.perf_counter()
            fd = writer.append(frame("1", time.time(), RawRows([f"{i:032x}"], body=data), np.array([0.5])))
            if fd is not None:
                os.fsync(fd)
            times.append(time.perf_counter() - t)
        writer.close()
        out.append(float(np.median(times)) * 1e6)
    print(f"write-ahead   : {out[0]:.1f} µs per request ({out[1]:.0f} µs with monitor.feedback.fsync)", flush=True)
    return out[0], out[1]


def main() -> None:
    if sys.argv[1:2] == ["--plain-server"]:
        return plain_server(sys.argv[2], int(sys.argv[3]))
    args = parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench/serve.py needs wrk: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="raygbm-bench-serve-"))
    os.environ["RAYGBM_HOME"] = str(work / "home")
    try:
        cfg, meta, bundle, raw = register_model(args, work)
        fields = list(dict.fromkeys(bundle.preprocessor.schema.features))
        body = work / "one.json"
        body.write_text(json.dumps({c: raw.column(c)[0].as_py() for c in fields}))
        print(f"model: {bundle.booster.num_trees()} trees on {len(bundle.booster.feature_name())} features; "
              f"wrk -t1, {args.duration}s per run", flush=True)
        p1, pc = bench_plain(bundle.path, body, args)
        url, serve_cfg, monitor_cfg = deploy_ours(cfg, args)
        o1 = wrk(url, body, 1, args.duration)
        oc = wrk(url, body, args.concurrency, args.duration)
        print(f"raygbm serve  : c=1 p50 {o1['p50_ms']:.2f} ms p99 {o1['p99_ms']:.2f} ms {o1['rps']:.0f} rps; "
              f"c={args.concurrency} {oc['rps']:.0f} rps (non-2xx {o1['non_2xx'] + oc['non_2xx']})", flush=True)
        with urllib.request.urlopen(url + "/drift", timeout=30) as r:
            drift = json.loads(r.read())
        print(f"  monitor: {drift['rows_seen']:,} rows seen, {len(drift['windows'])} windows, "
              f"{drift['dropped_batches']} batches dropped", flush=True)
        batch_ratio = bench_batch(url, meta, bundle, raw)
        overhead = bench_monitor(url, body, o1["p50_ms"], serve_cfg, monitor_cfg, args)
        wal_us, wal_fsync_us = bench_write_ahead(body, work)
        print(f"RESULT p50_ms={o1['p50_ms']:.3f} p99_ms={o1['p99_ms']:.3f} rps={oc['rps']:.0f} plain_rps={pc['rps']:.0f} "
              f"rps_ratio={oc['rps'] / pc['rps']:.3f} batch_ratio={batch_ratio:.3f} monitor_overhead={overhead:.3f} "
              f"plain_p50_ms={p1['p50_ms']:.3f} plain_p99_ms={p1['p99_ms']:.3f} c1_rps={o1['rps']:.0f} "
              f"concurrency={args.concurrency} ingress={args.ingress} replicas={args.replicas} cpus={os.cpu_count()} "
              f"wal_us={wal_us:.1f} wal_share={wal_us / 1000 / o1['p50_ms']:.4f} wal_fsync_us={wal_fsync_us:.0f}")
    finally:
        clean_up(work)


def clean_up(work: Path) -> None:
    """Serve stopped (if it started) and the bench's folder removed."""
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
