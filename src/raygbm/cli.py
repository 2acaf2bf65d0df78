"""``raygbm`` command line. Bad input gives one line on stderr naming the problem and exit code 2."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from raygbm.errors import RaygbmError
from raygbm.progress import Progress

ENVIRONMENT = ("Environment: RAYGBM_HOME (where runs, models and the MLflow store live; default ./.raygbm), "
               "MLFLOW_TRACKING_URI (a tracking server instead of the embedded store), RAY_ADDRESS (join that "
               "cluster instead of starting a local Ray), RAYGBM_ENDPOINT_TOKEN (the endpoint's bearer token, "
               "for serve.require_token, predict --url and drift-report), RAYGBM_UI_ENV (where `raygbm ui` keeps "
               "the MLflow UI's environment; default under RAYGBM_HOME).")


# ---- on/off flags without typer's `<bool>` type label (typer 0.29 renders `--force <bool>`, as if the flag
# took a value; --help and --version included). An empty metavar leaves the flag's names alone.


def _unlabel_flags(params: list[Any]) -> list[Any]:
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _unlabel_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _unlabel_flags(super().get_params(ctx))


class _App(typer.Typer):
    """Every ``@app.command()`` gets ``_Command`` (flags shown without ``<bool>``)."""

    def command(self, *args: Any, cls: Any = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _App(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
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
    concept_only: bool = typer.Option(False, "--concept-only", help="change only the label relation, not the "
                                      "features (drift monitoring cannot see it; realized performance can)"),
) -> None:
    """Write a synthetic tabular dataset (deterministic by seed) as Parquet shards.

    Example: raygbm generate --rows 100000 --shards 4 --seed 7 --out data/
    """
    from raygbm.data.generate import DriftSpec, GeneratorSpec, generate_dataset

    try:
        if drift_from_row is not None and drift_at is not None:
            _fail("give --drift-from-row or --drift-at, not both")
        drift = None
        kind = ({"shift": 0.0, "categories": False, "concept": True} if concept_only
                else {"shift": drift_shift, "concept": concept_drift})
        if drift_from_row is not None:
            drift = DriftSpec(drift_from_row, **kind)
        elif drift_at is not None:
            try:
                when = datetime.fromisoformat(drift_at)
            except ValueError:
                _fail(f"--drift-at {drift_at!r} is not an ISO date or time")
            drift = DriftSpec.at_time(when, **kind)
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
    """Validate, profile, split and preprocess Parquet shards (Ray tasks). Prints the data report.

    Example: raygbm preprocess --data data/ --label label
    """
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
    """Search LightGBM hyperparameters with Ray Tune (Optuna TPE + ASHA). Prints the best params.

    Example: raygbm tune --data data/ --label label --trials 8
    """
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
    """Train with fixed params (train.params), evaluate on the test split and register the model.

    Example: raygbm train --data data/ --label label --set train.num_boost_round=300
    """
    from raygbm.pipeline import train_and_register
    from raygbm.report import print_outcome
    from raygbm.training.train import RunMeta

    try:
        cfg = _config(config, set_, data, label, task)
        with _progress() as progress:
            meta = RunMeta.load(_run_data_stage(cfg, progress, force).run_dir)
            outcome = train_and_register(meta, cfg, None, progress, force=force)
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
    """Score a registered model on the data's test split (raw rows, through the model's own preprocessor).

    Example: raygbm evaluate --data data/ --label label --model 2
    """
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
    """The whole pipeline: preprocess → tune → train the best → evaluate → register (champion if it wins).

    Example: raygbm run --config pipelines/configs/demo.yaml --data .raygbm/demo-data
    """
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
    """Score a dataset with a registered model as a Ray batch job (or through a running endpoint).

    Example: raygbm predict --input data/ --output scored/
    """
    from raygbm.predict import predict_dataset
    from raygbm.registry.store import Registry, local_bundle
    from raygbm.serving.client import predict_via_endpoint

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
    """List registered model versions, their test metric and which one is the champion.

    Example: raygbm models
    """
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
        decision = v.tags.get("loop_action") or v.tags.get("decision", "")  # the loop's, when it decided
        typer.echo(f"{mark} v{v.version:<4} {metric} {v.tags.get('test_' + metric, '-'):<10} {decision}: {v.tags.get('gate_reason', '')}")


@app.command()
def promote(
    version: str = typer.Argument(..., help="the version to make champion (e.g. to roll back)"),
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
) -> None:
    """Move the champion alias to a version by hand (a rollback, or a candidate you trust).

    Example: raygbm promote 1
    """
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
    """Deploy a registered model (default: the champion) as the HTTP endpoint and print its URL.

    Example: raygbm serve --port 8000
    """
    import os

    from raygbm.application import check, deploy
    from raygbm.runtime import StopSignals, stop_serving

    try:
        cfg = _config(config, set_, None, None, None, **{"serve.host": host, "serve.port": port})
        check(cfg)
        if detach and not os.environ.get("RAY_ADDRESS"):
            _fail("--detach needs a running cluster (RAY_ADDRESS): an embedded Ray stops when this command exits")
        with _progress() as progress:
            progress("starting Ray")
            _ray(cfg)
            stop = StopSignals()
            progress(f"deploying model {model}" + (" and the loop" if cfg.retrain.enabled else ""))
            url = deploy(cfg, None if model == "champion" else model)
    except RaygbmError as exc:
        _fail(str(exc))
    typer.echo(f"serving at {url}  (POST /predict, GET /model, /drift, /retrain, /healthz, /readyz, /docs)")
    if cfg.retrain.enabled:
        typer.echo(f"the loop is on, in the app (LoopController): triggers checked every {cfg.retrain.check_s:g}s "
                   "(GET /retrain, raygbm loop status)")
    if detach:
        return
    if cfg.retrain.enabled:
        from raygbm.loop.watch import follow
        from raygbm.monitoring.loop_state import LoopState
        from raygbm.paths import home

        follow(LoopState(home(), cfg.registry.model_name), lambda line: typer.echo(line, err=True))
    typer.echo("press Ctrl-C to stop")
    typer.echo(f"{stop.wait()}: draining the endpoint and stopping Ray")
    stop_serving()


@app.command("drift-report")
def drift_report(
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="the endpoint's base URL"),
    output: Path = typer.Option(Path("drift-report.html"), "--output", help="HTML file to write"),
) -> None:
    """Fetch GET /drift from a running endpoint and write an HTML report (reference vs current histograms).
    Sends ``Authorization: Bearer $RAYGBM_ENDPOINT_TOKEN`` when that is set.

    Example: raygbm drift-report --url http://127.0.0.1:8000 --output drift.html
    """
    from raygbm.monitoring.report import drift_report_html
    from raygbm.serving.client import Endpoint

    try:
        report = Endpoint(url).get_json("/drift")
    except RaygbmError as exc:
        _fail(str(exc))
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
    Sends ``Authorization: Bearer $RAYGBM_ENDPOINT_TOKEN`` when that is set.

    Example: raygbm feedback --input labels.parquet --url http://127.0.0.1:8000
    """
    from raygbm.serving.client import send_feedback

    try:
        out = send_feedback(input, url)
    except RaygbmError as exc:
        _fail(str(exc))
    typer.echo(f"{out['rows']:,} labels sent to {url}: accepted {out['accepted']:,}, unknown ids {out['unknown_ids']:,}, "
               f"duplicates {out['duplicates']:,}")


