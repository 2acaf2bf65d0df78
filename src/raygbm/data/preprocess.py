"""The data stage on Ray Data: validated shards → profiled, deduplicated, split, preprocessed Parquet.

Two passes over the shards, each a Ray Data pipeline (``raygbm.data.engine``) whose tasks read one block
(``raygbm.data.blocks``) and run a block function on it, on every core and node at once:

1. profile: per block, drop rows without a label, hash rows (duplicates, split, sampling), assign the
   split, and return small mergeable statistics for all rows and for the training rows;
2. transform: per block, the same assignment, then the fitted preprocessor, and each split's rows are
   written straight to the staging directory from the task that read them, so no data block travels
   through the object store to the driver and memory stays bounded whatever the input size.

A time split needs global cut-offs first, so it adds a pass that reads the time column alone."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from raygbm._version import __version__
from raygbm.config import DataConfig, FeaturesConfig, PipelineConfig, SplitConfig
from raygbm.data import identifiers
from raygbm.data.blocks import ROW_COL as ROW_COL
from raygbm.data.blocks import SHARD_COL as SHARD_COL
from raygbm.data.blocks import BlockRunner, block_progress, read_plan
from raygbm.data.blocks import LocalRunner as LocalRunner
from raygbm.data.blocks import dictionary_columns as dictionary_columns
from raygbm.data.features import Preprocessor, add_derived
from raygbm.data.schema import DatasetSchema, ShardSet, check_shards, infer_schema
from raygbm.data.split import RAW_TEST, SPLIT_NAMES, TRAIN, assign_split, row_hash, time_cutoffs, time_values, to_unit
from raygbm.data.stats import CategoricalStats, TableStats
from raygbm.data.task import label_is_numeric, resolve_task
from raygbm.errors import DataError
from raygbm.paths import runs_dir, sha256_file
from raygbm.progress import Progress, no_progress

_SAMPLE_SALT = 0x5EED5A3B1E
STAGE_FORMAT = 4  # bump when outputs of the same inputs and config would change


# ------------------------------------------------------------------------------------------- runners


def default_runner() -> BlockRunner:
    """The stage's runner on Ray: Ray Data (``raygbm.data.engine``)."""
    from raygbm.data.engine import RayDataRunner  # imports Ray Data: only when the stage runs on Ray

    return RayDataRunner()


# ------------------------------------------------------------------------------------------- block work


@dataclass(frozen=True)
class BlockPlan:
    """Everything a block task needs, shipped once with the function (small)."""

    schema: DatasetSchema
    data: DataConfig
    split: SplitConfig
    features: FeaturesConfig
    label_numeric: bool
    hash_columns: list[str]
    sample_rate: float
    dictionary: list[str] = field(default_factory=list)  # text categoricals read as dictionary arrays
    cutoffs: tuple[float, float] | None = None
    identifier_kinds: dict[str, str] = field(default_factory=dict)  # features checked by the identifier lint
    identifier_rate: float = 1.0  # the share of values whose hashes the lint keeps (identifiers.sample_rate)


def _drop_unlabelled(table: pa.Table, label: str) -> tuple[pa.Table, int]:
    """The rows with a label (not null, not NaN), and how many were dropped."""
    y = table.column(label)
    valid = pc.is_valid(y)
    if pa.types.is_floating(y.type):
        valid = pc.and_(valid, pc.invert(pc.is_nan(y)))
    missing = table.num_rows - pc.sum(valid).as_py() if table.num_rows else 0
    return (table.filter(valid) if missing else table), int(missing or 0)


def _split_block(table: pa.Table, plan: BlockPlan) -> tuple[pa.Table, np.ndarray, np.ndarray, int]:
    """A block's labelled rows, their row hashes and split codes, and how many rows had no label."""
    table, missing = _drop_unlabelled(table, plan.schema.label)
    h = row_hash(table, plan.hash_columns)
    codes = assign_split(table, plan.split, row_hashes=h, cutoffs=plan.cutoffs)
    return table, h, codes, missing


def _row_ids(table: pa.Table) -> np.ndarray:
    """Where each row came from, as one int64 (shard << 40 | row): the keep-first order for duplicates."""
    return (np.asarray(table.column(SHARD_COL), dtype=np.int64) << 40) | np.asarray(table.column(ROW_COL), dtype=np.int64)


