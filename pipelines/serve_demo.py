"""The serving half of `make demo`: deploy the champion, send clean then drifted traffic through HTTP,
print the drift verdicts and write the HTML drift report, then close the loop (``pipelines.loop_demo``:
labelled concept-drifted traffic, a retraining Ray Job, the challenger promoted or rejected, the winner
served), then shut down.

    python -m pipelines.serve_demo --config pipelines/configs/demo.yaml [--rows 4000] [--set key=value]

Clean traffic is the newest rows of the training data's own test split (raw, as a client would send
them); drifted traffic is freshly generated data with the generator's drift switched on. With the loop
(the default), the endpoint requires its bearer token, as every endpoint with the loop does: the demo
makes one for itself (``RAYGBM_ENDPOINT_TOKEN``, unless set) and sends it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def _auth() -> dict[str, str]:
    from raygbm.serving.client import endpoint_auth

    return endpoint_auth()


def _get(url: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=_auth()), timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, records: list[dict]) -> dict:
    req = urllib.request.Request(url + "/predict", data=json.dumps(records).encode(), method="POST",
                                 headers={"content-type": "application/json", **_auth()})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _records(table, fields: list[str]) -> list[dict]:
    cols = {c: table.column(c).to_pylist() for c in fields}
    return [{c: (v[i].isoformat() if hasattr(v[i], "isoformat") else v[i]) for c, v in cols.items()}
            for i in range(table.num_rows)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--data", default=None, help="the training data (to find its preprocessed test split)")
    ap.add_argument("--rows", type=int, default=4000, help="clean rows, then as many drifted rows")
    ap.add_argument("--no-loop", action="store_true", help="stop after the drift report (no labels, no retraining)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)

    import pyarrow.parquet as pq
    from ray import serve

    from raygbm.application import deploy
    from raygbm.config import load_config
    from raygbm.data.generate import DriftSpec, GeneratorSpec, generate_dataset
    from raygbm.data.preprocess import preprocess
    from raygbm.data.split import RAW_TEST
    from raygbm.errors import RaygbmError
    from raygbm.monitoring.report import drift_report_html
    from raygbm.paths import home
    from raygbm.runtime import ensure_ray

    try:
        cfg = load_config(args.config, args.sets, {"data.source": args.data})
        if not args.no_loop:  # the loop retrains on /feedback labels: only token holders may send them
            os.environ.setdefault("RAYGBM_ENDPOINT_TOKEN", secrets.token_hex(24))
            cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"require_token": True})})
        ensure_ray(cfg.resources, cfg.serve)
        run_dir = preprocess(cfg).run_dir  # the finished run is found and reused
        url = deploy(cfg)
    except RaygbmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        info = _get(url + "/model")
        fields = list(info["request_schema"]["oneOf"][0]["properties"])
        print(f"serving model v{info['version']} at {url}; drift windows of {cfg.monitor.window_size} rows"
              + ("; every route but the probes needs its token (RAYGBM_ENDPOINT_TOKEN)" if cfg.serve.require_token else ""))
        raw = pq.read_table(run_dir / RAW_TEST)
        step = max(raw.num_rows // args.rows, 1)  # spread over the whole test period, not its first hours
        clean = _records(raw.take(list(range(0, raw.num_rows, step))[: args.rows]), fields)
        with tempfile.TemporaryDirectory() as d:
            # Spread over months like the training data (rows are 15 s apart), so that only the injected
            # drift differs, not the hour of day.
            step = 50
            generate_dataset(Path(d), GeneratorSpec(rows=args.rows * step, shards=1, seed=99, drift=DriftSpec(0, shift=1.5)))
            drifted = _records(pq.read_table(d).take(list(range(0, args.rows * step, step))), fields)
        for name, records in (("clean", clean), ("drifted", drifted)):
            t = time.perf_counter()
            for i in range(0, len(records), 200):
                _post(url, records[i:i + 200])
            print(f"sent {len(records):,} {name} rows in {time.perf_counter() - t:.1f}s")
        want = (len(clean) + len(drifted)) // cfg.monitor.window_size
        deadline = time.time() + 30
        while True:  # the monitor is fed off the request path: give it a moment to catch up
            try:
                report = _get(url + "/drift")
            except urllib.error.HTTPError as exc:  # e.g. a champion registered before drift monitoring
                print(f"no drift report: {json.loads(exc.read()).get('error')}")
                return
            if len(report["windows"]) >= want or time.time() > deadline:
                break
            time.sleep(0.5)
        for w in report["windows"]:
            flagged = ", ".join(w["drifted_features"]) or "-"
            print(f"window {w['index']:3d}: {w['rows']} rows  {w['verdict']:5s}  drifted: {flagged}"
                  + ("  (prediction drift)" if w["prediction"]["drift"] else ""))
        out = home() / "drift-report.html"
        out.write_text(drift_report_html(report))
        print(f"drift report: {out.resolve()}")
        if not args.no_loop:
            from pipelines.loop_demo import run_loop

            run_loop(cfg, url, fields, args.rows, _records)
    finally:
        serve.shutdown()


if __name__ == "__main__":
    main()
