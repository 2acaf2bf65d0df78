"""Which learning task a label calls for (binary, multiclass, regression), and its classes.

Used by the data stage (on statistics merged from every block) and by ``Preprocessor.fit`` (on one
in-memory table), so the rule lives here, below both.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from raygbm.data.stats import CategoricalStats, NumericStats
from raygbm.errors import DataError

MAX_CLASSES = 50


def infer_task(label_type: pa.DataType, label_stats: CategoricalStats | NumericStats | None) -> str:
    """binary for two classes, multiclass for up to 50 integer or string classes, else regression."""
    if isinstance(label_stats, CategoricalStats):
        k = len(label_stats.counts)
        if k < 2:
            raise DataError(f"the label has {k} distinct value(s); need at least 2")
        if k == 2:
            return "binary"
        if k <= MAX_CLASSES and not pa.types.is_floating(label_type):
            return "multiclass"
        if pa.types.is_integer(label_type):
            return "regression"
        raise DataError(f"the label has {k} classes (more than {MAX_CLASSES}); set data.task explicitly")
    return "regression"


def label_is_numeric(label_type: pa.DataType, configured_task: str) -> bool:
    """Whether the label is profiled as numbers (float labels, and integer labels of a configured
    regression) rather than by class counts. ``configured_task`` may be ``"auto"``."""
    return pa.types.is_floating(label_type) or (configured_task == "regression" and pa.types.is_integer(label_type))


def label_classes(task: str, label_stats: CategoricalStats | NumericStats | None) -> list[Any] | None:
    """The label's classes in sorted order; None for regression."""
    return sorted(label_stats.counts) if task != "regression" else None  # type: ignore[union-attr]


def resolve_task(configured_task: str, label: str, label_type: pa.DataType,
                 label_stats: CategoricalStats | NumericStats | None) -> tuple[str, list[Any] | None]:
    """The task (``configured_task`` unless ``"auto"``) and the label classes, checked against the label."""
    task = configured_task if configured_task != "auto" else infer_task(label_type, label_stats)
    if task != "regression" and isinstance(label_stats, NumericStats):
        raise DataError(f"task {task} needs a discrete label, but {label!r} is {label_type}")
    classes = label_classes(task, label_stats)
    if task == "binary" and classes is not None and len(classes) != 2:
        raise DataError(f"task binary needs 2 label classes, found {len(classes)}")
    return task, classes