def profile_block(table: pa.Table, plan: BlockPlan) -> dict[str, list]:
    table, h, codes, missing = _split_block(table, plan)
    derived = add_derived(table, plan.features.derived)
    sample = to_unit(h, plan.split.seed ^ _SAMPLE_SALT) < plan.sample_rate
    numeric = plan.schema.numeric + [d.name for d in plan.features.derived]
    everything, train = TableStats.of_all_and(derived, codes == TRAIN, numeric, plan.schema.categorical,
                                              plan.schema.label, plan.label_numeric, sample, plan.data.bounds)
    return {
        "all": [everything.to_bytes()],
        "train": [train.to_bytes()],
        # Counting duplicates only: sorted here, in parallel, so the driver merges sorted runs (a third
        # of a full sort's time, on its serial path between the passes).
        "hashes": [h.tobytes() if plan.data.duplicates == "drop" else np.sort(h).tobytes()],
        "ids": [_row_ids(table).tobytes() if plan.data.duplicates == "drop" else b""],
        "missing_label": [missing],
        "splits": [np.bincount(codes, minlength=3).tolist()],
        "codes": [codes.tobytes()],  # handed to this block's transform task: no second hash of its rows
        "identifiers": [identifiers.to_bytes(identifiers.block_stats(table, plan.identifier_kinds,
                                                                     plan.identifier_rate))],
    }


def transform_block(table: pa.Table, plan: BlockPlan, pre: Preprocessor, drop: tuple[np.ndarray, np.ndarray] | None,
                    out_dir: str, split_codes: bytes | None = None) -> dict[str, list]:
    """Transform and write one block; ``split_codes``: its labelled rows' splits from the profile pass
    (recomputed when not given)."""
    shard = int(table.column(SHARD_COL)[0].as_py()) if table.num_rows else -1
    first = int(table.column(ROW_COL)[0].as_py()) if table.num_rows else -1
    dedupe = drop is not None and len(drop[0]) > 0
    if split_codes is None:
        table, h, codes, _ = _split_block(table, plan)
    else:
        table, _ = _drop_unlabelled(table, plan.schema.label)
        codes = np.frombuffer(split_codes, dtype=np.int8)
        if len(codes) != table.num_rows:
            raise DataError(f"shard {shard}, rows from {first}: the input changed while the data stage read it")
        h = row_hash(table, plan.hash_columns) if dedupe else None
    if dedupe:
        dup_hashes, keepers = drop
        pos = np.searchsorted(dup_hashes, h).clip(max=len(dup_hashes) - 1)
        is_dup = dup_hashes[pos] == h
        keep = ~is_dup | (keepers[pos] == _row_ids(table))
        if not keep.all():
            table, codes = table.filter(pa.array(keep)), codes[keep]
    features = pre.transform_table(table)
    out: dict[str, list] = {"split": [], "file": [], "rows": [], "sha256": []}
    for code, name in enumerate(SPLIT_NAMES):
        mask = codes == code
        n = int(mask.sum())
        if n == 0:
            continue
        part = features.filter(pa.array(mask)) if n != len(codes) else features
        rel = f"{name}/part-{shard:05d}-{first:011d}.parquet"
        dest = os.path.join(out_dir, rel)
        digest = write_parquet(part, dest)
        out["split"].append(name)
        out["file"].append(rel)
        out["rows"].append(n)
        out["sha256"].append(digest)
        if name == "test":
            # The raw test rows too: a champion with another preprocessor is scored on the same rows.
            raw = table.filter(pa.array(mask)) if n != len(codes) else table
            rel = f"{RAW_TEST}/part-{shard:05d}-{first:011d}.parquet"
            dest = os.path.join(out_dir, rel)
            digest = write_parquet(_undictionary(raw.select(plan.schema.read_columns), plan.dictionary), dest)
            for k, v in (("split", RAW_TEST), ("file", rel), ("rows", n), ("sha256", digest)):
                out[k].append(v)
    return out


