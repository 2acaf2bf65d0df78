"""Shards and schemas: find the Parquet shards behind a path or URI, check each one's footer against the
expected schema *before* any data is produced, and decide which columns are features.

Footer checks run in the driver on a thread pool (they are small, I/O-bound reads, so Ray tasks would only
add scheduling cost). pyarrow silently casts lossless type differences between shards (int32 → int64), so
schemas are compared exactly here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raygbm.config import DataConfig, SplitConfig
from raygbm.errors import DataError

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Shard:
    path: str  # path inside ``filesystem`` (no scheme)
    size: int
    num_rows: int
    row_groups: tuple[int, ...]  # rows per row group
    fingerprint: str  # sha256 of size + Parquet footer: changes when the content changes


@dataclass
class ShardProblem:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class ShardSet:
    """The shards that passed the checks, the shared schema, and (with quarantine) those that did not."""

    source: str
    filesystem: pafs.FileSystem
    shards: list[Shard]
    schema: pa.Schema
    quarantined: list[ShardProblem] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows for s in self.shards)

    def display_path(self, path: str) -> str:
        return _display(self.filesystem, path)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s in sorted(self.shards, key=lambda s: s.path):
            h.update(f"{posixpath.basename(s.path)}:{s.fingerprint}\n".encode())
        return h.hexdigest()


def _display(fs: pafs.FileSystem, path: str) -> str:
    kind = fs.type_name
    return path if kind == "local" else f"{'gs' if kind == 'gcs' else kind}://{path}"


def resolve_source(source: str) -> tuple[pafs.FileSystem, str]:
    """A local path or any URI pyarrow's filesystems read (s3://, gs://, hdfs://, file://)."""
    if "://" in source:
        try:
            return pafs.FileSystem.from_uri(source)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise DataError(f"cannot open data source {source}: {_first_line(exc)}") from None
    return pafs.LocalFileSystem(), str(Path(source).expanduser().resolve())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _hidden(path: str, root: str) -> bool:
    rel = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
    # Spark/Hadoop conventions: _SUCCESS, _metadata, .crc and editor temp files are not data.
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def list_shards(source: str) -> tuple[pafs.FileSystem, list[str]]:
    """All data files under a directory, matching a glob, or the single file named. Sorted."""
    fs, path = resolve_source(source)
    if _GLOB_CHARS & set(path):
        base = path
        while _GLOB_CHARS & set(base):
            base = posixpath.dirname(base)
        infos = _walk(fs, base, source)
        files = [i.path for i in infos if fnmatch.fnmatch(i.path, path) and not _hidden(i.path, base)]
    else:
        try:
            info = fs.get_file_info(path)
        except OSError as exc:  # refused credentials, an unreachable endpoint
            raise DataError(f"cannot read data source {source}: {_first_line(exc)}") from None
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"data source not found: {source}")
        if info.type == pafs.FileType.File:
            files = [path]
        else:
            files = [i.path for i in _walk(fs, path, source) if not _hidden(i.path, path)]
    if not files:
        raise DataError(f"no Parquet shards found in {source}")
    return fs, sorted(files)


def _walk(fs: pafs.FileSystem, base: str, source: str) -> list[pafs.FileInfo]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise DataError(f"cannot list data source {source}: {_first_line(exc)}") from None
    return [i for i in infos if i.type == pafs.FileType.File]


def _read_footer(fs: pafs.FileSystem, path: str) -> tuple[Shard | None, pa.Schema | None, str | None]:
    try:
        with fs.open_input_file(path) as f:
            size = f.size()
            if size < 12:
                return None, None, f"not a Parquet file ({size} bytes)"
            f.seek(size - 8)
            tail = f.read(8)
            if tail[4:] != b"PAR1":
                return None, None, "not a Parquet file (no PAR1 footer magic)"
            footer_len = int.from_bytes(tail[:4], "little")
            if footer_len + 12 > size:
                return None, None, "corrupt Parquet file (footer length exceeds file size)"
            f.seek(size - 8 - footer_len)
            footer = f.read(footer_len)
            f.seek(0)
            meta = pq.ParquetFile(f).metadata
            schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError, ValueError) as exc:
        return None, None, f"corrupt Parquet file ({_first_line(exc)})"
    groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    digest = hashlib.sha256(size.to_bytes(8, "little") + footer).hexdigest()
    return Shard(path, size, meta.num_rows, groups, digest), schema, None


def _schema_key(schema: pa.Schema) -> tuple[tuple[str, str], ...]:
    return tuple((f.name, str(f.type)) for f in schema)


def _difference(expected: pa.Schema, actual: pa.Schema) -> str:
    exp = {f.name: f.type for f in expected}
    act = {f.name: f.type for f in actual}
    missing = [n for n in exp if n not in act]
    if missing:
        return f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    changed = [f"{n} is {act[n]}, expected {exp[n]}" for n in exp if act[n] != exp[n]]
    if changed:
        return "column type changed: " + "; ".join(changed)
    extra = [n for n in act if n not in exp]
    return f"unexpected column{'s' if len(extra) > 1 else ''} {', '.join(extra)}"


