"""Training speed: our Ray Train path (LightGBMTrainer, reporting every K rounds) against plain
``lgb.train`` on the same data, parameters and threads, in one run.

    python bench/train.py [--rows 200000] [--rounds 60] [--threads 1] [--report-every 25]

The boosting loop is timed inside the Ray Train worker (reports and checkpoints included) and compared
with plain LightGBM's; Ray's fixed per-run setup (planning the shards from the Parquet footers, starting
the worker group, each worker reading its shard, tearing it down) is reported separately. The plain loop
runs twice and the Ray path once cold and ``--repeats`` (2) times warm; the best of each counts. Ends with:

    RESULT loop_ratio=<ray loop / plain loop> setup_s=... ray_loop_s=... plain_loop_s=... total_s=...
           other_cores=<CPU the machine used during the Ray loop besides the boosting thread, in cores>
           ray_loop_cpu_s=... ray_loop_runqueue_s=<the Ray loop thread's wait for a core> plain_loop_cpu_s=...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sampling import Sampler, busy_cores  # noqa: E402  (bench/sampling.py)


class MachineCpu(Sampler):
    """The whole machine's CPU time (``/proc/stat``), every 100 ms: what ran besides the worker's boosting
    loop, at no cost to it."""

    def __init__(self) -> None:
        super().__init__(0.1)
        self.samples: list[tuple[float, float]] = []

    def sample(self) -> None:
        self.samples.append(busy_cores())

    def between(self, start: float, end: float) -> float:
        """CPU seconds used on the machine between the samples nearest ``start`` and ``end``."""
        first = min(self.samples, key=lambda s: abs(s[0] - start))
        last = min(self.samples, key=lambda s: abs(s[0] - end))
        return last[1] - first[1]


class ProcessCpu(Sampler):
    """Every process's CPU time, every 200 ms (``--who``): which processes ran beside the loop. Reading every
    process's command line costs ~0.1 s of CPU per loop, itself on the other core, so it is off by default."""

    def __init__(self) -> None:
        super().__init__(0.2)
        self.samples: list[tuple[float, dict[int, tuple[float, str]]]] = []

    def sample(self) -> None:
        import psutil

        now, cpu = time.time(), {}
        for p in psutil.process_iter(["name", "cmdline", "cpu_times", "create_time"]):
            try:
                t = p.info["cpu_times"]
                title = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])
                cpu[p.pid] = (t.user + t.system, f"{title[:60].strip()} (started {p.info['create_time'] - self.t0:+.1f}s)")
            except (TypeError, AttributeError):  # a process that ended while being read
                continue
        self.samples.append((now, cpu))

    def between(self, start: float, end: float) -> list[tuple[float, str]]:
        """CPU seconds per process between the samples nearest ``start`` and ``end``, largest first (each
        process named with its start time, from the sampler's start)."""
        first = min(self.samples, key=lambda s: abs(s[0] - start))[1]
        last = min(self.samples, key=lambda s: abs(s[0] - end))[1]
        used = [(cpu - first.get(pid, (0.0, ""))[0], title) for pid, (cpu, title) in last.items()]
        return sorted((u for u in used if u[0] > 0.005), reverse=True)


