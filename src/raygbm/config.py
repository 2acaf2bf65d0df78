"""The one typed pipeline config: loaded from YAML, refined with ``--set key=value``, validated once.

Each stage receives only its own section (``DataConfig``, ``SplitConfig``, ...). Compute sizing lives in
``ResourcesConfig`` and never next to model hyperparameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raygbm.errors import ConfigError

Task = Literal["auto", "binary", "multiclass", "regression"]


class _Section(BaseModel):
    # A typo in a key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class Bounds(_Section):
    """Declared valid range of a numeric column; values outside are counted in the data report."""

    min: float | None = Field(None, description="lowest valid value (null: no lower bound)")
    max: float | None = Field(None, description="highest valid value (null: no upper bound)")

    @model_validator(mode="after")
    def _ordered(self) -> "Bounds":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class DataConfig(_Section):
    """Where the raw shards are and how to read them."""

    source: str | None = Field(None, description="directory, glob, file or URI (s3://, gs://, file://)")
    label: str | None = Field(None, description="the column to predict (required)")
    task: Task = Field("auto", description="auto: binary for two label values, multiclass for a few integers or "
                       "strings, else regression")
    numeric: list[str] | None = Field(None, description="numeric features; inferred from the schema if unset")
    categorical: list[str] | None = Field(None, description="categorical features; inferred if unset")
    drop: list[str] = Field(default_factory=list, description="columns never used as features")
    keep_identifiers: list[str] = Field(
        default_factory=list, description="identifier-like columns (integers or text unique per row, numbers "
        "monotonic in row order) to use as features anyway; the data stage leaves the others out and reports "
        "them. A column named in numeric or categorical is kept too")
    bounds: dict[str, Bounds] = Field(default_factory=dict)
    duplicates: Literal["count", "drop"] = Field(
        "count", description="rows repeated whole: counted in the data report, or dropped (the first kept)")
    quarantine: bool = Field(False, description="skip bad shards (listed in the report) instead of failing")
    max_categories: int = Field(1000, ge=1, description="most frequent categories kept per column")
    extra_shards: list[str] = Field(
        default_factory=list, description="Parquet files read with the source's shards (on the same filesystem), "
        "e.g. the loop's labelled traffic staged for a retraining; shards whose schema differs are bad shards")

    @field_validator("source")
    @classmethod
    def _non_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v


class SplitConfig(_Section):
    """Deterministic train/validation/test split: by key hash, by time, or seeded row hash."""

    train: float = Field(0.7, gt=0, lt=1, description="share of rows for training")
    validation: float = Field(0.15, ge=0, lt=1, description="share of rows for early stopping and the search")
    test: float = Field(0.15, gt=0, lt=1, description="share of rows held out for the metrics and the gate")
    seed: int = Field(42, description="seed of the row hash that assigns rows (same seed, same split)")
    key: str | None = Field(None, description="split by a hash of this column (stable when shards are re-cut)")
    time: str | None = Field(None, description="split by this column: train on the past, test on the latest")

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        if self.key and self.time:
            raise ValueError("set either key or time, not both")
        return self


DerivedOp = Literal["ratio", "difference", "sum", "product", "hour", "dayofweek", "month"]
_BINARY_OPS = {"ratio", "difference", "sum", "product"}


class DerivedFeature(_Section):
    """A feature computed from raw columns, identically in batch jobs and in the endpoint.

    Only exactly-rounded arithmetic and calendar parts are offered: monotone transforms such as log do
    not change what a tree can learn, and transcendental functions can differ in the last bit between
    vectorised and scalar code, which would break batch/endpoint parity.
    """

    name: str = Field(description="the new feature's name")
    op: DerivedOp = Field(description="ratio, difference, sum, product (two inputs); hour, dayofweek, month (one "
                          "time input)")
    inputs: list[str] = Field(description="the raw columns it reads")

    @model_validator(mode="after")
    def _arity(self) -> "DerivedFeature":
        want = 2 if self.op in _BINARY_OPS else 1
        if len(self.inputs) != want:
            raise ValueError(f"op {self.op!r} takes {want} input column(s), got {len(self.inputs)}")
        return self


class FeaturesConfig(_Section):
    impute: Literal["median", "mean", "none"] = Field(
        "median", description="missing numeric values: the training rows' median or mean; none: left missing "
        "(LightGBM routes them)")
    clip_quantiles: tuple[float, float] | None = Field(
        None, description="clip numeric features to these training quantiles, e.g. [0.001, 0.999]"
    )
    derived: list[DerivedFeature] = Field(default_factory=list)
    quantile_sample_rows: int = Field(
        200_000, ge=1000, description="rows sampled (by row hash) for medians, quantiles and profiles"
    )

    @field_validator("clip_quantiles")
    @classmethod
    def _quantiles(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (0.0 <= v[0] < v[1] <= 1.0):
            raise ValueError("must be two quantiles with 0 <= low < high <= 1")
        return v


DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "bagging_fraction": 1.0,
    "bagging_freq": 0,
    "lambda_l1": 0.0,
    "lambda_l2": 0.0,
    "max_bin": 255,
}
# Set by raygbm from the task, the resources and the data; a user setting them in train.params is an error.
_RESERVED_PARAMS = {
    "objective", "num_class", "num_threads", "num_machines", "machines", "local_listen_port",
    "tree_learner", "pre_partition", "num_iterations", "num_boost_round", "early_stopping_round",
}


class TrainConfig(_Section):
    """LightGBM hyperparameters and the boosting schedule. No compute sizing here (see resources)."""

    params: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_PARAMS),
                                   description="LightGBM parameters (those raygbm sets itself are refused)")
    num_boost_round: int = Field(500, ge=1, description="the most boosting rounds (early stopping may end sooner)")
    early_stopping_rounds: int | None = Field(50, ge=1, description="stop when validation has not improved")
    metric: str | None = Field(
        None, description="LightGBM metric that early stopping, the search and the selection optimise; default: "
        "binary_logloss / multi_logloss / rmse")
    report_every: int = Field(25, ge=1, description="rounds between reports to Ray Train / Tune")
    checkpoint_every: int = Field(50, ge=1, description="rounds between checkpoints (resume after a failure)")
    seed: int = Field(42, description="LightGBM's seed (bagging, feature sampling)")
    refit: bool = Field(
        True, description="after selection, train the registered model on train + validation with the selected "
        "number of rounds (false: the model fitted on train and early-stopped on validation)")
    refit_rounds_scale: float | Literal["auto"] = Field(
        1.0, description="the refit's rounds = the selection's best iteration (holdout) or the rounded mean "
        "of the folds' best iterations (CV), times this; auto: times the refit's rows over the rows each "
        "selection model trained on (k/(k-1) under k-fold CV, (train+validation)/train on the holdout)")
    ensemble: bool = Field(
        False, description="under k-fold CV, register the average of the k fold models (one LightGBM model, "
        "each fold model at its own best round) instead of a refit on train + validation")

    @field_validator("refit_rounds_scale")
    @classmethod
    def _positive_scale(cls, v: float | str) -> float | str:
        if v != "auto" and not v > 0:
            raise ValueError("must be a number > 0 or auto")
        return v

    @field_validator("params")
    @classmethod
    def _not_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(v) & _RESERVED_PARAMS)
        if bad:
            raise ValueError(f"{', '.join(bad)} are set by raygbm (task, resources), not in train.params")
        return {**DEFAULT_PARAMS, **v}


# A search space entry: exactly one of these keys, e.g. {loguniform: [0.01, 0.3]} or {grid: [31, 63]}.
_SPACE_KINDS = {"uniform", "loguniform", "int", "logint", "choice", "grid"}

DEFAULT_SPACE: dict[str, dict[str, list[Any]]] = {
    "learning_rate": {"loguniform": [0.01, 0.3]},
    "num_leaves": {"logint": [15, 255]},
    "min_data_in_leaf": {"logint": [5, 200]},
    "feature_fraction": {"uniform": [0.5, 1.0]},
    "bagging_fraction": {"uniform": [0.5, 1.0]},
    "bagging_freq": {"choice": [0, 1, 5]},
    "lambda_l1": {"loguniform": [1e-8, 10.0]},
    "lambda_l2": {"loguniform": [1e-8, 10.0]},
    "max_bin": {"choice": [63, 127, 255]},
}


class TuneConfig(_Section):
    """The hyperparameter search (Ray Tune). Trials share ``train``'s schedule and fixed params."""

    trials: int | None = Field(
        16, ge=1, description="sampled configurations (with a grid: repeats of the grid); null: as many as "
        "time_budget_s allows")
    time_budget_s: float | None = Field(
        None, gt=0, description="stop the search after this many seconds, or at the first trial score after "
        "them if none came sooner; with trials set too, whichever comes first")
    search: Literal["tpe", "random"] = Field("tpe", description="Optuna TPE or random sampling")
    space: dict[str, dict[str, list[Any]]] = Field(
        default_factory=lambda: dict(DEFAULT_SPACE), description="per LightGBM parameter {kind: [args]}: "
        "uniform/loguniform/int/logint [low, high], choice [values], grid [values]")
    asha: bool = Field(True, description="stop unpromising trials early (ASHA)")
    grace_period: int = Field(25, ge=1, description="rounds every trial gets before ASHA may stop it")
    reduction_factor: int = Field(3, ge=2, description="ASHA keeps one trial in this many at each rung")
    cv_folds: int | Literal["auto"] | None = Field(
        "auto", description="the validation scheme of the whole selection (trials, the defaults comparison, the "
        "refit's rounds): auto: 5-fold CV on train+validation below cv_below_rows rows, else the holdout "
        "(validation split); an int >= 2: always k-fold CV; null or 0: always the holdout")
    cv_below_rows: int = Field(
        100_000, ge=0, description="tune.cv_folds auto cross-validates when train+validation has fewer rows")
    sample_rows: int | None = Field(
        200_000, ge=1000,
        description="trials train on a seeded sample of this many training (and validation) rows; the "
        "final model uses all of them. null: trials use everything",
    )
    compare_defaults: bool = Field(
        True, description="after tuning, also score LightGBM's defaults (at most 100 rounds) by the same scheme "
        "(holdout or CV) and keep them if they score better than the tuned configuration")
    seed: int = Field(42, description="the sampler's and the trials' sample seed")

    @field_validator("cv_folds")
    @classmethod
    def _folds(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v not in (0,) and v < 2:
            raise ValueError("must be auto, null or 0 (holdout), or an int >= 2 (k-fold CV)")
        return v

    @model_validator(mode="after")
    def _bounded(self) -> "TuneConfig":
        if self.trials is None and self.time_budget_s is None:
            raise ValueError("trials: null needs time_budget_s (the search must end)")
        return self

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
        bad = sorted(set(v) & _RESERVED_PARAMS)
        if bad:
            raise ValueError(f"{', '.join(bad)} are set by raygbm, not searched")
        for name, spec in v.items():
            if len(spec) != 1 or next(iter(spec)) not in _SPACE_KINDS:
                raise ValueError(f"{name}: expected one of {sorted(_SPACE_KINDS)}, e.g. {{loguniform: [0.01, 0.3]}}")
            kind, args = next(iter(spec.items()))
            if not isinstance(args, list) or not args:
                raise ValueError(f"{name}: {kind} needs a non-empty list")
            if kind in ("uniform", "loguniform", "int", "logint"):
                if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or args[0] >= args[1]:
                    raise ValueError(f"{name}: {kind} needs [low, high] with low < high")
                if kind.startswith("log") and args[0] <= 0:
                    raise ValueError(f"{name}: {kind} needs low > 0")
        return v


class FeatureSelectionConfig(_Section):
    """Drop features whose share of total gain importance is below ``min_gain_share`` before the final fit."""

    enabled: bool = Field(False, description="drop low-importance features and fit again")
    min_gain_share: float = Field(0.001, ge=0, lt=1, description="features below this share of the total gain go")


class EvaluateConfig(_Section):
    permutation_rows: int = Field(20_000, ge=100, description="validation rows used for permutation importance")
    selection: FeatureSelectionConfig = Field(default_factory=FeatureSelectionConfig)


class RegistryConfig(_Section):
    """MLflow tracking and the champion gate. The store is ``MLFLOW_TRACKING_URI`` or an embedded sqlite file."""

    experiment: str = Field("raygbm", description="the MLflow experiment of the runs")
    model_name: str = Field("raygbm", description="the registered model's name (its versions and champion alias)")
    metric: str | None = Field(None, description="test metric the gate compares; default roc_auc / log_loss / rmse")
    margin: float = Field(0.0, ge=0, description="a challenger must beat the champion by more than this")


class AutoscalingConfig(_Section):
    min_replicas: int = Field(1, ge=0, description="replicas kept however idle the endpoint is")
    max_replicas: int | None = Field(
        2, ge=1, description="null: as many replicas as the cluster's CPUs hold at deploy (serve.replica_cpus each)")
    target_ongoing_requests: float = Field(8, gt=0, description="requests in flight per replica Serve aims at")
    upscale_delay_s: float = Field(5, ge=0, description="load above the target this long adds replicas")
    downscale_delay_s: float = Field(30, ge=0, description="load below the target this long removes replicas")


class ServeConfig(_Section):
    """The endpoint: address, request limits and replica sizing."""

    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 exposes the endpoint to the network")
    port: int = Field(8000, ge=1, le=65535, description="the endpoint's port")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger bodies get 413")
    max_rows: int = Field(1000, ge=1, description="records per /predict request")
    max_batch_rows: int = Field(1_000_000, ge=1, description="rows per /predict/batch request")
    max_batch_body_bytes: int = Field(256_000_000, ge=1024, description="/predict/batch bodies larger than this get 413")
    request_timeout_s: float = Field(5.0, gt=0, description="handler time budget, whatever the client asks Serve for")
    read_timeout_s: float = Field(
        30.0, gt=0, description="a request's headers and body must arrive within this long of its first byte; "
        "slower or incomplete requests get 408 and their connection is closed")
    drain_s: float = Field(
        30.0, gt=0, description="on SIGTERM or Ctrl-C, `raygbm serve` stops taking requests and gives those in flight "
        "this long to be answered before it stops Ray")
    max_headers: int = Field(100, ge=8, description="requests with more headers get 431")
    max_header_bytes: int = Field(16_384, ge=1024, description="requests whose headers are larger get 431")
    max_batch_size: int = Field(64, ge=1, description="requests merged into one LightGBM call")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="how long a lone request waits for others to batch with (0: requests that arrive "
        "while a batch is being scored form the next one)")
    access_log: bool = Field(
        False, description="Serve's per-request access log in the replica logs (costs throughput and tail latency)")
    champion_poll_s: float = Field(
        10.0, ge=0, description="replicas serving the champion check the registry's alias this often and switch "
        "to a newly promoted version without downtime; 0: only a redeploy changes the model")
    num_replicas: int = Field(1, ge=1, description="fixed replica count when autoscaling is off")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs reserved per replica (LightGBM uses one thread)")
    fast_ingress: bool = Field(
        True, description="HAProxy in front of replicas that serve HTTP themselves (Ray Serve's direct ingress), "
        "started through raygbm-haproxy (no socket on every interface; reads bounded and a lost replica answered "
        "503 as on the proxy path); false: Serve's Python proxy (~7x the latency, docs/benchmarks.md). Takes effect "
        "where raygbm starts Ray (embedded); cluster nodes take it from their environment when Ray starts "
        "(cluster/local/env.sh, the image)")
    require_token: bool = Field(
        False, description="require 'Authorization: Bearer <token>' (token from RAYGBM_ENDPOINT_TOKEN) on every "
        "route but /healthz and /readyz")
    autoscaling: AutoscalingConfig | None = None
    batch_input_roots: list[str] = Field(
        default_factory=list, description="folders or URI prefixes a /predict/batch Parquet job may read (JSON body "
        "{\"input\": ...}); empty: such jobs are refused")
    batch_output_dir: str | None = Field(
        None, description="where /predict/batch jobs write (one folder per job); default <RAYGBM_HOME>/batch-jobs. "
        "On a multi-node cluster, a shared filesystem")


