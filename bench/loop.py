"""What the loop is worth: recovery time and regret after the world changes, against no retraining and a
fixed retraining schedule, on the same labelled stream.

One source (generated, ``--source-rows``) trains v1 with ``raygbm run`` and the default config. Then, per
scenario, a stream of ``--before`` rows like the source and ``--after`` rows that
(a) carry a concept drift (``raygbm generate --concept-drift``: the features shift and num_0's effect flips),
(b) carry a covariate shift only (the same features shift, the relation holds),
(c) do not change,
is replayed at ``--rate`` rows/s through a real ``raygbm serve`` with the loop on (HTTP ``/predict/batch`` in
chunks of ``--chunk`` rows, ``/feedback`` by prediction id ``--delay`` rows later), default settings except
the drift window (``monitor.window_size``). Each scenario starts from v1 as the champion, with an empty
labelled store and loop state.

The same stream under the two other policies, scored offline by the same bundles (the endpoint's scores
equal the bundle's: ``tests/integration/serve/test_predict.py``; this bench checks it again on v1's rows):
- none: v1 throughout;
- schedule: every ``--every`` rows, ``raygbm.loop.retrain.retrain`` (the loop's own retraining and gate,
  what ``retrain.every_s`` runs) on the labels that have arrived by then; its challenger serves from the row
  the stream has reached when that retraining ends at ``--rate`` (it pays for its training time as the
  loop does).

Per policy: cumulative log loss over the stream, log loss and AUC per window of ``--metric-window`` rows,
rows from the change to the first promotion, promotions, rejections, rollbacks, retraining jobs. Every
promotion is checked on fresh rows of the scenario's later distribution (``--check-rows``): on (b) none may
be worse than the model it replaced. Writes ``bench/results/loop.png`` and ``bench/results/loop.json``.

    python bench/loop.py [--scenarios a,b,c] [--rate 40] [--before 3000] [--after 8000]

Ends with ``RESULT regret_vs_schedule=<loop's cumulative log loss / schedule's on (a)>
recovery_rows=<rows from change to promotion on (a)> false_retrains=<jobs on (c)> ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from raygbm.data.generate import DriftSpec, GeneratorSpec, generate_dataset  # noqa: E402

RAYGBM = str(Path(sys.executable).with_name("raygbm"))
MODEL = "raygbm"
TOKEN = "bench-loop-endpoint-token-0123456789abcdef"
SCENARIOS = {"a": ("concept drift", {"concept": True}), "b": ("covariate shift", {"concept": False}), "c": ("no change", None)}
EPS = 1e-15


def say(line: str) -> None:
    print(line, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_table(folder: Path, rows: int, seed: int, drift_from: int | None, kind: dict[str, Any] | None) -> pa.Table:
    drift = DriftSpec(drift_from, **kind) if kind is not None and drift_from is not None else None
    generate_dataset(folder, GeneratorSpec(rows=rows, shards=1, seed=seed, drift=drift))
    return pq.read_table(folder)


def log_loss_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def run_cli(args: list[str], env: dict[str, str], what: str, timeout: float = 1800) -> str:
    out = subprocess.run([RAYGBM, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed ({out.returncode}): {(out.stdout + out.stderr)[-2000:]}")
    return out.stdout


class Bundles:
    """Registered versions' bundles, loaded once each (the offline policies' scorer)."""

    def __init__(self) -> None:
        self.cache: dict[str, Any] = {}

    def get(self, version: str) -> Any:
        from raygbm.registry.bundle import Bundle
        from raygbm.registry.store import Registry, local_bundle

        if version not in self.cache:
            ref, path = local_bundle(Registry(), version)
            self.cache[version] = Bundle.load(path, ref.tags.get("manifest_sha256"))
        return self.cache[version]

    def scores(self, version: str, raw: pa.Table) -> np.ndarray:
        bundle = self.get(version)
        return np.asarray(bundle.scores(bundle.features(raw.select(bundle.preprocessor.input_columns))))


def reset_to_v1(home: Path, v1: str) -> None:
    """v1 champion again, no loop state (triggers, cooldown, decisions) from an earlier scenario."""
    from raygbm.registry.store import Registry

    reg = Registry()
    reg.promote(reg.get(v1))
    shutil.rmtree(home / "loop" / MODEL, ignore_errors=True)


def live_loop(stream: pa.Table, args: argparse.Namespace, config: Path, env: dict[str, str], log_dir: Path,
              workdir: Path) -> dict[str, Any]:
    """The stream through ``raygbm serve`` with the loop on: per row, the score and version served."""
    from raygbm.monitoring.loop_state import LoopState
    from raygbm.serving.client import Endpoint

    port = free_port()
    sets = ["retrain.enabled=true", "serve.require_token=true", f"monitor.log_dir={log_dir}"]
    cmd = [RAYGBM, "serve", "--config", str(config), "--port", str(port)]
    for s in sets:
        cmd += ["--set", s]
    workdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = workdir / "serve.out", workdir / "serve.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=ROOT)
    n = stream.num_rows
    scores, versions = np.full(n, np.nan), np.empty(n, dtype=object)
    labels = np.asarray(stream["label"])
    inputs = stream.drop_columns(["label"])
    try:
        deadline = time.monotonic() + 300
        while "press Ctrl-C" not in out_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"raygbm serve did not start: {err_path.read_text()[-2000:]}")
            time.sleep(0.5)
        ep = Endpoint(f"http://127.0.0.1:{port}", {"authorization": f"Bearer {TOKEN}"}, timeout_s=60)
        pending: deque[tuple[int, list[str]]] = deque()  # (end row, ids) waiting for their labels
        t0, wall0 = time.monotonic(), time.time()
        late = 0.0
        for start in range(0, n, args.chunk):
            end = min(start + args.chunk, n)
            due = t0 + start / args.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                late = max(late, now - due)
            table, version = ep.score(inputs.slice(start, end - start), "bench")
            scores[start:end] = np.asarray(table["score"])
            versions[start:end] = version
            pending.append((end, table["prediction_id"].to_pylist()))
            while pending and pending[0][0] <= end - args.delay:
                stop, ids = pending.popleft()
                first = stop - len(ids)
                ep.feedback(pa.table({"prediction_id": ids, "label": pa.array(labels[first:stop])}), "bench feedback")
            if end % 2000 < args.chunk:
                say(f"  row {end:,}/{n:,}: versions served so far {sorted(set(v for v in versions[:end] if v))}")
        state = LoopState(Path(env["RAYGBM_HOME"]), MODEL).read()
        wall = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # What the loop did, at the stream row being sent when it happened.
    at_row = lambda t: int(min(n, max(0.0, (t - wall0) * args.rate)))  # noqa: E731
    events = [{"row": at_row(t["at"]), "what": f"trigger {t['id']}: {t.get('outcome', '')}", "reason": t.get("reason", "")}
              for t in state.get("triggers", [])]
    events += [{"row": at_row(d["at"]), "what": f"{d['action']} v{d['version']}", "reason": d.get("reason", "")}
               for d in state.get("decisions", []) if "at" in d]
    return {"scores": scores, "versions": versions, "state": state, "wall_s": wall, "max_late_s": late,
            "events": sorted(events, key=lambda e: e["row"])}


def write_labels(stream: pa.Table, scores: np.ndarray, versions: np.ndarray, upto: int, done: int, t0: float,
                 rate: float, log_dir: Path) -> None:
    """Rows [done, upto) as feedback would have joined them: the served row, its label, score and version."""
    import uuid

    from raygbm.monitoring.labelled import META, write_labelled

    if upto <= done:
        return
    raw = stream.slice(done, upto - done)
    served = t0 + np.arange(done, upto, dtype=np.float64) / rate
    meta = {META[0]: [uuid.uuid4().hex for _ in range(upto - done)], META[1]: list(versions[done:upto]),
            META[2]: served, META[3]: served + 1.0, META[4]: scores[done:upto]}
    for col, values in meta.items():
        raw = raw.append_column(col, pa.array(values))
    write_labelled(log_dir, MODEL, raw)


def schedule_policy(stream: pa.Table, args: argparse.Namespace, config: Path, log_dir: Path, v1: str,
                    bundles: Bundles) -> dict[str, Any]:
    """Every ``--every`` rows, the loop's own retraining (data window, pipeline, gate) on the labels in by
    then; a promoted challenger serves from the row the stream reaches when its retraining ends."""
    from raygbm.config import load_config
    from raygbm.errors import RaygbmError
    from raygbm.loop.retrain import retrain

    cfg = load_config(config, [f"monitor.log_dir={log_dir}"], {})
    n = stream.num_rows
    scores, versions = np.full(n, np.nan), np.empty(n, dtype=object)
    champion, row, labelled = v1, 0, 0
    t0 = time.time() - n / args.rate - 3600  # simulated serving times, all in the past
    events: list[dict[str, Any]] = []
    boundaries = list(range(args.every, n, args.every)) + [n]
    for stop in boundaries:
        # Serve [row, stop) with the champion of the moment.
        scores[row:stop] = bundles.scores(champion, stream.slice(row, stop - row))
        versions[row:stop] = champion
        row = stop
        if stop == n:
            break
        upto = max(0, stop - args.delay)
        write_labels(stream, scores, versions, upto, labelled, t0, args.rate, log_dir)
        labelled = upto
        began = time.monotonic()
        try:
            result = retrain(cfg, trigger=f"schedule-{stop}", now=t0 + stop / args.rate)
        except RaygbmError as exc:
            events.append({"row": stop, "outcome": "failed", "reason": str(exc)})
            say(f"  schedule at row {stop:,}: {exc}")
            continue
        took = time.monotonic() - began
        d = result.decision
        effective = min(n, stop + math.ceil(took * args.rate))
        events.append({"row": stop, "effective_row": effective, "action": d.action, "version": d.version,
                       "replaced": champion, "reason": d.reason, "train_s": round(took, 1)})
        say(f"  schedule at row {stop:,}: v{d.version} {d.action} ({took:.0f} s → serves from row {effective:,}): "
            f"{d.reason[:140]}")
        if d.action == "promoted":
            # The old champion keeps serving while the retraining runs.
            nxt = min(effective, boundaries[boundaries.index(stop) + 1])
            scores[row:nxt] = bundles.scores(champion, stream.slice(row, nxt - row))
            versions[row:nxt] = champion
            row, champion = nxt, d.version
    return {"scores": scores, "versions": versions, "events": events}


def summarize(name: str, y: np.ndarray, scores: np.ndarray, versions: np.ndarray, change: int | None,
              window: int, v1: str) -> dict[str, Any]:
    losses = log_loss_rows(y, scores)
    windows = [(s, min(s + window, len(y))) for s in range(0, len(y), window)]
    first_new = next((i for i, v in enumerate(versions) if v != v1 and (change is None or i >= change)), None)
    return {"policy": name, "cum_log_loss": float(losses.sum()), "mean_log_loss": float(losses.mean()),
            "after_change_log_loss": float(losses[change:].mean()) if change is not None else None,
            "window_log_loss": [float(losses[a:b].mean()) for a, b in windows],
            "window_auc": [auc(y[a:b], scores[a:b]) for a, b in windows],
            "first_new_version_row": first_new,
            "recovery_rows": (first_new - change) if first_new is not None and change is not None else None}


def promotion_check(bundles: Bundles, check: pa.Table, promotions: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Each promotion (new, replaced) on fresh rows of the scenario's later distribution."""
    y = np.asarray(check["label"])
    out = []
    for new, old in promotions:
        a_new, a_old = auc(y, bundles.scores(new, check)), auc(y, bundles.scores(old, check))
        out.append({"version": new, "replaced": old, "auc": round(a_new, 5), "replaced_auc": round(a_old, 5),
                    "worse": a_new < a_old - 0.001})
    return out