def check_shards(source: str, *, label: str | None, quarantine: bool = False, threads: int = 16,
                 extra: list[str] | tuple[str, ...] = ()) -> ShardSet:
    """Read every shard's footer and check it against the expected schema.

    The expected schema is the one most shards share (ties go to the first in path order), so a single
    bad shard is named as the culprit rather than every good one. With ``quarantine`` bad shards are
    skipped and listed; otherwise the first problem (in path order) raises :class:`DataError`. ``extra``
    (``data.extra_shards``): more shards, on the source's filesystem, checked alike.
    """
    fs, paths = list_shards(source)
    for more in extra:
        more_fs, more_paths = list_shards(more)
        if more_fs.type_name != fs.type_name:
            raise DataError(f"data.extra_shards {more}: not on the filesystem of data.source ({fs.type_name})")
        paths = paths + [p for p in more_paths if p not in paths]
    with ThreadPoolExecutor(max_workers=min(threads, len(paths))) as pool:
        results = list(pool.map(lambda p: _read_footer(fs, p), paths))
    readable = [(shard, schema) for shard, schema, _ in results if shard is not None]
    problems = [ShardProblem(_display(fs, p), err) for p, (_, _, err) in zip(paths, results) if err]
    if not readable:
        if len(problems) == 1 or not quarantine:
            raise DataError(str(problems[0]))
        raise DataError(f"no readable Parquet shards in {source}: {len(problems)} bad, first {problems[0]}")
    counts = Counter(_schema_key(s) for _, s in readable)
    best = max(counts.values())
    expected = next(s for _, s in readable if counts[_schema_key(s)] == best)
    good: list[Shard] = []
    for shard, schema in readable:
        if _schema_key(schema) == _schema_key(expected):
            good.append(shard)
        else:
            problems.append(ShardProblem(_display(fs, shard.path), _difference(expected, schema)))
    order = {p: i for i, p in enumerate(_display(fs, p) for p in paths)}
    problems.sort(key=lambda p: order[p.path])
    if problems and not quarantine:
        raise DataError(str(problems[0]) + (f" (and {len(problems) - 1} more bad shards)" if len(problems) > 1 else ""))
    if label is not None and label not in expected.names:
        raise DataError(
            f"{_display(fs, good[0].path)}: label column {label!r} not found "
            f"(columns: {', '.join(expected.names)})"
        )
    if label is not None and not is_label_type(expected.field(label).type):
        raise DataError(f"{_display(fs, good[0].path)}: label column {label!r} is {expected.field(label).type}; a label "
                        "must be integers, floats, booleans or strings (cast it to one of those)")
    return ShardSet(source, fs, good, expected, problems)