class AlertAfter(_Section):
    """Alert only when drift persists: in at least ``m`` of the last ``n`` scored windows."""

    m: int = Field(..., ge=1, description="drifted windows needed among the last n")
    n: int = Field(..., ge=1, description="scored windows looked back over (this one included)")

    @model_validator(mode="after")
    def _m_within_n(self) -> "AlertAfter":
        if self.m > self.n:
            raise ValueError(f"m ({self.m}) is greater than n ({self.n})")
        return self


class FeedbackConfig(_Section):
    """The loop's data side: served rows logged with their prediction ids, labels joined to them (POST
    /feedback) and performance per drift window (realized from labels, estimated from scores)."""

    enabled: bool = Field(True, description="log served rows with their prediction id, model version, time, raw "
                          "request fields and score (under monitor.log_dir) and accept POST /feedback")
    log_sample_rate: float = Field(
        1.0, ge=0, le=1, description="share of served rows kept in the prediction log (feedback for a row not kept "
        "counts as an unknown id)")
    max_rows: int = Field(
        200_000, ge=1000, description="rows the prediction log keeps (oldest parts deleted past it); an unlabelled "
        "prediction stays joinable until then")
    fsync: bool = Field(
        False, description="replicas also fsync each batch's write-ahead record before answering: a served "
        "prediction id stays joinable after a power loss, not only after a process or node crash (a disk flush "
        "per batch of requests)")
    bound_rate: float = Field(
        0.01, gt=0, lt=0.5, description="performance bounds: the share of windows of a model performing as on its "
        "held-out rows that fall below the lower bound (above the upper bound for losses)")
    min_labelled_rows: int = Field(
        20, ge=1, description="a window's realized performance is computed once it has this many labelled rows")


