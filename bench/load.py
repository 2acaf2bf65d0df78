"""The autoscaled endpoint under a real load tool: Locust steps from 1 to 50 concurrent users (no think
time) against `/predict` with the default serve config plus autoscaling (min 1, max 4 replicas of half a
CPU each), and the requests/s, p50/p99 latency, errors and replica count are recorded every second.

    python bench/load.py [--steps 1:15,5:15,10:15,20:15,30:15,40:15,50:30] [--output bench/results/load.png]

Saves the time series as a PNG (and CSV beside it) and ends with:

    RESULT users=50 rps_at_max=... p50_ms_at_max=... p99_ms_at_max=... error_rate=... max_replicas=...
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import register_model, wait_ready  # noqa: E402  (bench/serve.py: the same model set-up)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="1:15,5:15,10:15,20:15,30:15,40:15,50:30", help="users:seconds,...")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--max-replicas", type=int, default=4)
    ap.add_argument("--output", "--out", dest="out", default=str(ROOT / "bench" / "results" / "load.png"),
                    help="the PNG to write (--out: its old name, as raygbm's CLI)")
    return ap.parse_args()


class ReplicaCounter(threading.Thread):
    """Running replicas of the endpoint, sampled every second from Serve's status."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from ray import serve

        while not self.stop.wait(1.0):
            try:
                dep = serve.status().applications["raygbm"].deployments["ModelServer"]
                self.samples.append((time.time(), dep.replica_states.get("RUNNING", 0)))
            except Exception:  # the status call can time out under load: that second has no sample
                pass


def deploy(args: argparse.Namespace) -> str:
    from raygbm.config import AutoscalingConfig, MonitorConfig, RegistryConfig, ResourcesConfig, ServeConfig
    from raygbm.runtime import ensure_ray
    from raygbm.serving.deploy import deploy as deploy_endpoint

    serve_cfg = ServeConfig(port=8433, replica_cpus=0.5, autoscaling=AutoscalingConfig(
        min_replicas=1, max_replicas=args.max_replicas, target_ongoing_requests=8, upscale_delay_s=5,
        downscale_delay_s=30))
    ensure_ray(ResourcesConfig(), serve_cfg)
    url = deploy_endpoint(RegistryConfig(), serve_cfg, MonitorConfig())
    return url


def request_fields(url: str, timeout: float = 120) -> set[str]:
    """The record fields the endpoint takes (GET /model), once it answers."""
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/model", timeout=5) as r:
                return set(json.loads(r.read())["request_schema"]["oneOf"][0]["properties"])
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def run_locust(url: str, record: Path, steps: str, prefix: Path) -> None:
    env = {**os.environ, "RAYGBM_LOAD_RECORD": str(record), "RAYGBM_LOAD_STEPS": steps}
    subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
                    "--host", url, "--csv", str(prefix), "--csv-full-history", "--only-summary",
                    "--loglevel", "WARNING"], env=env, check=True)


def series(history: Path, replicas: list[tuple[float, int]]) -> list[dict[str, float]]:
    """Locust's per-second aggregate rows joined with the replica count sampled nearest in time."""
    out = []
    with history.open() as f:
        for row in csv.DictReader(f):
            if row["Name"] != "Aggregated" or row["50%"] in ("N/A", ""):
                continue
            ts = float(row["Timestamp"])
            count = min(replicas, key=lambda s: abs(s[0] - ts))[1] if replicas else 0
            out.append({"ts": ts, "users": float(row["User Count"]), "rps": float(row["Requests/s"]),
                        "failures_s": float(row["Failures/s"]), "p50_ms": float(row["50%"]),
                        "p99_ms": float(row["99%"]), "replicas": count,
                        "requests": float(row["Total Request Count"]), "failed": float(row["Total Failure Count"])})
    return out


def plot(rows: list[dict[str, float]], out: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = rows[0]["ts"]
    t = [r["ts"] - t0 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(t, [r["rps"] for r in rows], label="requests/s")
    axes[0].plot(t, [r["failures_s"] for r in rows], label="failures/s", color="tab:red")
    axes[0].set_ylabel("per second")
    axes[1].plot(t, [r["p50_ms"] for r in rows], label="p50")
    axes[1].plot(t, [r["p99_ms"] for r in rows], label="p99")
    axes[1].set_ylabel("latency (ms)")
    axes[2].step(t, [r["users"] for r in rows], label="users", where="post")
    ax2 = axes[2].twinx()
    ax2.step(t, [r["replicas"] for r in rows], label="replicas", where="post", color="tab:green")
    ax2.set_ylabel("running replicas")
    ax2.set_ylim(0, max(r["replicas"] for r in rows) + 1)
    axes[2].set_ylabel("concurrent users")
    axes[2].set_xlabel("seconds")
    for ax in (*axes, ax2):
        ax.legend(loc="upper left" if ax is not ax2 else "upper right", fontsize=8)
    fig.suptitle("raygbm endpoint under Locust (autoscaling 1-4 replicas, 2 cores)\n" + command, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="raygbm-load-"))
    os.environ["RAYGBM_HOME"] = str(work / "home")
    from ray import serve

    from raygbm.registry.store import Registry

    _, _, bundle, raw = register_model(args, work)
    Registry().promote(Registry().get("1"))
    url = deploy(args)
    fields = request_fields(url)
    first = raw.slice(0, 1).to_pylist()[0]
    record = work / "record.json"
    record.write_text(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v)
                                  for k, v in first.items() if k in fields}))
    wait_ready(url, body=record.read_bytes())
    counter = ReplicaCounter()
    counter.start()
    run_locust(url, record, args.steps, work / "locust")
    counter.stop.set()
    rows = series(work / "locust_stats_history.csv", counter.samples)
    out = Path(args.out)
    plot(rows, out, "python bench/load.py " + " ".join(sys.argv[1:]))
    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    top = max(r["users"] for r in rows)
    at_max = [r for r in rows if r["users"] == top][5:] or [r for r in rows if r["users"] == top]
    mean = lambda k: sum(r[k] for r in at_max) / len(at_max)  # noqa: E731
    last = rows[-1]
    serve.shutdown()
    print(f"RESULT users={top:.0f} rps_at_max={mean('rps'):.0f} p50_ms_at_max={mean('p50_ms'):.0f} "
          f"p99_ms_at_max={mean('p99_ms'):.0f} error_rate={last['failed'] / max(last['requests'], 1):.5f} "
          f"requests={last['requests']:.0f} max_replicas={max(r['replicas'] for r in rows)} png={out}")


if __name__ == "__main__":
    main()