class _HashingFile(io.RawIOBase):
    """A file being written, with the sha256 of every byte written so far."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha256 = f, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        return self.f.write(data)


def dictionary_page_columns(schema: pa.Schema) -> list[str]:
    """The columns worth Parquet dictionary pages: all but floats, which rarely repeat, and trying a
    dictionary first and falling back doubles the cost of writing them."""
    return [f.name for f in schema if not pa.types.is_floating(f.type)]


def write_parquet(table: pa.Table, dest: str) -> str:
    """Write Parquet and return its sha256 (hashed as written, not read back), with dictionary pages for
    ``dictionary_page_columns`` only.

    Streamed to the file page by page: writing into a growing memory buffer first and the file after took
    twice as long here (0.63-0.86 s against 0.35 s for 129 MB), from the buffer's copies and a burst of
    dirty pages the kernel then throttles."""
    with open(dest, "wb") as f:
        sink = _HashingFile(f)
        pq.write_table(table, pa.PythonFile(sink, mode="w"), use_dictionary=dictionary_page_columns(table.schema))
        return sink.sha256.hexdigest()


def _undictionary(table: pa.Table, columns: list[str]) -> pa.Table:
    """The columns read as dictionaries back in their stored type (raw rows keep the input's schema)."""
    for c in columns:
        if c in table.column_names and pa.types.is_dictionary(table.schema.field(c).type):
            i = table.schema.get_field_index(c)
            table = table.set_column(i, c, pc.cast(table.column(c), table.schema.field(c).type.value_type))
    return table


def time_block(table: pa.Table, label: str, column: str) -> dict[str, list]:
    table, _ = _drop_unlabelled(table, label)
    return {"t": [time_values(table.column(column)).tobytes()]}


# ------------------------------------------------------------------------------------------- the stage


@dataclass
class PreprocessResult:
    run_dir: Path
    report: dict[str, Any]
    cached: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def _stage_key(shards: ShardSet, config: PipelineConfig) -> str:
    relevant = {
        "format": STAGE_FORMAT,
        "data": config.data.model_dump(mode="json", exclude={"source", "extra_shards"}),
        "split": config.split.model_dump(mode="json"),
        "features": config.features.model_dump(mode="json"),
        "shards": shards.fingerprint(),
        "quarantined": sorted(str(p) for p in shards.quarantined),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _duplicates(blocks: list[dict[str, Any]], drop: bool) -> tuple[int, tuple[np.ndarray, np.ndarray] | None]:
    hashes = np.concatenate([np.frombuffer(b["hashes"], dtype=np.uint64) for b in blocks]) if blocks else np.empty(0, np.uint64)
    if hashes.size == 0:
        return 0, None
    if not drop:
        # Each block's hashes come sorted: the stable sort (timsort) merges the runs.
        hashes = np.sort(hashes, kind="stable")  # duplicates are equal neighbours once sorted
        return int((hashes[1:] == hashes[:-1]).sum()), None
    ids = np.concatenate([np.frombuffer(b["ids"], dtype=np.int64) for b in blocks])
    order = np.lexsort((ids, hashes))  # by hash, then position: the first occurrence comes first
    h, i = hashes[order], ids[order]
    first = np.ones(h.size, dtype=bool)
    first[1:] = h[1:] != h[:-1]
    dup_count = int(h.size - first.sum())
    group_size = np.diff(np.append(np.flatnonzero(first), h.size))
    repeated = group_size > 1
    return dup_count, (h[first][repeated].copy(), i[first][repeated].copy())


@dataclass
class Profile:
    """The profile pass merged over every block."""

    everything: TableStats  # every labelled row
    train: TableStats  # the training split's rows
    missing_label: int
    split_rows: np.ndarray  # rows per split, before de-duplication
    duplicates: int
    drop: tuple[np.ndarray, np.ndarray] | None  # what transform_block needs to drop duplicates
    split_codes: list[bytes]  # per read block, in order: its labelled rows' split codes
    identifiers: dict[str, identifiers.IdentifierStats]  # the identifier lint's columns, over every block


def preprocess(
    config: PipelineConfig,
    *,
    progress: Progress = no_progress,
    force: bool = False,
    runner: BlockRunner | None = None,
    shards: ShardSet | None = None,
) -> PreprocessResult:
    """Run the data stage; returns the run directory and the data report.

    With the default runner Ray must be initialised (``raygbm.runtime.ensure_ray``).

    A finished run with the same input content and config is found by its key and reused. ``shards``
    passes in the result of an earlier ``check_shards`` on the same source, so footers are read once.
    """
    runner = runner or default_runner()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    shards, schema = _checked_input(config, shards, progress)
    timings["check_s"] = time.perf_counter() - t0

    key = _stage_key(shards, config)
    final = runs_dir() / f"preprocess-{key[:16]}"
    if (final / "data_report.json").exists() and not force:
        progress(f"reusing finished run {final}")
        report = json.loads((final / "data_report.json").read_text())
        _report_identifiers(report, progress)
        return PreprocessResult(final, report, cached=True, timings=timings)

    label_type = shards.schema.field(schema.label).type
    plan = _block_plan(config, shards, schema, label_type)
    if config.split.time is not None:
        progress("finding time cut-offs")
        t = time.perf_counter()
        plan = replace(plan, cutoffs=_time_cutoffs(runner, shards, config, schema.label, progress))
        timings["time_cutoffs_s"] = time.perf_counter() - t
    progress(f"profiling {shards.num_rows:,} rows in {len(shards.shards)} shards")
    t = time.perf_counter()
    profile = _profile(runner, shards, plan, config, progress)
    timings["profile_s"] = time.perf_counter() - t
    found = find_identifiers(profile, config.data)
    left_out = [c for c, f in found.items() if not f["kept"]]
    if left_out:
        schema = schema.without_identifiers(left_out, [c for d in config.features.derived for c in d.inputs])
        plan = replace(plan, schema=schema, dictionary=dictionary_columns(shards, schema.categorical))

    task, classes, why = resolve_task(config.data.task, schema.label, label_type, profile.everything.label)
    progress(f"task: {task} ({why})")
    pre = Preprocessor(schema, config.features, config.data.max_categories).fit_stats(profile.train, classes, task)
    progress("transforming and writing splits")
    report = _write_run(final, key, runner, shards, plan, pre, profile, task, config, timings, t0, found, progress)
    _report_identifiers(report, progress)
    timings["total_s"] = time.perf_counter() - t0
    return PreprocessResult(final, report, cached=False, timings=timings)


def _checked_input(config: PipelineConfig, shards: ShardSet | None, progress: Progress) -> tuple[ShardSet, DatasetSchema]:
    """The checked shards (``shards`` when already checked for this source) and the dataset schema."""
    if not config.data.source:
        raise DataError("no data source given (use --data PATH_OR_URI or data.source in the config)")
    if shards is None or shards.source != config.data.source:
        progress("checking shards")
        shards = check_shards(config.data.source, label=config.data.label, quarantine=config.data.quarantine,
                              extra=config.data.extra_shards)
    derived_inputs = [c for d in config.features.derived for c in d.inputs]
    schema = infer_schema(shards.schema, config.data, config.split, derived_inputs)
    for d in config.features.derived:
        if d.name in shards.schema.names:
            raise DataError(f"derived feature {d.name!r} clashes with an existing column")
    return shards, schema


def _block_plan(config: PipelineConfig, shards: ShardSet, schema: DatasetSchema, label_type: pa.DataType) -> BlockPlan:
    return BlockPlan(
        schema=schema,
        data=config.data,
        split=config.split,
        features=config.features,
        label_numeric=label_is_numeric(label_type, config.data.task),
        hash_columns=list(shards.schema.names),
        sample_rate=min(1.0, config.features.quantile_sample_rows / max(shards.num_rows, 1)),
        dictionary=dictionary_columns(shards, schema.categorical),
        identifier_kinds=identifiers.candidates(shards.schema, schema.features),
        identifier_rate=identifiers.sample_rate(shards.num_rows),
    )


def find_identifiers(profile: Profile, data: DataConfig) -> dict[str, dict[str, Any]]:
    """The identifier-like features (``raygbm.data.identifiers``), in column order: why, and whether the
    config keeps them as features (``data.keep_identifiers``, or named in ``data.numeric``/``categorical``)."""
    keep = set(data.keep_identifiers) | set(data.numeric or []) | set(data.categorical or [])
    found = {c: s.reasons() for c, s in profile.identifiers.items()}
    return {c: {"reasons": r, "kept": c in keep} for c, r in found.items() if r}


def identifier_line(report: dict[str, Any]) -> str | None:
    """The data stage's one line on the identifier-like columns it left out of the features, if any."""
    found = report.get("features", {}).get("identifiers", {})
    out = [c for c, f in found.items() if not f["kept"]]
    if not out:
        return None
    named = ", ".join(f"{c} ({' and '.join(found[c]['reasons'])})" for c in out)
    return (f"identifier-like column{'s' if len(out) > 1 else ''} left out of the features: {named}; "
            f"data.keep_identifiers=[{','.join(out)}] keeps {'them' if len(out) > 1 else 'it'}")


def _report_identifiers(report: dict[str, Any], progress: Progress) -> None:
    line = identifier_line(report)
    if line is not None:
        progress(line)


def _time_cutoffs(runner: BlockRunner, shards: ShardSet, config: PipelineConfig,
                  label: str, progress: Progress = no_progress) -> tuple[float, float]:
    """The time split's cut-offs, from a pass that reads the label and the time column alone."""
    column = config.split.time
    rows = runner.map_blocks(shards, config.resources.read_chunk_rows, time_block, (label, column),
                             list(dict.fromkeys([label, column])),
                             progress=block_progress(progress, "finding time cut-offs"))
    times = np.concatenate([np.frombuffer(r["t"], dtype=np.float64) for r in rows]) if rows else np.empty(0)
    return time_cutoffs(times, config.split)


def _profile(runner: BlockRunner, shards: ShardSet, plan: BlockPlan, config: PipelineConfig,
             progress: Progress = no_progress) -> Profile:
    """The profile pass: every block's statistics merged, label and duplicate counts, split sizes."""
    blocks = runner.map_blocks(shards, config.resources.read_chunk_rows, profile_block, (plan,),
                               dictionary=plan.dictionary, progress=block_progress(progress, "profiling"))
    expected = len(read_plan(shards, config.resources.read_chunk_rows, None))
    if len(blocks) != expected:  # each block's split codes go to the same block in the transform pass
        raise RuntimeError(f"the profile pass returned {len(blocks)} results for {expected} read blocks")
    everything = TableStats()
    train = TableStats()
    for b in blocks:
        everything.merge(TableStats.from_bytes(b["all"]))
        train.merge(TableStats.from_bytes(b["train"]))
    missing_label = sum(int(b["missing_label"]) for b in blocks)
    split_rows = np.sum([b["splits"] for b in blocks], axis=0) if blocks else np.zeros(3, dtype=int)
    duplicates, drop = _duplicates(blocks, config.data.duplicates == "drop")
    if everything.rows == 0:
        raise DataError(f"{config.data.source}: no rows with a label (read {shards.num_rows} rows)")
    if train.rows == 0:
        raise DataError("the training split is empty: check split fractions and the key/time column")
    ids = identifiers.merge_blocks([b["identifiers"] for b in blocks], plan.identifier_kinds)
    return Profile(everything, train, missing_label, split_rows, duplicates, drop, [b["codes"] for b in blocks], ids)


def _write_run(final: Path, key: str, runner: BlockRunner, shards: ShardSet, plan: BlockPlan,
               pre: Preprocessor, profile: Profile, task: str, config: PipelineConfig, timings: dict[str, float],
               t0: float, found: dict[str, dict[str, Any]] | None = None,
               progress: Progress = no_progress) -> dict[str, Any]:
    """The transform pass into a staging folder, then the run's files, then the folder renamed to
    ``final`` (readers see a whole run or none). Returns the data report."""
    runs_dir().mkdir(parents=True, exist_ok=True)
    staging = runs_dir() / f".staging-{key[:16]}-{uuid.uuid4().hex[:8]}"
    try:
        for name in (*SPLIT_NAMES, RAW_TEST):
            (staging / name).mkdir(parents=True)
        t = time.perf_counter()
        written = runner.map_blocks(shards, config.resources.read_chunk_rows, transform_block,
                                    (plan, pre, profile.drop, str(staging)), dictionary=plan.dictionary,
                                    per_block=[(c,) for c in profile.split_codes],
                                    progress=block_progress(progress, "transforming and writing"))
        timings["transform_s"] = time.perf_counter() - t
        rows_out = {name: 0 for name in SPLIT_NAMES}
        manifest: dict[str, str] = {}
        for w in written:  # one row per file written
            if w["split"] in rows_out:
                rows_out[w["split"]] += int(w["rows"])
            manifest[w["file"]] = w["sha256"]
        report = build_report(shards, plan.schema, pre, profile.everything, task, profile.missing_label,
                              profile.duplicates, config, rows_out, profile.split_rows, found)
        report["timings"] = {**timings, "total_s": time.perf_counter() - t0}
        _write_run_files(staging, plan.schema, pre, config, report, manifest)
        if final.exists():  # an unfinished or forced older copy: replace it whole
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _write_run_files(staging: Path, schema: DatasetSchema, pre: Preprocessor, config: PipelineConfig,
                     report: dict[str, Any], manifest: dict[str, str]) -> None:
    """Schema, preprocessor, config and data report, then the manifest over them and the split files."""
    _write_json(staging / "schema.json", schema.to_dict())
    (staging / "preprocessor.json").write_text(pre.to_json())
    (staging / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    _write_json(staging / "data_report.json", report)
    for name in ("schema.json", "preprocessor.json", "config.yaml", "data_report.json"):
        manifest[name] = sha256_file(str(staging / name))
    _write_json(staging / "manifest.json", {"sha256": dict(sorted(manifest.items())), "raygbm": __version__})


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False, allow_nan=False, default=str))


# ------------------------------------------------------------------------------------------- the report


def _finite(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def build_report(
    shards: ShardSet,
    schema: DatasetSchema,
    pre: Preprocessor,
    stats: TableStats,
    task: str,
    missing_label: int,
    duplicates: int,
    config: PipelineConfig,
    rows_out: dict[str, int],
    split_rows: np.ndarray,
    identifier_columns: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    n = stats.rows
    for c in pre.numeric_features:
        s = stats.numeric[c]
        q = s.quantiles([0.01, 0.5, 0.99])
        entry = {
            "role": "derived" if c not in schema.numeric else "numeric",
            "type": schema.types.get(c, "double"),
            "nulls": s.nulls,
            "null_frac": s.nulls / n if n else 0.0,
            "nonfinite": s.nonfinite,
            "mean": _finite(s.mean),
            "std": _finite(s.std),
            "min": _finite(s.min),
            "p01": _finite(q[0]),
            "p50": _finite(q[1]),
            "p99": _finite(q[2]),
            "max": _finite(s.max),
        }
        if c in config.data.bounds:
            entry["below_bounds"], entry["above_bounds"] = s.below, s.above
        columns[c] = entry
    for c in schema.categorical:
        s = stats.categorical[c]
        columns[c] = {
            "role": "categorical",
            "type": schema.types[c],
            "nulls": s.nulls,
            "null_frac": s.nulls / n if n else 0.0,
            "distinct": len(s.counts),
            "distinct_truncated": s.truncated,
            "top": [[_jsonable(k), v] for k, v in s.counts.most_common(5)],
            "kept_categories": len(pre.categories_[c]),
        }
    if isinstance(stats.label, CategoricalStats):
        label = {"column": schema.label, "classes": {str(k): v for k, v in sorted(stats.label.counts.items(), key=lambda kv: str(kv[0]))}}
    else:
        s = stats.label
        label = {"column": schema.label, "mean": _finite(s.mean), "std": _finite(s.std), "min": _finite(s.min), "max": _finite(s.max)}
    flagged = {c: {"below": e["below_bounds"], "above": e["above_bounds"]} for c, e in columns.items() if e.get("below_bounds") or e.get("above_bounds")}
    return {
        "source": config.data.source,
        "shards": len(shards.shards),
        "quarantined": [{"path": p.path, "problem": p.problem} for p in shards.quarantined],
        "rows_read": shards.num_rows,
        "rows_missing_label": missing_label,
        "rows_duplicate": duplicates,
        "duplicates_dropped": config.data.duplicates == "drop",
        "rows_labelled": n,
        "rows_out": rows_out,
        "rows_out_total": sum(rows_out.values()),
        "split_method": "time" if config.split.time else "key" if config.split.key else "random",
        "split_rows_before_dedupe": dict(zip(SPLIT_NAMES, (int(v) for v in split_rows))),
        "task": task,
        "label": label,
        "features": {"numeric": pre.numeric_features, "categorical": schema.categorical,
                     "dropped": schema.dropped + schema.identifiers,
                     # identifier-like columns: why ("unique per row", "monotonic in row order"), and
                     # whether the config kept them as features
                     "identifiers": identifier_columns or {}},
        "out_of_bounds": flagged,
        "columns": columns,
    }


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
