"""Which learning task a label calls for (binary, multiclass, regression), and its classes.

Used by the data stage (on statistics merged from every block) and by ``Preprocessor.fit`` (on one
in-memory table), so the rule lives here, below both.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from raygbm.data.stats import MAX_TRACKED_LABEL_VALUES, CategoricalStats, NumericStats
from raygbm.errors import DataError

MAX_CLASSES = 50


def explain_task(label_type: pa.DataType, label_stats: CategoricalStats | NumericStats | None) -> tuple[str, str]:
    """The task a label calls for, and why, by the rule of scikit-learn's ``type_of_target``: exactly two
    distinct values → binary, whatever their type (bool, integer, float, string); 3 to 50 integral or
    string values → multiclass; non-integral numbers, or integers with more classes → regression."""
    if isinstance(label_stats, NumericStats):  # a float label: its distinct values are kept while few
        values = label_stats.distinct
        if values is None:
            return "regression", f"the label is {label_type} with more than {MAX_TRACKED_LABEL_VALUES} distinct values"
        return _task_of_values(len(values), all(float(v).is_integer() for v in values), label_type)
    if isinstance(label_stats, CategoricalStats):
        return _task_of_values(len(label_stats.counts), not pa.types.is_floating(label_type), label_type)
    return "regression", f"the label is {label_type}"


def _task_of_values(k: int, discrete: bool, label_type: pa.DataType) -> tuple[str, str]:
    if k < 2:
        raise DataError(f"the label has {k} distinct value(s); need at least 2")
    if k == 2:
        return "binary", f"the label ({label_type}) has 2 distinct values"
    if discrete and k <= MAX_CLASSES:
        return "multiclass", f"the label ({label_type}) has {k} distinct {'integral ' if pa.types.is_floating(label_type) else ''}values"
    if pa.types.is_integer(label_type) or pa.types.is_floating(label_type):
        why = "non-integral" if not discrete else f"more than {MAX_CLASSES}"
        return "regression", f"the label ({label_type}) has {k} distinct {why} values"
    raise DataError(f"the label has {k} classes (more than {MAX_CLASSES}); set data.task explicitly")


def infer_task(label_type: pa.DataType, label_stats: CategoricalStats | NumericStats | None) -> str:
    """The task :func:`explain_task` infers."""
    return explain_task(label_type, label_stats)[0]


def label_is_numeric(label_type: pa.DataType, configured_task: str) -> bool:
    """Whether the label is profiled as numbers (float labels, and integer labels of a configured
    regression) rather than by class counts. ``configured_task`` may be ``"auto"``."""
    return pa.types.is_floating(label_type) or (configured_task == "regression" and pa.types.is_integer(label_type))


def label_classes(task: str, label_stats: CategoricalStats | NumericStats | None) -> list[Any] | None:
    """The label's classes in sorted order (in the label's own values); None for regression."""
    if task == "regression":
        return None
    if isinstance(label_stats, NumericStats):
        return list(label_stats.distinct) if label_stats.distinct is not None else None
    return sorted(label_stats.counts)  # type: ignore[union-attr]


def resolve_task(configured_task: str, label: str, label_type: pa.DataType,
                 label_stats: CategoricalStats | NumericStats | None) -> tuple[str, list[Any] | None, str]:
    """The task (``configured_task`` unless ``"auto"``), the label classes, checked against the label, and
    why that task."""
    if configured_task == "auto":
        task, why = explain_task(label_type, label_stats)
    else:
        task, why = configured_task, "data.task says so"
    if task != "regression" and isinstance(label_stats, NumericStats) and label_stats.distinct is None:
        raise DataError(f"task {task} needs a discrete label, but {label!r} is {label_type} with many distinct values")
    classes = label_classes(task, label_stats)
    if task == "binary" and classes is not None and len(classes) != 2:
        raise DataError(f"task binary needs 2 label classes, found {len(classes)}")
    return task, classes, why