@app.command()
def ui(
    port: int = typer.Option(5000, "--port", help="port on 127.0.0.1"),
) -> None:
    """Open the MLflow UI over raygbm's store (runs, trials as child runs, metrics per round, plots, the model
    card, versions with the champion alias). The first start creates the UI's own environment (the full
    mlflow, in $RAYGBM_HOME/mlflow-ui-VERSION or $RAYGBM_UI_ENV): a few minutes, once.

    Example: raygbm ui --port 5000
    """
    import os
    import time

    from raygbm.runtime import StopSignals

    remote = os.environ.get("MLFLOW_TRACKING_URI", "")
    if remote.startswith(("http://", "https://")):
        typer.echo(f"MLFLOW_TRACKING_URI is a tracking server: its UI is at {remote}")
        return
    from raygbm.ui import start, stop

    try:
        signals = StopSignals()
        proc, url = start(port, typer.echo)
    except RaygbmError as exc:
        _fail(str(exc))
    typer.echo(f"MLflow UI at {url}  (experiment raygbm: runs and their trials; Models: versions and the champion)")
    typer.echo("press Ctrl-C to stop")
    while not signals.received and proc.poll() is None:
        time.sleep(0.5)
    stop(proc)
    if not signals.received:
        _fail(f"the MLflow server stopped (exit code {proc.returncode}); its log is in $RAYGBM_HOME/logs/mlflow-ui.log")


# ---- the loop: retraining, its triggers and decisions