class MonitorConfig(_Section):
    """Drift monitoring of served traffic against the training reference."""

    enabled: bool = Field(True, description="replicas send scored rows to the drift monitor (off the request path)")
    window_size: int = Field(1000, ge=10, description="rows per drift window")
    keep_windows: int = Field(100, ge=1, description="closed windows kept in GET /drift")
    bins: int = Field(10, ge=2, description="reference quantile bins per numeric feature")
    psi: float = Field(0.2, gt=0, description="numeric feature drifts above this PSI")
    js_distance: float = Field(0.1, gt=0, description="categorical feature drifts above this JS distance ...")
    chi2_pvalue: float = Field(0.01, gt=0, lt=1, description="... and below this chi-square p-value")
    missing_rate_delta: float = Field(0.1, gt=0, description="a field drifts when its missing rate moves this much")
    prediction_psi: float = Field(0.2, gt=0, description="prediction drift above this PSI of the scores")
    thresholds: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="per-feature overrides, e.g. {num_1: {psi: 0.1}}"
    )
    thresholds_mode: Literal["calibrated", "static"] = Field(
        "calibrated", description="calibrated: each feature's and the score's threshold is estimated at "
        "registration from held-out rows under no drift (a model registered before that uses the static ones); "
        "static: psi, js_distance, chi2_pvalue, missing_rate_delta, prediction_psi as configured")
    false_alarm_rate: float = Field(
        0.001, gt=0, lt=0.5, description="calibrated thresholds: the share of clean windows in which a feature "
        "(or the score, or a field's missing rate) is flagged")
    calibration_draws: int = Field(
        10_000, ge=1000, le=1_000_000, description="calibrated thresholds: simulated clean windows per feature")
    alert_after: AlertAfter | None = Field(
        None, description="e.g. {m: 3, n: 5}: each scored window also gets alert: true when at least m of the last n "
        "scored windows drifted (unset: no alert key; the verdict is the alarm)")
    max_pending_batches: int = Field(100, ge=1, description="batches queued for the monitor before new ones are dropped (and counted)")
    window_seconds: float | None = Field(
        None, gt=0, description="also close a window this long after its first row, however few rows it has")
    min_window_rows: int = Field(
        100, ge=1, description="a window closed by time with fewer rows is reported as insufficient_data, not scored")
    log_dir: str | None = Field(
        None, description="where served rows (Parquet) and closed windows are kept so windows survive a restart "
        "of the monitor; default <RAYGBM_HOME>/monitor")
    log_sample_rate: float = Field(
        1.0, ge=0, le=1, description="share of served rows written to the Parquet log (closed windows are always "
        "kept; below 1 an open window is rebuilt from its sampled rows after a restart)")
    log_flush_s: float = Field(5.0, gt=0, description="the monitor writes buffered rows at least this often")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig,
                                     description="prediction log, label feedback and performance per window")