# ---------------------------------------------------------------------------------------------------
# Which columns are features


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type of a value from a column's type as the data schema keeps it (``int64``,
    ``timestamp[us, tz=UTC]``); a dictionary column's values are of its value type. ValueError for a
    name with no such form."""
    if name.startswith("dictionary<values="):
        return arrow_type(name[len("dictionary<values="):].split(",", 1)[0])
    if name.startswith("timestamp["):
        unit, _, tz = name[len("timestamp["):-1].partition(",")
        tz = tz.strip()
        return pa.timestamp(unit.strip(), tz[3:] if tz.startswith("tz=") else None)
    return pa.type_for_alias(name)


def is_label_type(t: pa.DataType) -> bool:
    """What the task rule reads: numbers, booleans, strings, or a dictionary of strings or integers."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t))


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def _is_categorical(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_temporal(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) or pa.types.is_date(t)


@dataclass
class DatasetSchema:
    """The roles of the raw columns: what the preprocessor reads and what a request must carry."""

    label: str
    numeric: list[str]
    categorical: list[str]
    types: dict[str, str]  # raw Arrow type of every column used (features, label, key, time)
    key: str | None = None
    time: str | None = None
    dropped: list[str] = field(default_factory=list)
    derived_inputs: list[str] = field(default_factory=list)  # non-feature columns read by derived features
    identifiers: list[str] = field(default_factory=list)  # identifier-like columns left out of the features
    # The training data's other columns the model does not read (the label aside): a request may carry
    # them, as the rows users have do, and they are ignored.
    ignored: list[str] = field(default_factory=list)

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical

    @property
    def read_columns(self) -> list[str]:
        extra = [self.key, self.time, *self.derived_inputs]
        out = self.features + [self.label]
        for c in extra:
            if c and c not in out:
                out.append(c)
        return out

    def without_identifiers(self, columns: list[str], derived_reads: list[str] = ()) -> "DatasetSchema":
        """The schema with ``columns`` (features found identifier-like) left out of the features: they
        become ignored columns, or stay inputs where a derived feature reads them (``derived_reads``)."""
        gone = set(columns)
        numeric = [c for c in self.numeric if c not in gone]
        categorical = [c for c in self.categorical if c not in gone]
        derived_inputs = self.derived_inputs + [c for c in columns if c in derived_reads and c not in self.derived_inputs]
        derived = set(derived_inputs)
        if not numeric and not categorical and not derived:
            raise DataError(f"no feature columns left after leaving out identifier-like column(s) "
                            f"{', '.join(columns)} (keep one with data.keep_identifiers)")
        kept_types = set(numeric + categorical) | derived | {c for c in (self.label, self.key, self.time) if c}
        return DatasetSchema(
            self.label, numeric, categorical, {c: t for c, t in self.types.items() if c in kept_types}, self.key,
            self.time, list(self.dropped), derived_inputs,
            self.identifiers + [c for c in columns if c not in self.identifiers],
            self.ignored + [c for c in columns if c not in derived and c not in self.ignored],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetSchema":
        return cls(**d)


def infer_schema(arrow: pa.Schema, data: DataConfig, split: SplitConfig, extra_inputs: list[str] | None = None) -> DatasetSchema:
    """Numeric vs categorical from the Arrow types, overridable per column in the config.

    The label, the split key and time columns, and ``data.drop`` are never features; temporal and other
    non-tabular columns are left out (use derived features such as ``hour`` to use a timestamp).
    """
    names = arrow.names
    label = data.label
    if label is None:
        raise DataError("no label column given (use --label COLUMN or data.label in the config)")
    if label not in names:
        raise DataError(f"label column {label!r} not found (columns: {', '.join(names)})")
    for what, col in (("split.key", split.key), ("split.time", split.time)):
        if col is not None and col not in names:
            raise DataError(f"{what} column {col!r} not found (columns: {', '.join(names)})")
    if split.time is not None and not (_is_temporal(arrow.field(split.time).type) or _is_numeric(arrow.field(split.time).type)):
        raise DataError(f"split.time column {split.time!r} is {arrow.field(split.time).type}, not a time or number")
    for what, cols in (("data.numeric", data.numeric), ("data.categorical", data.categorical), ("data.drop", data.drop),
                       ("data.keep_identifiers", data.keep_identifiers)):
        unknown = [c for c in cols or [] if c not in names]
        if unknown:
            raise DataError(f"{what} names unknown column(s) {', '.join(unknown)} (columns: {', '.join(names)})")
    both = [c for c in data.keep_identifiers if c in data.drop]
    if both:
        raise DataError(f"column(s) {', '.join(both)} listed in data.drop and data.keep_identifiers")
    reserved = {label, split.key, split.time, *data.drop} - {None}
    forced_num = set(data.numeric or [])
    forced_cat = set(data.categorical or [])
    if forced_num & forced_cat:
        raise DataError(f"column(s) {', '.join(sorted(forced_num & forced_cat))} listed as numeric and categorical")
    explicit = data.numeric is not None or data.categorical is not None
    numeric: list[str] = []
    categorical: list[str] = []
    dropped: list[str] = []
    for f in arrow:
        if f.name in forced_num:
            if not _is_numeric(f.type):
                raise DataError(f"data.numeric column {f.name!r} is {f.type}, not a number")
            numeric.append(f.name)
        elif f.name in forced_cat:
            if not (_is_categorical(f.type) or pa.types.is_integer(f.type) or pa.types.is_boolean(f.type)):
                raise DataError(f"data.categorical column {f.name!r} is {f.type}: use strings or integers")
            categorical.append(f.name)
        elif f.name in reserved:
            continue
        elif explicit and data.numeric is not None and data.categorical is not None:
            dropped.append(f.name)  # both lists given: they are the whole feature set
        elif _is_numeric(f.type) and (data.numeric is None):
            numeric.append(f.name)
        elif _is_categorical(f.type) and (data.categorical is None):
            categorical.append(f.name)
        else:
            dropped.append(f.name)
    extra_inputs = list(extra_inputs or [])
    unknown = [c for c in extra_inputs if c not in names]
    if unknown:
        raise DataError(f"derived features read unknown column(s) {', '.join(unknown)} (columns: {', '.join(names)})")
    if not numeric and not categorical and not extra_inputs:
        raise DataError("no feature columns left after excluding label, key, time and data.drop")
    used = numeric + categorical + [label] + [c for c in (split.key, split.time) if c] + extra_inputs
    types = {n: str(arrow.field(n).type) for n in names if n in used}
    derived_inputs = [c for c in dict.fromkeys(extra_inputs) if c not in numeric + categorical]
    inputs = set(numeric + categorical + derived_inputs)
    ignored = [n for n in names if n != label and n not in inputs]
    return DatasetSchema(label, numeric, categorical, types, split.key, split.time, dropped, derived_inputs,
                         ignored=ignored)