@app.command()
def retrain(
    data: Optional[str] = _DATA,
    label: Optional[str] = _LABEL,
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
    submit: bool = typer.Option(False, "--submit", help="submit it as a Ray Job to the cluster (RAY_ADDRESS) and "
                                "print the job id, instead of running it here"),
    trigger: Optional[str] = typer.Option(None, "--trigger", help="the trigger's id (set by the loop's jobs)"),
    reason: str = typer.Option("run by hand", "--reason", help="why: recorded with the trigger"),
    kind: str = typer.Option("manual", "--kind", help="the trigger's kind (set by the loop's jobs)"),
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Retrain on the source plus recent labelled traffic; promote the challenger only if it beats the
    champion on recent labelled rows neither trained on (by registry.margin). One at a time per model.

    Example: raygbm retrain --config pipelines/configs/demo.yaml --data .raygbm/demo-data
    """
    import os
    import time

    from raygbm.loop.triggers import Trigger
    from raygbm.monitoring.loop_state import LoopState
    from raygbm.paths import home

    try:
        cfg = _config(config, set_, data, label, None)
        state = LoopState(home(), cfg.registry.model_name)
        fired = Trigger(trigger or f"manual-{int(time.time() * 1000)}", kind, reason)
        if submit:
            if not os.environ.get("RAY_ADDRESS"):
                _fail("--submit needs a running cluster (RAY_ADDRESS)")
            _ray(cfg)
            entry = _submit_retrain(cfg, state, fired)
            typer.echo(f"trigger {fired.id}: {entry['outcome']}" + (f" (job {entry['job']})" if "job" in entry else ""))
            return
        with _progress(json_out) as progress:
            result = _retrain_here(cfg, state, fired, trigger is None, progress)
    except RaygbmError as exc:
        _fail(str(exc))
    if json_out:
        import json

        typer.echo(json.dumps(result.to_dict(), indent=1))
        return
    d = result.decision
    typer.echo(f"challenger v{result.version}: {d.action}: {d.reason}")


def _submit_retrain(cfg: Any, state: Any, fired: Any) -> dict[str, Any]:
    from raygbm.loop.jobs import JobSubmitter
    from raygbm.loop.triggers import Controller

    jobs = JobSubmitter(cfg)
    controller = Controller(cfg.retrain, state, jobs.submit, jobs.status)
    return controller.fire(fired, controller.blocked(controller.refresh_jobs()))


def _retrain_here(cfg: Any, state: Any, fired: Any, by_hand: bool, progress: Progress) -> Any:
    """``retrain`` in this process; a run by hand is recorded as its own trigger and job."""
    from raygbm.loop.retrain import retrain as retrain_run

    job = f"local-{fired.id}"
    if by_hand:
        state.append("triggers", {**fired.to_dict(), "outcome": "run by hand", "job": job})
        state.set_job(job, status="RUNNING", local=True, trigger=fired.id, kind=fired.kind, reason=fired.reason)
    progress("starting Ray")
    _ray(cfg)
    try:
        result = retrain_run(cfg, trigger=fired.id, progress=progress)
    except BaseException as exc:
        if by_hand:
            state.set_job(job, status="FAILED", message=str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__)
        raise
    if by_hand:
        state.set_job(job, status="SUCCEEDED", version=result.version, action=result.decision.action)
    return result


loop_app = _App(cls=_Group, no_args_is_help=True,
                help="The loop: triggers, retraining jobs and decisions.\n\nExample: raygbm loop status")
app.add_typer(loop_app, name="loop")


@loop_app.command("status")
def loop_status(
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
    url: Optional[str] = typer.Option(None, "--url", help="ask this running endpoint's GET /retrain instead"),
) -> None:
    """Print the loop's triggers, retraining jobs and decisions (as GET /retrain answers them), as JSON.

    Example: raygbm loop status --url http://127.0.0.1:8000
    """
    import json

    if url is not None:
        from raygbm.serving.client import Endpoint

        try:
            doc = Endpoint(url).get_json("/retrain")
        except RaygbmError as exc:
            _fail(str(exc))
    else:
        from raygbm.monitoring.loop_state import LoopState, public
        from raygbm.paths import home

        try:
            cfg = _config(config, set_, None, None, None)
        except RaygbmError as exc:
            _fail(str(exc))
        doc = public(LoopState(home(), cfg.registry.model_name).read())
    typer.echo(json.dumps(doc, indent=1))


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

    return check_shards(cfg.data.source, label=cfg.data.label, quarantine=cfg.data.quarantine,
                        extra=cfg.data.extra_shards)


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


EXIT_CRASH = 1


def main(argv: list[str] | None = None, prog_name: str | None = None) -> None:
    """The console script and the Ray Job entry points (``pipelines.*``). An unexpected exception (a bug,
    or a failure no check foresaw) prints one line: the command, the stage, the exception's type and the
    log file that holds the traceback; exit code 1. Work already finished stays finished: a re-run resumes."""
    try:
        app(args=argv, prog_name=prog_name)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001  the last line of defence: no traceback reaches the user
        from raygbm.errors import stage_of

        args = sys.argv[1:] if argv is None else argv
        command = next((a for a in args if not a.startswith("-")), "raygbm")
        where = f" in the {stage_of(exc)} stage" if stage_of(exc) else ""
        log = _crash_log(command, args, exc)
        typer.echo(f"error: raygbm {command} failed unexpectedly{where} ({type(exc).__name__}); "
                   f"the traceback is in {log}", err=True)
        sys.exit(EXIT_CRASH)


def _crash_log(command: str, args: list[str], exc: BaseException) -> Path:
    """The traceback in ``$RAYGBM_HOME/logs/`` (the temporary folder where the home is not writable)."""
    import tempfile
    import traceback

    from raygbm.paths import home

    name = f"crash-{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = f"raygbm {' '.join(args)}\n\n" + "".join(traceback.format_exception(exc))
    for folder in (home() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue
    return Path("(no writable folder for the log)")


if __name__ == "__main__":
    main()