class RetrainConfig(_Section):
    """The loop: when a retraining runs (triggers), on what data, how its challenger is gated, and when a
    promotion is rolled back. When ``enabled``, the deployed app's ``LoopController`` runs them, wherever the
    endpoint runs."""

    enabled: bool = Field(False, description="the app's LoopController checks the triggers and submits retraining "
                          "Ray Jobs (needs serve.require_token)")
    check_s: float = Field(10.0, gt=0, description="how often the triggers and the rollback watch are checked")
    window_rows: int | None = Field(
        50_000, ge=1, description="retraining data: at most this many of the most recent labelled rows (null: all)")
    window_s: float | None = Field(
        None, gt=0, description="retraining data: only labelled rows served within this many seconds (null: any age)")
    include_source: bool = Field(
        True, description="retrain on data.source plus the labelled traffic; false: the labelled traffic alone "
        "(after a concept drift the source's rows teach the old relation)")
    holdout_share: float = Field(
        0.3, gt=0, lt=1, description="share of the windowed labelled rows, the most recent, held back from the "
        "retraining data: the challenger and the champion are compared on them")
    min_holdout_rows: int = Field(200, ge=10, description="a retraining needs at least this many holdout rows")
    trials: int | None = Field(
        None, ge=0, description="tuning trials of a retraining (null: tune.trials; 0: train.params, no search)")
    every_s: float | None = Field(None, gt=0, description="schedule: a retraining is due this long after the last")
    cooldown_s: float = Field(0.0, ge=0, description="no automatic retraining within this long of the last one "
                              "(0: none; retrain.min_new_labels spaces retrainings by evidence instead of time)")
    min_new_labels: int = Field(
        1000, ge=0, description="no automatic retraining until this many labelled rows have arrived since the last "
        "retraining job started: each needs evidence the last one did not see (0: no such wait)")
    drift: AlertAfter | None = Field(
        default_factory=lambda: AlertAfter(m=3, n=5), description="retrain when at least m of the last n scored "
        "drift windows drifted (null: drift does not trigger)")
    performance_drop: float | None = Field(
        0.05, gt=0, description="retrain when the champion's realized gate metric is worse than its registered test "
        "metric by more than this on each of its last two blocks of performance_rows labelled rows, or the same "
        "metric is outside its bound in the latest two windows (null: performance does not trigger)")
    performance_rows: int = Field(
        500, ge=10, description="rows per block of the realized-performance trigger: it scores the champion's last "
        "two blocks of this many labelled rows")
    max_label_shift: float = Field(
        0.5, gt=0, le=1, description="labels whose class shares differ from the source's test split by more than "
        "this (total variation) are not evidence for a promotion or a rollback (a concept drift may move them: "
        "generate --concept-drift moves them about 0.32)")
    rollback_windows: int = Field(
        3, ge=1, description="K: after a promotion, the new champion is watched over its first K labelled windows")
    rollback_window_rows: int = Field(200, ge=10, description="labelled rows per rollback window")
    rollback_margin: float = Field(
        0.02, ge=0, description="roll back when the new champion's realized gate metric on its labelled rows is "
        "worse than the previous champion's on the same rows by more than this")


