"""Training LightGBM on the preprocessed splits: in-process, or with Ray Train's LightGBMTrainer.

Ray's stock ``RayTrainReportCallback`` calls ``ray.train.report`` every boosting round, and each call is a
barrier across the workers that waits on the Train controller, far slower than a boosting round. So
workers report every ``report_every`` rounds, checkpoint every ``checkpoint_every`` rounds, and LightGBM's
own early stopping decides when to stop (docs/benchmarks.md has the figures). After a worker failure Ray
Train restarts the group and ``train_fn_per_worker`` resumes from the last checkpoint with ``init_model``, not from round 0.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import lightgbm as lgb
import pyarrow as pa
import pyarrow.parquet as pq

from raygbm.config import ResourcesConfig, TrainConfig
from raygbm.errors import DataError
from raygbm.training.faults import Faults

CHECKPOINT_FILE = "model.txt"  # the LightGBM text model inside a Ray Train checkpoint


def objective_params(task: str, num_classes: int | None, metric: str | None = None) -> dict[str, Any]:
    if task not in ("binary", "multiclass", "regression"):
        raise DataError(f"unknown task {task!r}")
    out: dict[str, Any] = {"objective": task, "metric": metric_name(task, metric)}
    if task == "multiclass":
        out["num_class"] = int(num_classes or 0)
    return out


# Log loss rather than AUC for binary tasks: a smooth, proper score. On small folds AUC moves in coarse
# steps and plateaus near 1, so early stopping and the search pick on noise (docs/benchmarks.md's quality benchmark
# has the figures); the champion gate still compares test AUC (registry.metric).
DEFAULT_METRIC = {"binary": "binary_logloss", "multiclass": "multi_logloss", "regression": "rmse"}


def metric_name(task: str, metric: str | None = None) -> str:
    """The LightGBM metric early stopping, tuning and the selection optimise."""
    return metric or DEFAULT_METRIC[task]


def lgb_params(train: TrainConfig, task: str, num_classes: int | None, num_threads: int) -> dict[str, Any]:
    return {
        **train.params,
        **objective_params(task, num_classes, train.metric),
        "num_threads": num_threads,
        "seed": train.seed,
        "deterministic": True,
        "verbosity": -1,
    }


def lgb_dataset(table: pa.Table, label: str, categorical: list[str], reference: lgb.Dataset | None = None,
                params: dict[str, Any] | None = None) -> lgb.Dataset:
    """LightGBM 4 takes Arrow directly (pandas 3's Arrow-backed dtypes it would reject). ``params``: the
    binning parameters (max_bin, ...) for a dataset constructed before training sees them."""
    y = table.column(label)
    return lgb.Dataset(
        table.drop_columns([label]), label=y, categorical_feature=categorical, reference=reference, free_raw_data=True,
        params=params,
    )


def lgb_datasets(train: pa.Table, valid: pa.Table | None, label: str,
                 categorical: list[str]) -> tuple[lgb.Dataset, lgb.Dataset | None]:
    """Training and validation sets; validation is binned with the training set's bins (none: a refit)."""
    dtrain = lgb_dataset(train, label, categorical)
    return dtrain, lgb_dataset(valid, label, categorical, reference=dtrain) if valid is not None else None


def trial_mode(train_rows: int, resources: ResourcesConfig) -> str:
    """Training (a trial or a fit) in one process unless the data is too big for one worker or more
    workers were asked for: ``"in_process"`` or ``"ray_train"``."""
    if resources.trial_mode != "auto":
        return resources.trial_mode
    if resources.num_workers > 1 or train_rows > resources.in_process_max_rows:
        return "ray_train"
    return "in_process"


@dataclass
class RunMeta:
    """What training needs to know about a preprocess run directory."""

    run_dir: Path
    label: str
    task: str
    num_classes: int | None
    categorical: list[str]
    features: list[str]

    @classmethod
    def load(cls, run_dir: Path) -> "RunMeta":
        run_dir = Path(run_dir)
        try:
            pre = json.loads((run_dir / "preprocessor.json").read_text())
        except FileNotFoundError:
            raise DataError(f"{run_dir}: not a preprocess run (no preprocessor.json)") from None
        classes = pre["label_classes"]
        return cls(run_dir, pre["schema"]["label"], pre["task"], len(classes) if classes else None,
                   pre["categorical_features"], pre["feature_names"])

    def split(self, name: str) -> pa.Table:
        """A split's features (only ``features``: a selection may have dropped some) and label."""
        return pq.read_table(self.run_dir / name, columns=[*self.features, self.label])

    def rows(self, name: str) -> int:
        """A split's row count, from the Parquet footers."""
        return sum(pq.ParquetFile(p).metadata.num_rows for p in (self.run_dir / name).glob("*.parquet"))

    def splits(self, names: tuple[str, ...]) -> pa.Table:
        """Several splits' rows as one table (train + validation for the refit)."""
        return pa.concat_tables([self.split(n) for n in names])

    def with_features(self, keep: list[str]) -> "RunMeta":
        kept = [f for f in self.features if f in set(keep)]
        return replace(self, features=kept, categorical=[c for c in self.categorical if c in set(kept)])


class ReportEveryK:
    """LightGBM callback: hands metrics (and, every ``checkpoint_every`` rounds, the model) to ``report``
    every ``report_every`` rounds instead of every round."""

    order = 40  # after LightGBM's own evaluation logging and early stopping bookkeeping

    def __init__(self, report_every: int, checkpoint_every: int, report: Callable[[dict[str, float], lgb.Booster | None], None]):
        self.report_every = report_every
        self.checkpoint_every = checkpoint_every
        self.report = report
        self.last_reported = 0

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        done = env.iteration + 1
        final = done == env.end_iteration
        if done % self.report_every and done % self.checkpoint_every and not final:
            return
        metrics = metrics_of(env.evaluation_result_list)
        metrics["iteration"] = done
        self.last_reported = done
        self.report(metrics, env.model if (done % self.checkpoint_every == 0 or final) else None)


def gain_importance(booster: lgb.Booster) -> dict[str, float]:
    """Each feature's total split gain in the model."""
    gains = booster.feature_importance("gain")
    return {n: float(g) for n, g in zip(booster.feature_name(), gains)}


def best_metrics(booster: lgb.Booster) -> dict[str, float]:
    """Validation metrics at the best iteration (early stopping) or the last one."""
    out = {f"validation-{k}": float(v) for k, v in (booster.best_score.get("validation") or {}).items()}
    if out:
        out["score"] = next(iter(out.values()))
    return out


def metrics_of(results: list[tuple]) -> dict[str, float]:
    """LightGBM's evaluation list as a dict; ``score`` is the first metric (the one early stopping and
    tuning use). ``lgb.cv``'s fold means (entries with a fifth field, the spread over the folds) are
    reported as ``cv-<metric>``, ``lgb.train``'s as ``<dataset>-<metric>``."""
    out: dict[str, float] = {}
    for r in results or []:
        name = f"cv-{r[1]}" if len(r) == 5 else f"{r[0]}-{r[1]}"
        out[name] = float(r[2])
    if results:
        out["score"] = float(results[0][2])
    return out


def boost(
    params: dict[str, Any],
    dtrain: lgb.Dataset,
    dvalid: lgb.Dataset | None,
    train: TrainConfig,
    callbacks: list[Callable] = (),  # type: ignore[assignment]
    init_model: lgb.Booster | None = None,
) -> lgb.Booster:
    """``lgb.train`` with early stopping on the validation split (the shared core of every path); without
    ``dvalid`` (a refit) exactly ``train.num_boost_round`` rounds."""
    start = init_model.current_iteration() if init_model is not None else 0
    cbs = list(callbacks)
    if train.early_stopping_rounds and dvalid is not None:
        cbs.append(lgb.early_stopping(train.early_stopping_rounds, first_metric_only=True, verbose=False))
    return lgb.train(
        params,
        dtrain,
        num_boost_round=max(train.num_boost_round - start, 0),
        valid_sets=[dvalid] if dvalid is not None else None,
        valid_names=["validation"] if dvalid is not None else None,
        init_model=init_model,
        keep_training_booster=False,
        callbacks=cbs,
    )


@dataclass
class TrainResult:
    booster: lgb.Booster
    metrics: dict[str, float]
    best_iteration: int
    timings: dict[str, float] = field(default_factory=dict)


def thread_clock() -> tuple[float, float | None]:
    """This thread's CPU seconds, and on Linux its seconds spent runnable but waiting for a core
    (``/proc/thread-self/schedstat``; None elsewhere): what a boosting loop's wall time is made of when the
    machine is shared (``bench/train.py``)."""
    try:
        waited: float | None = int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        waited = None
    return time.thread_time(), waited


def loop_clock(start: tuple[float, float | None]) -> dict[str, float]:
    """``loop_cpu_s`` and ``loop_runqueue_s`` (where known) since ``start`` (a ``thread_clock()``)."""
    cpu, waited = thread_clock()
    out = {"loop_cpu_s": cpu - start[0]}
    if waited is not None and start[1] is not None:
        out["loop_runqueue_s"] = waited - start[1]
    return out


def train_in_process(meta: RunMeta, train: TrainConfig, num_threads: int = 1) -> TrainResult:
    """Plain ``lgb.train`` in this process: the path for data that fits one worker (and the baseline)."""
    t0 = time.perf_counter()
    tr, va = meta.split("train"), meta.split("validation")
    dtrain, dvalid = lgb_datasets(tr, va, meta.label, meta.categorical)
    t1, cpu = time.perf_counter(), thread_clock()
    booster = boost(lgb_params(train, meta.task, meta.num_classes, num_threads), dtrain, dvalid, train)
    t2 = time.perf_counter()
    best = booster.best_iteration or booster.current_iteration()
    return TrainResult(booster, best_metrics(booster), best, {"load_s": t1 - t0, "boost_s": t2 - t1, **loop_clock(cpu)})


# ------------------------------------------------------------------------------------------ Ray Train


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: reads its rows of train and all of validation through Ray Data (the
    trainer's ``datasets``, see ``ingest_datasets``), and trains data-parallel when there is more than one
    worker."""
    import ray.train
    from ray.train.lightgbm import get_network_params

    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    train = TrainConfig.model_validate(config["train"])
    label, categorical = config["label"], config["categorical"]
    t_start = time.time()
    tr = shard_table(ray.train.get_dataset_shard(f"train_{rank}"))
    va = shard_table(ray.train.get_dataset_shard("validation")) if config["has_validation"] else None
    t_data = time.time()
    dtrain, dvalid = lgb_datasets(tr, va, label, categorical)
    params = lgb_params(train, config["task"], config["num_classes"], config["num_threads"])
    if world > 1:
        # Without these two, each worker silently trains its own model on its own shard.
        params.update(tree_learner="data_parallel", pre_partition=True, **get_network_params())

    init_model = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            init_model = lgb.Booster(model_file=str(Path(d) / CHECKPOINT_FILE))

    def send(metrics: dict[str, float], model_text: str | None) -> None:
        # Every worker must call report (it is a barrier); only rank 0 uploads the checkpoint.
        if model_text is not None and rank == 0:
            with tempfile.TemporaryDirectory() as d:
                Path(d, CHECKPOINT_FILE).write_text(model_text)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    reporter = BackgroundReporter(send)

    in_reports = [0.0]  # time the boosting thread spent handing reports over (the model snapshots)

    def report(metrics: dict[str, float], model: lgb.Booster | None) -> None:
        # The model is snapshotted here, in the boosting thread; the report itself (a cross-worker
        # barrier plus the checkpoint upload) runs in the background while boosting goes on.
        t_report = time.perf_counter()
        reporter.submit(metrics, model.model_to_string() if model is not None and rank == 0 else None)
        in_reports[0] += time.perf_counter() - t_report

    callbacks: list[Callable] = [ReportEveryK(train.report_every, train.checkpoint_every, report)]
    if checkpoint is None:
        callbacks += Faults.from_config(config.get("faults")).callbacks(rank, reporter.flush)
    t, cpu = time.perf_counter(), thread_clock()
    try:
        booster = boost(params, dtrain, dvalid, train, callbacks, init_model)
    finally:
        t_close = time.perf_counter()
        reporter.close()  # every report made before the final one has been delivered, in order
    boost_s = time.perf_counter() - t  # the boosting loop, reports and checkpoints included
    close_s = time.perf_counter() - t_close
    clock = loop_clock(cpu)
    best = booster.best_iteration or booster.current_iteration()
    final = best_metrics(booster)
    final.update(
        iteration=booster.current_iteration(), best_iteration=best, boost_s=boost_s,
        report_s=in_reports[0], report_wait_s=close_s, **clock,
        resumed_from=init_model.current_iteration() if init_model else 0,
        worker_started_at=t_start, shard_read_s=t_data - t_start, worker_ended_at=time.time(),
    )
    send(final, booster.model_to_string() if rank == 0 else None)


class BackgroundReporter:
    """Delivers reports in order from one background thread, so the boosting loop does not wait on them.

    ``close`` waits for every pending report and re-raises the first error one of them hit.
    """

    def __init__(self, send: Callable[[dict[str, float], str | None], None]):
        import queue
        import threading

        self._send = send
        self._queue: "queue.Queue[tuple[dict[str, float], str | None] | None]" = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="raygbm-report", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._send(*item)
            except BaseException as exc:  # surfaced by close() in the boosting thread
                self._error = exc
            finally:
                self._queue.task_done()

    def submit(self, metrics: dict[str, float], model_text: str | None) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((metrics, model_text))

    def flush(self) -> None:
        """Wait until every submitted report has been sent."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def split_parts(split_dirs: list[Path]) -> list[tuple[str, int]]:
    """The Parquet part files of one or more splits, in order, with their row counts (from the footers)."""
    files = [str(p) for d in split_dirs for p in sorted(d.glob("*.parquet"))]
    if not files:
        raise DataError(f"{', '.join(map(str, split_dirs))}: no Parquet parts (an empty split?)")
    return [(f, pq.ParquetFile(f).metadata.num_rows) for f in files]


def part_slices(parts: list[tuple[str, int]], workers: int) -> list[list[tuple[str, int, int]]]:
    """The rows of ``parts`` (files in order, with their row counts) cut into ``workers`` contiguous
    shards at row ``n * i // workers``: each shard a list of ``(file, first row, rows)`` slices.

    Every row lands in exactly one shard and the shards differ by at most one row (Ray Train's own
    ``streaming_split(equal=True)`` drops up to workers − 1 rows to make them equal).
    """
    n = sum(rows for _, rows in parts)
    if n < workers:
        raise DataError(f"{n} training rows for {workers} workers: each worker needs at least one row")
    bounds = [n * i // workers for i in range(workers + 1)]
    shards = []
    for lo, hi in zip(bounds, bounds[1:]):
        shard, start = [], 0
        for path, rows in parts:
            first, last = max(lo, start), min(hi, start + rows)
            if first < last:
                shard.append((path, first - start, last - first))
            start += rows
        shards.append(shard)
    return shards


def ingest_datasets(train_slices: list[list[tuple[str, int, int]]], validation_slices: list[tuple[str, int, int]],
                    columns: list[str]) -> dict[str, Any]:
    """The trainer's ``datasets``: ``train_<rank>``, each worker's rows (``part_slices``), and ``validation``.

    A dataset per worker, not one dataset that Ray Train splits: its ``streaming_split(equal=True)``
    leaves out up to workers − 1 rows, and hands out blocks as workers ask, so which rows a worker trains
    on changes from run to run (and from a run to its restart after a lost node). Ours are the same rows
    every time, cut at row ``n * i // workers``. Only the worker of rank i iterates ``train_<i>``.

    The read tasks take no CPU. Ray Train reads the datasets once its workers' placement group is placed,
    and that group holds every CPU of a small node (one worker per 1-CPU node in the multinode test): a
    read task that asked for a CPU would wait for the training it feeds to end, both on the first start
    and after a worker group restarts on a node lost mid-training. Reading is I/O and decoding, not
    boosting; LightGBM starts only once each worker holds its rows."""
    import ray.data

    from raygbm.data.engine import QUIET_DATA_CONTEXT, ParquetSlices, data_context

    def dataset(slices: list[tuple[str, int, int]]) -> Any:
        # One block per slice, read by tasks of several slices (ParquetSlices); a block count of 1 asks
        # Ray Data for no further splitting of them.
        return ray.data.read_datasource(ParquetSlices(slices, columns), num_cpus=0, override_num_blocks=1)

    with data_context(**QUIET_DATA_CONTEXT):
        datasets = {f"train_{rank}": dataset(s) for rank, s in enumerate(train_slices)}
        if validation_slices:
            datasets["validation"] = dataset(validation_slices)
    return datasets


def shard_table(shard: Any) -> pa.Table:
    """A worker's rows of a Ray Train dataset (``ray.train.get_dataset_shard``) as one table."""
    tables = list(shard.iter_batches(batch_format="pyarrow", batch_size=None))
    if not tables or not sum(t.num_rows for t in tables):
        raise DataError("a training worker got no rows from its dataset")
    return pa.concat_tables(tables)


def set_train_environment() -> None:
    """Ray Train's settings for our runs, unless the user set them (the driver's RAY_TRAIN_* variables
    are propagated to the controller actor)."""
    # Train V2 hands each worker's reports to the controller through a queue of size 1 that the
    # controller drains only when it polls the workers (every 2 s by default), so every report made
    # sooner than that blocks training until the next poll. Polling faster removes that wait.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # Ray 2.60's Train starts a PreemptionWatcher actor with every worker group, once the workers are up:
    # a fresh process (~0.7 s of CPU to boot) that then polls for node drains, to hand the training
    # function a preemption notice. Ours reads none (it checkpoints every checkpoint_every rounds and
    # resumes from the last after a lost node), and the boot lands on the boosting loop's first
    # seconds: on 2 cores it took the loop's core share (bench/train.py, --who). Set it to 1 to keep it.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def train_with_ray(
    meta: RunMeta,
    train: TrainConfig,
    resources: ResourcesConfig,
    storage: Path,
    name: str,
    faults: Faults | None = None,
    callbacks: list[Any] | None = None,
    fit_on: tuple[str, ...] = ("train",),
    holdout: str | None = "validation",
) -> TrainResult:
    """One training run as a Ray Train LightGBMTrainer over ``resources.num_workers`` workers.

    ``callbacks`` are Ray Train user callbacks: inside a Tune trial, ``TuneReportCallback`` forwards the
    workers' every-K-rounds reports to Tune (and so to ASHA). The model trains on the ``fit_on`` splits,
    early-stopped on ``holdout``; a refit passes ``("train", "validation")`` and no holdout.
    """
    import ray.train
    from ray.train.lightgbm import LightGBMTrainer

    set_train_environment()
    t0 = time.perf_counter()
    # Each worker's rows are read through Ray Data from the split's Parquet files (which the data stage's
    # tasks wrote from every node, so the run directory is on storage all nodes share, like the
    # checkpoints): files have no owner to lose when a node goes, unlike blocks a task read there.
    train_slices = part_slices(split_parts([meta.run_dir / s for s in fit_on]), resources.num_workers)
    validation_slices = part_slices(split_parts([meta.run_dir / holdout]), 1)[0] if holdout else []
    datasets = ingest_datasets(train_slices, validation_slices, [*meta.features, meta.label])
    trainer = LightGBMTrainer(
        train_fn_per_worker,
        train_loop_config={
            "train": train.model_dump(mode="json"),
            "label": meta.label,
            "categorical": meta.categorical,
            "task": meta.task,
            "num_classes": meta.num_classes,
            "num_threads": resources.cpus_per_worker,
            "faults": (faults or Faults()).to_config(),
            "has_validation": bool(holdout),
        },
        datasets=datasets,
        # Already one dataset per worker; its blocks in the order of its slices, so a worker's rows are in
        # the same order in every run (Ray Data hands blocks out as their read tasks finish otherwise).
        dataset_config=ray.train.DataConfig(datasets_to_split=[],
                                            execution_options=ray.data.ExecutionOptions(preserve_order=True)),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers, resources_per_worker={"CPU": resources.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or None,
        ),
    )
    t1 = time.perf_counter()
    fit_started_at = time.time()
    result = trainer.fit()
    t2 = time.perf_counter()
    fit_ended_at = time.time()
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        booster = lgb.Booster(model_file=str(Path(d) / CHECKPOINT_FILE))
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    timings = {"plan_s": t1 - t0, "fit_s": t2 - t1}
    if "worker_started_at" in metrics:
        timings.update(start_workers_s=metrics["worker_started_at"] - fit_started_at,
                       shard_read_s=metrics["shard_read_s"], teardown_s=fit_ended_at - metrics["worker_ended_at"])
    return TrainResult(booster, metrics, int(metrics.get("best_iteration", booster.current_iteration())), timings)
