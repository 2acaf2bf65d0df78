"""``raygbm`` command line. Bad input gives one line on stderr naming the problem and exit code 2."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer

from raygbm.errors import RaygbmError
from raygbm.progress import Progress

ENVIRONMENT = ("Environment: RAYGBM_HOME (where runs, models and the MLflow store live; default ./.raygbm), "
               "MLFLOW_TRACKING_URI (a tracking server instead of the embedded store), RAY_ADDRESS (join that "
               "cluster instead of starting a local Ray), RAYGBM_ENDPOINT_TOKEN (the endpoint's bearer token, "
               "for serve.require_token, predict --url and drift-report).")
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="raygbm: Parquet shards → tuned LightGBM → monitored endpoint, on Ray.", epilog=ENVIRONMENT)

EXIT_USER_ERROR = 2


def _version(show: bool) -> None:
    if show:
        from raygbm import __version__

        typer.echo(f"raygbm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print raygbm's version and exit")) -> None:
    """raygbm: Parquet shards → tuned LightGBM → monitored endpoint, on Ray."""


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
    from raygbm.data.generate import DriftSpec, GeneratorSpec, generate_dataset

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


_DATA = typer.Option(None, "--data", help="directory, glob or URI of Parquet shards")
_LABEL = typer.Option(None, "--label", help="label column")
_CONFIG = typer.Option(None, "--config", help="pipeline config YAML")
_SET = typer.Option([], "--set", help="override a config key: --set train.num_boost_round=300")
_SET_SERVE = typer.Option([], "--set", help="override a config key: --set serve.num_replicas=2")
_TASK = typer.Option(None, "--task", help="binary, multiclass, regression (default: inferred)")
_FORCE = typer.Option(False, "--force", help="recompute even if a finished run matches")


def _config(config: Optional[Path], set_: list[str], data: Optional[str], label: Optional[str], task: Optional[str],
            **more: Any) -> Any:
    from raygbm.config import load_config

    fields: dict[str, Any] = {"data.source": data, "data.label": label, "data.task": task, **more}
    return load_config(config, set_, fields)


@app.command()
def preprocess(
    data: Optional[str] = _DATA,
    label: Optional[str] = _LABEL,
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
    task: Optional[str] = _TASK,
    quarantine: bool = typer.Option(False, "--quarantine", help="skip bad shards and list them in the report"),
    force: bool = _FORCE,
    json_out: bool = typer.Option(False, "--json", help="print the data report as JSON"),
) -> None:
    """Validate, profile, split and preprocess Parquet shards (Ray Data). Prints the data report."""
    try:
        cfg = _config(config, set_, data, label, task, **({"data.quarantine": True} if quarantine else {}))
        with _progress(json_out) as progress:
            result = _run_data_stage(cfg, progress, force)
    except RaygbmError as exc:
        _fail(str(exc))
    if json_out:
        import json

        typer.echo(json.dumps(result.report, indent=1))
    else:
        from raygbm.report import print_report

        print_report(result.report)
    typer.echo(f"run directory: {result.run_dir}{'  (reused: inputs and config unchanged)' if result.cached else ''}")


@app.command()
def tune(
    data: Optional[str] = _DATA,
    label: Optional[str] = _LABEL,
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
    task: Optional[str] = _TASK,
    trials: Optional[int] = typer.Option(None, "--trials", help="number of trials (tune.trials)"),
    force: bool = _FORCE,
) -> None:
    """Search LightGBM hyperparameters with Ray Tune (Optuna TPE + ASHA). Prints the best params."""
    from raygbm.report import print_tuning
    from raygbm.training.train import RunMeta
    from raygbm.training.tune import tune_search

    try:
        cfg = _config(config, set_, data, label, task, **{"tune.trials": trials})
        with _progress() as progress:
            meta = RunMeta.load(_run_data_stage(cfg, progress, force).run_dir)
            result = tune_search(meta, cfg.train, cfg.tune, cfg.resources, progress=progress, force=force)
    except RaygbmError as exc:
        _fail(str(exc))
    print_tuning(result)
    typer.echo(f"results: {result.path}")


@app.command()
def train(
    data: Optional[str] = _DATA,
    label: Optional[str] = _LABEL,
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
    task: Optional[str] = _TASK,
    force: bool = _FORCE,
) -> None:
    """Train with fixed params (train.params), evaluate on the test split and register the model."""
    from raygbm.pipeline import train_and_register
    from raygbm.report import print_outcome
    from raygbm.training.train import RunMeta

    try:
        cfg = _config(config, set_, data, label, task)
        with _progress() as progress:
            meta = RunMeta.load(_run_data_stage(cfg, progress, force).run_dir)
            outcome = train_and_register(meta, cfg, None, progress)
    except RaygbmError as exc:
        _fail(str(exc))
    print_outcome(outcome)


@app.command()
def evaluate(
    model: str = typer.Option("champion", "--model", help="registered version number, or champion"),
    data: Optional[str] = _DATA,
    label: Optional[str] = _LABEL,
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
    task: Optional[str] = _TASK,
    json_out: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
) -> None:
    """Score a registered model on the data's test split (raw rows, through the model's own preprocessor)."""
    from raygbm.registry.register import evaluate_registered
    from raygbm.training.train import RunMeta

    try:
        cfg = _config(config, set_, data, label, task)
        with _progress(json_out) as progress:
            meta = RunMeta.load(_run_data_stage(cfg, progress, False).run_dir)
            progress(f"evaluating model {model}")
            ref, metrics = evaluate_registered(meta, cfg.registry, model)
    except RaygbmError as exc:
        _fail(str(exc))
    if json_out:
        import json

        typer.echo(json.dumps({"version": ref.version, "metrics": metrics}, indent=1))
    else:
        from raygbm.report import print_metrics

        print_metrics(f"model v{ref.version} on {meta.run_dir.name} (test split)", metrics)


@app.command()
def run(
    data: Optional[str] = _DATA,
    label: Optional[str] = _LABEL,
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
    task: Optional[str] = _TASK,
    trials: Optional[int] = typer.Option(None, "--trials", help="number of tuning trials (tune.trials); 0 skips tuning"),
    force: bool = _FORCE,
    json_out: bool = typer.Option(False, "--json", help="print the outcome as JSON"),
) -> None:
    """The whole pipeline: preprocess → tune → train the best → evaluate → register (champion if it wins)."""
    from raygbm.pipeline import run_pipeline
    from raygbm.report import print_outcome, print_tuning

    try:
        cfg = _config(config, set_, data, label, task, **{"tune.trials": trials or None})
        with _progress(json_out) as progress:
            shards = _check(cfg)
            progress("starting Ray")
            _ray(cfg)
            outcome, tuning = run_pipeline(cfg, progress=progress, force=force, tune=trials != 0, shards=shards)
    except RaygbmError as exc:
        _fail(str(exc))
    if json_out:
        import json

        typer.echo(json.dumps(outcome.to_dict(), indent=1, default=str))
        return
    if tuning is not None:
        print_tuning(tuning)
    print_outcome(outcome)


@app.command()
def predict(
    input: str = typer.Option(..., "--input", help="Parquet file, directory, glob or URI to score"),
    output: Path = typer.Option(..., "--output", help="Parquet folder to write (input columns + prediction, score)"),
    model: str = typer.Option("champion", "--model", help="registered version number, or champion"),
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUTPUT if it exists"),
    url: Optional[str] = typer.Option(None, "--url", help="score through this running endpoint's /predict/batch "
                                      "(Arrow IPC, in chunks) instead of a local batch job"),
) -> None:
    """Score a dataset with a registered model as a Ray Data batch job (or through a running endpoint)."""
    from raygbm.predict import predict_dataset, predict_via_endpoint
    from raygbm.registry.store import Registry, local_bundle

    if url is not None:
        try:
            out = predict_via_endpoint(input, output, url, overwrite=overwrite)
        except RaygbmError as exc:
            _fail(str(exc))
        typer.echo(f"scored {out['rows']:,} rows with model v{out['model_version']} at {url} into {output} "
                   f"({out['seconds']:.1f}s)")
        return
    try:
        cfg = _config(config, set_, None, None, None)
        with _progress() as progress:
            progress(f"loading model {model}")
            ref, bundle = local_bundle(Registry(cfg.registry), model)
            progress("starting Ray")
            _ray(cfg)
            progress(f"scoring {input}")
            out = predict_dataset(input, output, bundle, chunk_rows=cfg.resources.read_chunk_rows, overwrite=overwrite)
    except RaygbmError as exc:
        _fail(str(exc))
    typer.echo(f"scored {out['rows']:,} rows with model v{ref.version} into {output} ({out['seconds']:.1f}s)")


@app.command()
def models(
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
) -> None:
    """List registered model versions, their test metric and which one is the champion."""
    from raygbm.registry.store import Registry

    try:
        reg = Registry(_config(config, set_, None, None, None).registry)
        versions = reg.versions()
    except RaygbmError as exc:
        _fail(str(exc))
    if not versions:
        typer.echo(f"no versions of {reg.config.model_name!r} in {reg.uri}")
    for v in versions:
        metric = v.tags.get("gate_metric", "")
        mark = "*" if "champion" in v.aliases else " "
        typer.echo(f"{mark} v{v.version:<4} {metric} {v.tags.get('test_' + metric, '-'):<10} {v.tags.get('decision', '')}: {v.tags.get('gate_reason', '')}")


@app.command()
def promote(
    version: str = typer.Argument(..., help="the version to make champion (e.g. to roll back)"),
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
) -> None:
    """Move the champion alias to a version by hand (a rollback, or a candidate you trust)."""
    from raygbm.registry.store import Registry

    try:
        reg = Registry(_config(config, set_, None, None, None).registry)
        ref = reg.get(version)
        reg.promote(ref)
        reg.set_tags(ref, {"gate_reason": "promoted by hand"})
    except RaygbmError as exc:
        _fail(str(exc))
    typer.echo(f"v{ref.version} is now the champion of {ref.name!r}")


@app.command()
def serve(
    model: str = typer.Option("champion", "--model", help="registered version number, or champion"),
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET_SERVE,
    host: Optional[str] = typer.Option(None, "--host", help="bind address (serve.host; default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, "--port", help="port (serve.port; default 8000)"),
    detach: bool = typer.Option(False, "--detach", help="return after deploying (on a cluster given by RAY_ADDRESS)"),
) -> None:
    """Deploy a registered model (default: the champion) as the HTTP endpoint and print its URL."""
    import os

    from raygbm.runtime import StopSignals, stop_serving
    from raygbm.serving.deploy import deploy

    try:
        cfg = _config(config, set_, None, None, None, **{"serve.host": host, "serve.port": port})
        if detach and not os.environ.get("RAY_ADDRESS"):
            _fail("--detach needs a running cluster (RAY_ADDRESS): an embedded Ray stops when this command exits")
        if cfg.serve.fast_ingress:
            from raygbm.runtime import enable_fast_ingress

            enable_fast_ingress()
        with _progress() as progress:
            progress("starting Ray")
            _ray(cfg)
            stop = StopSignals()
            progress(f"deploying model {model}")
            url = deploy(cfg.registry, cfg.serve, cfg.monitor, None if model == "champion" else model)
    except RaygbmError as exc:
        _fail(str(exc))
    typer.echo(f"serving at {url}  (POST /predict, GET /model, /drift, /healthz, /readyz, /docs)")
    if detach:
        return
    typer.echo("press Ctrl-C to stop")
    typer.echo(f"{stop.wait()}: draining the endpoint and stopping Ray")
    stop_serving()


@app.command("drift-report")
def drift_report(
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="the endpoint's base URL"),
    output: Path = typer.Option(Path("drift-report.html"), "--output", help="HTML file to write"),
) -> None:
    """Fetch GET /drift from a running endpoint and write an HTML report (reference vs current histograms).
    Sends ``Authorization: Bearer $RAYGBM_ENDPOINT_TOKEN`` when that is set."""
    import json
    import urllib.error
    import urllib.request

    from raygbm.drift.report import drift_report_html
    from raygbm.predict import endpoint_auth

    try:
        request = urllib.request.Request(url.rstrip("/") + "/drift", headers=endpoint_auth())
        with urllib.request.urlopen(request, timeout=30) as r:
            report = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        _fail(f"cannot read {url}/drift: {getattr(exc, 'reason', exc)}")
    from raygbm.paths import write_text_atomic

    write_text_atomic(output, drift_report_html(report))
    verdicts = [w["verdict"] for w in report.get("windows", [])]
    typer.echo(f"{len(verdicts)} windows ({verdicts.count('drift')} with drift); report: {output.resolve()}")


@app.command()
def feedback(
    input: Path = typer.Option(..., "--input", help="Parquet file or folder, or CSV file, with columns prediction_id and label"),
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="the endpoint's base URL"),
) -> None:
    """Send labels for served predictions to a running endpoint's POST /feedback and print the counts.
    Sends ``Authorization: Bearer $RAYGBM_ENDPOINT_TOKEN`` when that is set."""
    from raygbm.loop.client import send_feedback

    try:
        out = send_feedback(input, url)
    except RaygbmError as exc:
        _fail(str(exc))
    typer.echo(f"{out['rows']:,} labels sent to {url}: accepted {out['accepted']:,}, unknown ids {out['unknown_ids']:,}, "
               f"duplicates {out['duplicates']:,}")


def _progress(quiet: bool = False) -> Any:
    """The progress display (``report.progress_display``), imported on use: rich loads slowly."""
    from raygbm.report import progress_display

    return progress_display(quiet)


def _check(cfg: Any) -> Any:
    """Fail fast, silently, on missing inputs and bad shards before paying for a Ray start."""
    from raygbm.data.schema import check_shards
    from raygbm.errors import DataError

    if not cfg.data.source:
        raise DataError("no data source given (use --data PATH_OR_URI or data.source in the config)")
    if not cfg.data.label:
        raise DataError("no label column given (use --label NAME or data.label in the config)")

    return check_shards(cfg.data.source, label=cfg.data.label, quarantine=cfg.data.quarantine)


def _ray(cfg: Any) -> None:
    from raygbm.runtime import ensure_ray

    ensure_ray(cfg.resources, cfg.serve)


def _run_data_stage(cfg: Any, progress: Progress, force: bool) -> Any:
    """Check the shards, start Ray, run (or reuse) the data stage."""
    from raygbm.data.preprocess import preprocess as preprocess_stage

    shards = _check(cfg)
    progress("starting Ray")
    _ray(cfg)
    return preprocess_stage(cfg, progress=progress, force=force, shards=shards)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
