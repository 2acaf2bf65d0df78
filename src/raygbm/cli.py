"""``raygbm`` command line. Bad input gives one line on stderr naming the problem and exit code 2."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer

from raygbm.errors import RaygbmError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="raygbm: Parquet shards → tuned LightGBM → monitored endpoint, on Ray.")

EXIT_USER_ERROR = 2


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", help="directory to write the shards to"),
    rows: int = typer.Option(1_000_000, "--rows", help="total rows"),
    shards: int = typer.Option(8, "--shards", help="number of Parquet files"),
    seed: int = typer.Option(0, "--seed"),
    task: str = typer.Option("binary", "--task", help="binary, multiclass or regression"),
    positive_rate: float = typer.Option(0.3, "--positive-rate", help="share of positives (binary)"),
    drift_from_row: Optional[int] = typer.Option(None, "--drift-from-row", help="rows from this index on drift"),
    drift_at: Optional[str] = typer.Option(None, "--drift-at", help="rows from this ISO time on drift"),
    drift_shift: float = typer.Option(1.5, "--drift-shift", help="mean shift of drifted numerics, in std"),
    concept_drift: bool = typer.Option(False, "--concept-drift", help="also change the label relation"),
) -> None:
    """Write a synthetic tabular dataset (deterministic by seed) as Parquet shards."""
    from raygbm.generate import DriftSpec, GeneratorSpec, generate_dataset

    try:
        if drift_from_row is not None and drift_at is not None:
            _fail("give --drift-from-row or --drift-at, not both")
        drift = None
        if drift_from_row is not None:
            drift = DriftSpec(drift_from_row, shift=drift_shift, concept=concept_drift)
        elif drift_at is not None:
            try:
                when = datetime.fromisoformat(drift_at)
            except ValueError:
                _fail(f"--drift-at {drift_at!r} is not an ISO date or time")
            drift = DriftSpec.at_time(when, shift=drift_shift, concept=concept_drift)
        spec = GeneratorSpec(rows=rows, shards=shards, seed=seed, task=task, positive_rate=positive_rate, drift=drift)
        paths = generate_dataset(out, spec)
    except RaygbmError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {rows:,} rows in {len(paths)} shards to {out}")


@app.command()
def preprocess(
    data: Optional[str] = typer.Option(None, "--data", help="directory, glob or URI of Parquet shards"),
    label: Optional[str] = typer.Option(None, "--label", help="label column"),
    config: Optional[Path] = typer.Option(None, "--config", help="pipeline config YAML"),
    set_: list[str] = typer.Option([], "--set", help="override a config key: --set split.seed=7"),
    task: Optional[str] = typer.Option(None, "--task", help="binary, multiclass, regression (default: inferred)"),
    quarantine: bool = typer.Option(False, "--quarantine", help="skip bad shards and list them in the report"),
    force: bool = typer.Option(False, "--force", help="recompute even if a finished run matches"),
    json_out: bool = typer.Option(False, "--json", help="print the data report as JSON"),
) -> None:
    """Validate, profile, split and preprocess Parquet shards (Ray Data). Prints the data report."""
    from raygbm.config import load_config

    try:
        fields: dict[str, Any] = {"data.source": data, "data.label": label, "data.task": task}
        if quarantine:
            fields["data.quarantine"] = True
        cfg = load_config(config, set_, fields)
        result = run_preprocess(cfg, force=force)
    except RaygbmError as exc:
        _fail(str(exc))
    if json_out:
        import json

        typer.echo(json.dumps(result.report, indent=1))
    else:
        from raygbm.report import print_report

        print_report(result.report)
    typer.echo(f"run directory: {result.run_dir}{'  (reused: inputs and config unchanged)' if result.cached else ''}")


def run_preprocess(cfg: Any, force: bool = False) -> Any:
    """Check the shards first (no Ray needed to reject bad input), then start Ray and run the stage."""
    from raygbm.data import preprocess as preprocess_stage
    from raygbm.runtime import ensure_ray

    from raygbm.report import progress

    with progress() as say:
        shards = None
        if cfg.data.source:
            # Fail fast, silently, on bad shards before paying for a Ray start.
            from raygbm.schema import check_shards

            shards = check_shards(cfg.data.source, label=cfg.data.label, quarantine=cfg.data.quarantine)
        say("starting Ray")
        ensure_ray(cfg.resources)
        return preprocess_stage(cfg, progress=say, force=force, shards=shards)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