class ResourcesConfig(_Section):
    """Compute sizing only; never a hyperparameter."""

    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (default: all)")
    object_store_memory_mb: int | None = Field(None, ge=64, description="the embedded Ray's object store (default: "
                                               "Ray's, 30% of memory)")
    read_chunk_rows: int = Field(1_000_000, ge=1000, description="rows per read block, one Ray Data read task each (bounds memory)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers per training run (data-parallel LightGBM when > 1)")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs (LightGBM threads) per training worker")
    max_failures: int = Field(2, ge=0, description="worker failures a training run survives (resuming from a checkpoint)")
    trial_mode: Literal["auto", "in_process", "ray_train"] = Field(
        "auto", description="tune trials as in-process lgb.train (data fits one worker) or LightGBMTrainer runs"
    )
    in_process_max_rows: int = Field(
        20_000_000, ge=1, description="auto trial_mode trains in-process up to this many training rows"
    )
    cpus_per_trial: int = Field(1, ge=1, description="LightGBM threads of an in-process trial")
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as the CPUs allow")


class PipelineConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"split.seed=7"`` → ``("split.seed", 7)``; the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. split.seed=7")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    msg = first["msg"].removeprefix("Value error, ")
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"invalid config: {where}: {msg}{extra}"


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    fields: dict[str, Any] | None = None,
) -> PipelineConfig:
    """Build the config from an optional YAML file, then ``--set`` overrides, then explicit CLI fields.

    ``fields`` are dotted keys given by dedicated flags (``data.source``, ``data.label``); ``None`` means
    "not given" and leaves the file's value alone.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            at = f" line {line + 1}" if line is not None else ""
            raise ConfigError(f"config file {p}{at}: not valid YAML") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: top level must be a mapping of sections")
        tree = loaded or {}
    for text in overrides or []:
        _set_path(tree, *parse_override(text))
    for dotted, value in (fields or {}).items():
        if value is not None:
            _set_path(tree, dotted, value)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