def plot(results: dict[str, Any], path: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.8), squeeze=False)
    colors = {"loop": "tab:blue", "schedule": "tab:orange", "none": "tab:gray"}
    for ax, key in zip(axes[0], keys):
        r = results[key]
        for pol in ("none", "schedule", "loop"):
            s = r["policies"][pol]
            xs = [(i + 0.5) * window for i in range(len(s["window_log_loss"]))]
            ax.plot(xs, s["window_log_loss"], label=f"{pol} ({s['cum_log_loss']:,.0f})", color=colors[pol],
                    marker="o", markersize=3)
        if r["change_row"] is not None:
            ax.axvline(r["change_row"], color="black", linestyle="--", linewidth=1)
        for row in r["loop_promotion_rows"]:
            ax.axvline(row, color="tab:blue", linestyle=":", linewidth=1)
        ax.set_title(f"({key}) {r['name']}")
        ax.set_xlabel("stream row")
        ax.set_ylabel(f"log loss per {window:,} rows")
        ax.legend(title="policy (cumulative)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="a,b,c")
    ap.add_argument("--source-rows", type=int, default=10_000)
    ap.add_argument("--before", type=int, default=3000, help="stream rows before the change")
    ap.add_argument("--after", type=int, default=8000, help="stream rows from the change on")
    ap.add_argument("--rate", type=float, default=40.0, help="rows per second through the endpoint")
    ap.add_argument("--chunk", type=int, default=40, help="rows per /predict/batch request")
    ap.add_argument("--delay", type=int, default=400, help="rows between a prediction and its label")
    ap.add_argument("--every", type=int, default=4000, help="the schedule: a retraining every this many rows")
    ap.add_argument("--window", type=int, default=500, help="monitor.window_size (the one setting changed)")
    ap.add_argument("--metric-window", type=int, default=1000)
    ap.add_argument("--check-rows", type=int, default=20_000)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="raygbm-bench-loop-"))
    home = work / "home"
    os.environ["RAYGBM_HOME"] = str(home)
    env = {**os.environ, "RAYGBM_HOME": str(home), "RAYGBM_ENDPOINT_TOKEN": TOKEN}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
        os.environ.pop(key, None)
    config = work / "config.yaml"
    source = work / "source"
    generate_dataset(source, GeneratorSpec(rows=args.source_rows, shards=1, seed=1))
    import yaml

    config.write_text(yaml.safe_dump({"data": {"source": str(source), "label": "label"},
                                      "monitor": {"window_size": args.window}}))
    say(f"bench/loop.py: source {args.source_rows:,} rows; stream {args.before:,} + {args.after:,} rows at "
        f"{args.rate:g} rows/s, labels {args.delay} rows late; schedule every {args.every:,} rows; window "
        f"{args.window}; work {work}")
    t = time.monotonic()
    run_cli(["run", "--config", str(config), "--data", str(source), "--label", "label"], env, "raygbm run (v1)")
    from raygbm.registry.store import Registry

    v1 = Registry().get().version
    say(f"v1 = version {v1}, trained in {time.monotonic() - t:.0f} s (default config)")
    bundles = Bundles()
    results: dict[str, Any] = {}
    streams: dict[str, tuple[pa.Table, pa.Table]] = {}
    keys = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    n = args.before + args.after
    # The live runs first, each with its own embedded Ray in `raygbm serve`; the offline schedule after
    # them, on one Ray in this process (never two Ray instances on the machine at once).
    for i, key in enumerate(keys):
        name, kind = SCENARIOS[key]
        change = args.before if kind is not None else None
        stream = stream_table(work / f"stream-{key}", n, 100 + i, change, kind)
        later = stream_table(work / f"check-{key}", args.check_rows, 200 + i, 0 if kind is not None else None, kind)
        streams[key] = (stream, later)
        reset_to_v1(home, v1)
        say(f"({key}) {name}: the loop, live")
        live = live_loop(stream, args, config, env, work / f"log-{key}-loop", work / f"serve-{key}")
        results[key] = {"name": name, "change_row": change, "live": live}
        state = live["state"]
        say(f"  {len(state.get('jobs', []))} jobs, decisions "
            f"{[(d['action'], d['version']) for d in state.get('decisions', [])]}; {live['wall_s']:.0f} s "
            f"(at most {live['max_late_s']:.1f} s behind the schedule of requests)")
        for e in live["events"]:
            say(f"  row {e['row']:>6,}: {e['what'][:90]}  ({e['reason'][:150]})")
    import ray

    from raygbm.config import ResourcesConfig
    from raygbm.runtime import ensure_ray

    ensure_ray(ResourcesConfig())
    try:
        for key in keys:
            r = results[key]
            stream, later = streams[key]
            reset_to_v1(home, v1)
            say(f"({key}) {r['name']}: the schedule, offline")
            r["schedule"] = schedule_policy(stream, args, config, work / f"log-{key}-schedule", v1, bundles)
    finally:
        ray.shutdown()

    false_retrains = 0
    for key in keys:
        r = results[key]
        stream, later = streams[key]
        y = np.asarray(stream["label"]).astype(np.float64)
        live, sched = r.pop("live"), r["schedule"]
        none_scores = bundles.scores(v1, stream)
        v1_rows = live["versions"] == v1
        parity = float(np.max(np.abs(live["scores"][v1_rows] - none_scores[v1_rows]))) if v1_rows.any() else 0.0
        assert parity < 1e-9, f"the endpoint's v1 scores differ from the bundle's by {parity}"
        change = r["change_row"]
        r["policies"] = {
            "loop": summarize("loop", y, live["scores"], live["versions"], change, args.metric_window, v1),
            "schedule": summarize("schedule", y, sched["scores"], sched["versions"], change, args.metric_window, v1),
            "none": summarize("none", y, none_scores, np.full(len(y), v1, dtype=object), change, args.metric_window, v1)}
        state = live["state"]
        decisions = state.get("decisions", [])
        r["loop"] = {"jobs": len(state.get("jobs", [])), "triggers": [t.get("reason", "")[:200] for t in state.get("triggers", [])],
                     "promotions": sum(d["action"] == "promoted" for d in decisions),
                     "rejections": sum(d["action"] == "rejected" for d in decisions),
                     "rollbacks": sum(d["action"] == "rolled_back" for d in decisions),
                     "decisions": [{k: d.get(k) for k in ("action", "version", "reason")} for d in decisions],
                     "wall_s": round(live["wall_s"], 1), "max_late_s": round(live["max_late_s"], 2),
                     "events": live["events"]}
        r["schedule"] = {"jobs": len(sched["events"]), "events": sched["events"],
                         "promotions": sum(e.get("action") == "promoted" for e in sched["events"]),
                         "rejections": sum(e.get("action") == "rejected" for e in sched["events"])}
        promos = [(d["version"], d.get("other_version") or v1) for d in decisions if d["action"] == "promoted"]
        promos += [(e["version"], e["replaced"]) for e in sched["events"] if e.get("action") == "promoted"]
        r["promotion_check"] = promotion_check(bundles, later, promos)
        r["loop_promotion_rows"] = sorted({i for i in range(1, len(y)) if live["versions"][i] != live["versions"][i - 1]})
        if key == "c":
            false_retrains = r["loop"]["jobs"]
        r["v1_parity_max_abs"] = parity

    say("")
    say(f"{'scenario':<18} {'policy':<9} {'cum log loss':>12} {'after change':>12} {'recovery rows':>13} "
        f"{'promoted':>8} {'rejected':>8} {'rollbacks':>9} {'jobs':>5}")
    for key in keys:
        r = results[key]
        for pol in ("loop", "schedule", "none"):
            s = r["policies"][pol]
            counts = r.get(pol, {"promotions": 0, "rejections": 0, "jobs": 0})
            after = f"{s['after_change_log_loss']:.4f}" if s["after_change_log_loss"] is not None else "-"
            rec = s["recovery_rows"] if s["recovery_rows"] is not None else "-"
            say(f"({key}) {r['name']:<14} {pol:<9} {s['cum_log_loss']:>12,.1f} {after:>12} {rec!s:>13} "
                f"{counts['promotions']:>8} {counts['rejections']:>8} {counts.get('rollbacks', 0):>9} {counts['jobs']:>5}")
        for c in r["promotion_check"]:
            say(f"    promotion v{c['version']} over v{c['replaced']} on {args.check_rows:,} fresh later rows: AUC "
                f"{c['auc']} vs {c['replaced_auc']}{'  WORSE' if c['worse'] else ''}")
    out_dir = ROOT / "bench" / "results"
    plot(results, out_dir / "loop.png", args.metric_window)
    (out_dir / "loop.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1, default=str))
    a = results.get("a")
    regret = (a["policies"]["loop"]["cum_log_loss"] / a["policies"]["schedule"]["cum_log_loss"]) if a else float("nan")
    recovery = a["policies"]["loop"]["recovery_rows"] if a else None
    worse_b = sum(c["worse"] for c in results["b"]["promotion_check"]) if "b" in results else 0
    vs_none = (a["policies"]["loop"]["cum_log_loss"] / a["policies"]["none"]["cum_log_loss"]) if a else float("nan")
    elapsed = time.monotonic() - began
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    say(f"plot: {out_dir / 'loop.png'}; total {elapsed / 60:.1f} min")
    say(f"RESULT regret_vs_schedule={regret:.4f} recovery_rows={recovery if recovery is not None else 'none'} "
        f"false_retrains={false_retrains} regret_vs_none={vs_none:.4f} worse_promotions_b={worse_b} "
        f"minutes={elapsed / 60:.1f}")


if __name__ == "__main__":
    main()
