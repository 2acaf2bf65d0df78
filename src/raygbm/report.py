"""Showing a data report, tuning results, an outcome and progress on the terminal."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.table import Table

from raygbm.progress import Progress, no_progress


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=120)
    rows_out = report["rows_out"]
    console.print(
        f"[bold]{report['source']}[/]: {report['rows_read']:,} rows in {report['shards']} shards; "
        f"{report['rows_missing_label']:,} without label (dropped), {report['rows_duplicate']:,} duplicate "
        f"({'dropped' if report['duplicates_dropped'] else 'kept'}); task [bold]{report['task']}[/]"
    )
    console.print(
        f"split ({report['split_method']}): "
        + ", ".join(f"{k} {v:,}" for k, v in rows_out.items())
    )
    label = report["label"]
    if "classes" in label:
        total = sum(label["classes"].values()) or 1
        console.print("label " + label["column"] + ": " + ", ".join(f"{k} {v / total:.1%}" for k, v in label["classes"].items()))
    else:
        console.print(f"label {label['column']}: mean {_fmt(label['mean'])}, std {_fmt(label['std'])}")
    for q in report.get("quarantined", []):
        console.print(f"[yellow]quarantined[/] {q['path']}: {q['problem']}")
    for col, b in report.get("out_of_bounds", {}).items():
        console.print(f"[yellow]out of bounds[/] {col}: {b['below']:,} below, {b['above']:,} above")
    t = Table(show_lines=False)
    for name in ("column", "role", "type", "nulls", "mean / distinct", "std / top", "min", "p50", "max"):
        t.add_column(name, justify="left" if name in ("column", "role", "type", "std / top") else "right")
    for col, c in report["columns"].items():
        nulls = f"{c['null_frac']:.1%}"
        if c["role"] == "categorical":
            top = c["top"][0][0] if c["top"] else "-"
            t.add_row(col, c["role"], c["type"], nulls, _fmt(c["distinct"]), str(top), "", "", "")
        else:
            t.add_row(col, c["role"], c["type"], nulls, _fmt(c["mean"]), _fmt(c["std"]), _fmt(c["min"]), _fmt(c["p50"]), _fmt(c["max"]))
    console.print(t)


@contextmanager
def progress_display(quiet: bool = False) -> Iterator[Progress]:
    """A progress callback that shows each step: a status display on a terminal; plain timestamped
    lines on stdout otherwise (logs, CI), so that stderr carries nothing but the one error line of a
    failed command. ``quiet``: no output at all."""
    start = time.perf_counter()
    if quiet:
        yield no_progress
    elif sys.stderr.isatty():
        console = Console(stderr=True)
        last: list[Any] = []  # (message, started) of the step in progress
        with console.status("starting") as status:
            def show(msg: str) -> None:
                now = time.perf_counter()
                if last:  # the step before is done: keep it on screen with its time
                    console.print(f"[green]✓[/] {last[0]} [dim]{now - last[1]:.1f}s[/]")
                last[:] = [msg, now]
                status.update(f"{msg}  [dim]{now - start:.1f}s[/]")
            yield show
            if last:
                console.print(f"[green]✓[/] {last[0]} [dim]{time.perf_counter() - last[1]:.1f}s[/]")
    else:
        def show_line(msg: str) -> None:
            print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)
        yield show_line


def print_metrics(title: str, metrics: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=120)
    t = Table(title=title, title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        if k != "confusion_matrix":
            t.add_row(k, _fmt(v))
    console.print(t)
    if "confusion_matrix" in metrics:
        console.print("confusion matrix (rows: true class): " + str(metrics["confusion_matrix"]))


def print_tuning(tuning: Any, console: Console | None = None) -> None:
    console = console or Console(width=120)
    stopped = sum(t["status"] == "stopped early" for t in tuning.trials)
    console.print(
        f"tuning: {len(tuning.trials)} trials ({tuning.trial_mode.replace('_', '-')}) in {tuning.wall_s:.1f}s, "
        f"{stopped} stopped early by ASHA; best validation {tuning.metric} [bold]{tuning.best_score:.5g}[/]"
        + ("  (resumed)" if tuning.restored else "")
    )
    console.print("best params: " + ", ".join(f"{k}={_fmt(v)}" for k, v in tuning.best_params.items()))


def print_outcome(outcome: Any, console: Console | None = None) -> None:
    console = console or Console(width=120)
    print_metrics(f"model v{outcome.version}: test metrics", outcome.metrics, console)
    colour = "green" if outcome.decision == "champion" else "yellow"
    console.print(f"[{colour}]{outcome.decision}[/]: {outcome.reason}")
    console.print(f"model card: {outcome.card_path}")