def clock(m: dict[str, float]) -> str:
    """The boosting thread's CPU time and run-queue wait (``training.train.thread_clock``); with one
    LightGBM thread, the loop's wall time is these two plus time blocked."""
    wait = m.get("loop_runqueue_s")
    return (f"the boosting thread on a core {m['loop_cpu_s']:.2f}s"
            + (f", runnable but waiting for one {wait:.2f}s" if wait is not None else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1, help="LightGBM threads, same for both paths")
    ap.add_argument("--report-every", type=int, default=25)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2, help="warm Ray runs; the best counts, as the best of "
                    "two plain runs does")
    ap.add_argument("--who", action="store_true", help="also sample every process's CPU during the Ray loop "
                    "(costs CPU beside the loop)")
    args = ap.parse_args()

    from raygbm.config import ResourcesConfig, TrainConfig, load_config
    from raygbm.data.generate import GeneratorSpec, generate_dataset
    from raygbm.data.preprocess import LocalRunner, preprocess
    from raygbm.training.train import RunMeta, metric_name, train_in_process, train_with_ray

    work = Path(tempfile.mkdtemp(prefix="raygbm-bench-train-"))
    os.environ["RAYGBM_HOME"] = str(work / "home")
    try:
        generate_dataset(work / "data", GeneratorSpec(rows=args.rows, shards=4, seed=3))
        cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(work / "data"), "data.label": "label"})
        meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
        tc = TrainConfig(num_boost_round=args.rounds, early_stopping_rounds=None,
                         report_every=args.report_every, checkpoint_every=args.checkpoint_every)

        # Two plain runs, the faster counts: on a shared machine one run alone is noisy.
        plain = min((train_in_process(meta, tc, num_threads=args.threads) for _ in range(2)), key=lambda r: r.timings["boost_s"])
        plain_loop = plain.timings["boost_s"]
        print(f"plain lgb.train     : loop {plain_loop:6.2f}s  ({args.rounds} rounds, {args.threads} thread(s)); "
              f"{clock(plain.timings)}", flush=True)

        from raygbm.runtime import ensure_ray

        ensure_ray(ResourcesConfig())
        runs = []
        for i, attempt in enumerate(["cold"] + ["warm"] * args.repeats):
            t = time.perf_counter()
            with MachineCpu() as machine, (ProcessCpu() if args.who else contextlib.nullcontext()) as who:
                r = train_with_ray(meta, tc, ResourcesConfig(cpus_per_worker=args.threads), work / "ray_train",
                                   f"bench-{i}")
            total = time.perf_counter() - t
            loop = r.metrics["boost_s"]
            # The machine's CPU while the worker's loop ran (its window from the worker's own clock), less
            # the boosting thread's own.
            start, end = r.metrics["worker_ended_at"] - loop, r.metrics["worker_ended_at"]
            other_cpu = max(0.0, machine.between(start, end) - r.metrics["loop_cpu_s"]) / loop
            print(f"  CPU during the loop ({loop:.2f}s): the boosting thread {r.metrics['loop_cpu_s']:.2f}s, "
                  f"everything else {other_cpu * loop:.2f}s ({other_cpu:.2f} cores)", flush=True)
            if who is not None:
                used = who.between(start, end)
                for u, title in used[:8]:
                    print(f"    {u:5.2f}s  {title}", flush=True)
            runs.append((total, loop, other_cpu, r.metrics))
            print(f"ray train ({attempt})    : loop {loop:6.2f}s  total {total:6.2f}s  setup {total - loop:6.2f}s  "
                  f"validation {metric_name('binary')} {r.metrics.get('score', float('nan')):.4f} (plain {plain.metrics['score']:.4f})", flush=True)
            print("  setup parts: " + ", ".join(f"{k} {v:.2f}s" for k, v in r.timings.items()), flush=True)
            print(f"  in the loop: handing reports over {r.metrics['report_s']:.3f}s, waiting for the last ones "
                  f"{r.metrics['report_wait_s']:.3f}s; {clock(r.metrics)}", flush=True)
        # The best warm run counts, as the best of the plain runs does.
        total, loop, other_cpu, ray_clock = min(runs[1:], key=lambda run: run[1])
        print(f"loop ratio (ray / plain): {loop / plain_loop:.3f}; fixed Ray setup per run {total - loop:.1f}s")
        print(f"RESULT loop_ratio={loop / plain_loop:.3f} setup_s={total - loop:.2f} ray_loop_s={loop:.3f} "
              f"plain_loop_s={plain_loop:.3f} total_s={total:.2f} cold_setup_s={runs[0][0] - runs[0][1]:.2f} "
              f"other_cores={other_cpu:.2f} ray_loop_cpu_s={ray_clock['loop_cpu_s']:.3f} "
              f"ray_loop_runqueue_s={ray_clock.get('loop_runqueue_s', float('nan')):.3f} "
              f"plain_loop_cpu_s={plain.timings['loop_cpu_s']:.3f} rounds={args.rounds} rows={args.rows}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
