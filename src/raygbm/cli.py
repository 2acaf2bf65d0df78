"""``raygbm`` command line.

One vocabulary: ``--data`` names an input, ``--output`` an output (the old ``generate --out`` and
``predict``/``feedback --input`` still work, hidden and deprecated). Every command that prints a result
takes ``--json`` (the result as JSON on stdout). Exit codes (``raygbm.errors``): 0 done, 1 internal error,
2 bad input or usage, 3 cannot reach a service, 4 not promoted; ``exit_code`` maps an exception to one and
``_Command.invoke`` applies it to every command: a ``RaygbmError`` is one line on stderr."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from raygbm.errors import (
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    EndpointUnreachable,
    JobsApiUnreachable,
    RaygbmError,
    RayUnreachable,
    Rejected,
    ServiceUnreachable,
    connection_failure,
)
from raygbm.progress import Progress

ENVIRONMENT = ("Environment: RAYGBM_HOME (where runs, models and the MLflow store live; default ./.raygbm), "
               "MLFLOW_TRACKING_URI (a tracking server instead of the embedded store), RAY_ADDRESS (join that "
               "cluster instead of starting a local Ray), RAYGBM_ENDPOINT_TOKEN (the endpoint's bearer token, "
               "for serve.require_token, predict --url, drift-report, feedback and loop status --url), "
               "RAYGBM_UI_ENV (where `raygbm ui` keeps the MLflow UI's environment; default under RAYGBM_HOME), "
               "RAYGBM_PROJECT (the repository root a Serve config's relative config: path resolves against), "
               "RAYGBM_HTTP_LIMITS (JSON of the serve. read limits for the HTTP servers Serve starts; set by "
               "raygbm when it starts Ray), RAYGBM_HAPROXY_STATS and RAYGBM_HAPROXY_METRICS (HOST:PORT of fast "
               "ingress's HAProxy statistics page and Prometheus exporter), RAYGBM_VENV (the virtual environment "
               "cluster/local/ nodes run from), RAYGBM_FAST_INGRESS (0: cluster/local/ nodes start without "
               "Serve's fast ingress). Details: docs/environment.md.")

EXIT_TABLE = "Exit codes:\n" + "\n".join(f"{code}  {meaning}" for code, meaning in EXIT_CODES)


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception that ends a command: a ``RaygbmError``'s own (one raised while a
    connection to a server failed counts as 3, cannot reach a service, whatever its class); else 3 for a
    connection failure anywhere in its chain (an MLflow client that cannot reach its server), else 1."""
    if isinstance(exc, RaygbmError):
        if exc.exit_code == EXIT_USAGE and connection_failure(exc) is not None:
            return EXIT_UNREACHABLE
        return exc.exit_code
    return EXIT_UNREACHABLE if connection_failure(exc) is not None else EXIT_INTERNAL


def _report(exc: RaygbmError) -> None:
    """The one stderr line of a ``RaygbmError``, and its exit code."""
    typer.echo(f"{exc.label}: {exc}", err=True)
    raise typer.Exit(exit_code(exc))


# ---- help that reads as words: on/off flags without typer's `<bool>` type label (typer 0.29 renders
# `--force <bool>`, as if the flag took a value; --help and --version included; an empty metavar leaves the
# flag's names alone), and an argument shown by its metavar alone (typer 0.29 adds `<str>` beside it and
# writes `{version}` in the usage line).


class _Argument(TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        return None if self.metavar else super().display_type_rich(ctx)

    def _usage_display_name(self) -> str:
        if not self.metavar:
            return super()._usage_display_name()
        return (self.metavar if self.required else f"[{self.metavar}]") + ("..." if self.nargs != 1 else "")


def _unlabel_flags(params: list[Any]) -> list[Any]:
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
        if type(p) is TyperArgument:
            p.__class__ = _Argument
    return params


class _Command(TyperCommand):
    """Every command: flags without ``<bool>``, the exit codes in its help, and a ``RaygbmError`` turned
    into one stderr line and its exit code (``exit_code``), here for every command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["epilog"] = kwargs.get("epilog") or EXIT_TABLE
        super().__init__(*args, **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return _unlabel_flags(super().get_params(ctx))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except RaygbmError as exc:
            _report(exc)


class _Group(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["epilog"] = kwargs.get("epilog") or EXIT_TABLE
        super().__init__(*args, **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return _unlabel_flags(super().get_params(ctx))


class _App(typer.Typer):
    """Every ``@app.command()`` gets ``_Command``."""

    def command(self, *args: Any, cls: Any = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _App(cls=_Group, add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
           help="raygbm: Parquet shards → tuned LightGBM → monitored endpoint, on Ray.\n\n"
                "Example: raygbm run --data data/ --label label",
           epilog=f"{ENVIRONMENT}\n\n{EXIT_TABLE}")


def _version(show: bool) -> None:
    if show:
        from raygbm._version import __version__

        typer.echo(f"raygbm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print raygbm's version and exit")) -> None:
    """raygbm: Parquet shards → tuned LightGBM → monitored endpoint, on Ray.

    Example: raygbm run --data data/ --label label
    """


def _fail(msg: str) -> None:
    """Bad input or usage the command found itself: one line, exit code 2."""
    raise RaygbmError(msg)


def _renamed(new: str, old: str, value: Any, old_value: Any, required: bool = False) -> Any:
    """The value of an option given as ``new`` or by its deprecated name ``old`` (a hidden alias kept so
    scripts keep working; a warning on stderr names the new spelling)."""
    if old_value is not None:
        if value is not None:
            _fail(f"give {new} only ({old} is its deprecated name)")
        typer.echo(f"warning: {old} is deprecated, use {new}", err=True)
        return old_value
    if value is None and required:
        _fail(f"missing option {new}")
    return value


def _emit(doc: Any) -> None:
    """A command's result as JSON on stdout (``--json``)."""
    typer.echo(json.dumps(doc, indent=1, default=str))


def _say(json_out: bool) -> Any:
    """Where a command's human lines go: stdout, or stderr when stdout carries the JSON result."""
    return (lambda line: typer.echo(line, err=True)) if json_out else typer.echo


_JSON = typer.Option(False, "--json", help="print the result as JSON on stdout")


@app.command()
def generate(
    output: Optional[Path] = typer.Option(None, "--output", metavar="DIR",
                                          help="directory to write the shards to (required)"),
    out_old: Optional[Path] = typer.Option(None, "--out", hidden=True, help="deprecated: --output"),
    rows: int = typer.Option(1_000_000, "--rows", metavar="N", help="total rows"),
    shards: int = typer.Option(8, "--shards", metavar="N", help="number of Parquet files"),
    seed: int = typer.Option(0, "--seed", metavar="N", help="random seed: the same seed writes the same data"),
    task: str = typer.Option("binary", "--task", metavar="TASK", help="binary, multiclass or regression"),
    positive_rate: float = typer.Option(0.3, "--positive-rate", metavar="SHARE", help="share of positives (binary)"),
    drift_from_row: Optional[int] = typer.Option(None, "--drift-from-row", metavar="ROW",
                                                 help="rows from this index on drift"),
    drift_at: Optional[str] = typer.Option(None, "--drift-at", metavar="ISO_TIME", help="rows from this ISO time on drift"),
    drift_shift: float = typer.Option(1.5, "--drift-shift", metavar="STD", help="mean shift of drifted numerics, in std"),
    concept_drift: bool = typer.Option(False, "--concept-drift", help="also change the label relation"),
    concept_only: bool = typer.Option(False, "--concept-only", help="change only the label relation, not the "
                                      "features (drift monitoring cannot see it; realized performance can)"),
    json_out: bool = _JSON,
) -> None:
    """Write a synthetic tabular dataset (deterministic by seed) as Parquet shards.

    Example: raygbm generate --rows 100000 --shards 4 --seed 7 --output data/
    """
    from raygbm.data.generate import DriftSpec, GeneratorSpec, generate_dataset

    out = _renamed("--output", "--out", output, out_old, required=True)
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
    if json_out:
        _emit({"output": str(out), "rows": rows, "shards": [str(p) for p in paths], "seed": seed, "task": task})
        return
    typer.echo(f"wrote {rows:,} rows in {len(paths)} shards to {out}")


_DATA = typer.Option(None, "--data", metavar="PATH_OR_URI", help="directory, glob or URI of Parquet shards")
_LABEL = typer.Option(None, "--label", metavar="COLUMN", help="label column")
_CONFIG = typer.Option(None, "--config", metavar="PATH", help="pipeline config YAML")
_SET = typer.Option([], "--set", metavar="KEY=VALUE", help="override a config key: --set train.num_boost_round=300")
_SET_SERVE = typer.Option([], "--set", metavar="KEY=VALUE", help="override a config key: --set serve.num_replicas=2")
_TASK = typer.Option(None, "--task", metavar="TASK", help="binary, multiclass, regression (default: inferred)")
_FORCE = typer.Option(False, "--force", help="recompute even if a finished run matches")
_MODEL = typer.Option("champion", "--model", metavar="VERSION", help="registered version number, or champion")
_URL = typer.Option("http://127.0.0.1:8000", "--url", metavar="URL", help="the endpoint's base URL")
_OK_IF_REJECTED = typer.Option(False, "--ok-if-rejected", help="exit 0, not 4, when the gate keeps the champion "
                               "(a scheduled job, for which that is a normal outcome)")


def _config(config: Optional[Path], set_: list[str], data: Optional[str], label: Optional[str], task: Optional[str],
            **more: Any) -> Any:
    from raygbm.config import load_config

    fields: dict[str, Any] = {"data.source": data, "data.label": label, "data.task": task, **more}
    return load_config(config, set_, fields)


def _gate(outcome: Any, ok_if_rejected: bool) -> None:
    """Exit code 4 when the registered model did not become champion (``--ok-if-rejected``: 0)."""
    if outcome.decision != "champion" and not ok_if_rejected:
        raise Rejected(f"v{outcome.version} is a {outcome.decision}: {outcome.reason}")


@app.command()
def preprocess(
    data: Optional[str] = _DATA,
    label: Optional[str] = _LABEL,
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
    task: Optional[str] = _TASK,
    quarantine: bool = typer.Option(False, "--quarantine", help="skip bad shards and list them in the report"),
    force: bool = _FORCE,
    json_out: bool = typer.Option(False, "--json", help="print the run directory and the data report as JSON"),
) -> None:
    """Validate, profile, split and preprocess Parquet shards (Ray Data). Prints the data report.

    Example: raygbm preprocess --data data/ --label label
    """
    cfg = _config(config, set_, data, label, task, **({"data.quarantine": True} if quarantine else {}))
    with _progress(json_out) as progress:
        result = _run_data_stage(cfg, progress, force)
    if json_out:
        _emit({"run_dir": str(result.run_dir), "reused": bool(result.cached), "report": result.report})
        return
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
    trials: Optional[int] = typer.Option(None, "--trials", metavar="N", help="number of trials (tune.trials)"),
    force: bool = _FORCE,
    json_out: bool = typer.Option(False, "--json", help="print the search's result (best params, every trial) "
                                  "as JSON"),
) -> None:
    """Search LightGBM hyperparameters with Ray Tune (Optuna TPE + ASHA). Prints the best params.

    Example: raygbm tune --data data/ --label label --trials 8
    """
    from raygbm.report import print_tuning
    from raygbm.training.train import RunMeta
    from raygbm.training.tune import tune_search

    cfg = _config(config, set_, data, label, task, **{"tune.trials": trials})
    with _progress(json_out) as progress:
        meta = RunMeta.load(_run_data_stage(cfg, progress, force).run_dir)
        result = tune_search(meta, cfg.train, cfg.tune, cfg.resources, progress=progress, force=force)
    if json_out:
        _emit(result.to_dict())
        return
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
    ok_if_rejected: bool = _OK_IF_REJECTED,
    json_out: bool = typer.Option(False, "--json", help="print the outcome as JSON"),
) -> None:
    """Train with fixed params (train.params), evaluate on the test split and register the model (champion
    if it beats the current one; else exit code 4).

    Example: raygbm train --data data/ --label label --set train.num_boost_round=300
    """
    from raygbm.pipeline import train_and_register
    from raygbm.report import print_outcome
    from raygbm.training.train import RunMeta

    cfg = _config(config, set_, data, label, task)
    with _progress(json_out) as progress:
        meta = RunMeta.load(_run_data_stage(cfg, progress, force).run_dir)
        outcome = train_and_register(meta, cfg, None, progress, force=force)
    if json_out:
        _emit(outcome.to_dict())
    else:
        print_outcome(outcome)
    _gate(outcome, ok_if_rejected)


@app.command()
def evaluate(
    model: str = _MODEL,
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

    cfg = _config(config, set_, data, label, task)
    with _progress(json_out) as progress:
        meta = RunMeta.load(_run_data_stage(cfg, progress, False).run_dir)
        progress(f"evaluating model {model}")
        ref, metrics = evaluate_registered(meta, cfg.registry, model)
    if json_out:
        _emit({"version": ref.version, "metrics": metrics})
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
    trials: Optional[int] = typer.Option(None, "--trials", metavar="N",
                                         help="number of tuning trials (tune.trials); 0 skips tuning"),
    force: bool = _FORCE,
    ok_if_rejected: bool = _OK_IF_REJECTED,
    json_out: bool = typer.Option(False, "--json", help="print the outcome as JSON"),
) -> None:
    """The whole pipeline: preprocess → tune → train the best → evaluate → register (champion if it wins;
    else exit code 4).

    Example: raygbm run --config pipelines/configs/demo.yaml --data .raygbm/demo-data
    """
    from raygbm.pipeline import run_pipeline
    from raygbm.report import print_outcome, print_tuning

    cfg = _config(config, set_, data, label, task, **{"tune.trials": trials or None})
    with _progress(json_out) as progress:
        shards = _check(cfg)
        progress("starting Ray")
        _ray(cfg)
        outcome, tuning = run_pipeline(cfg, progress=progress, force=force, tune=trials != 0, shards=shards)
    if json_out:
        _emit(outcome.to_dict())
    else:
        if tuning is not None:
            print_tuning(tuning)
        print_outcome(outcome)
    _gate(outcome, ok_if_rejected)


@app.command()
def predict(
    data: Optional[str] = typer.Option(None, "--data", metavar="PATH_OR_URI",
                                       help="Parquet file, directory, glob or URI to score (required)"),
    input_old: Optional[str] = typer.Option(None, "--input", hidden=True, help="deprecated: --data"),
    output: Path = typer.Option(..., "--output", metavar="DIR",
                                help="Parquet folder to write (input columns + prediction, score)"),
    model: str = _MODEL,
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUTPUT if it exists"),
    url: Optional[str] = typer.Option(None, "--url", metavar="URL", help="score through this running endpoint's "
                                      "/predict/batch (Arrow IPC, in chunks) instead of a local batch job"),
    json_out: bool = _JSON,
) -> None:
    """Score a dataset with a registered model as a Ray batch job (or through a running endpoint).

    Example: raygbm predict --data data/ --output scored/
    """
    from raygbm.predict import predict_dataset
    from raygbm.registry.store import Registry, local_bundle
    from raygbm.serving.client import predict_via_endpoint

    source = _renamed("--data", "--input", data, input_old, required=True)
    if url is not None:
        out = predict_via_endpoint(source, output, url, overwrite=overwrite)
        version, where = out["model_version"], f" at {url}"
    else:
        cfg = _config(config, set_, None, None, None)
        with _progress(json_out) as progress:
            progress(f"loading model {model}")
            ref, bundle = local_bundle(Registry(cfg.registry), model)
            progress("starting Ray")
            _ray(cfg)
            progress(f"scoring {source}")
            out = predict_dataset(source, output, bundle, chunk_rows=cfg.resources.read_chunk_rows, overwrite=overwrite,
                                  progress=progress)
        version, where = ref.version, ""
    if json_out:
        _emit({"rows": out["rows"], "model_version": version, "output": str(output), "url": url,
               "seconds": out["seconds"]})
        return
    typer.echo(f"scored {out['rows']:,} rows with model v{version}{where} into {output} ({out['seconds']:.1f}s)")


@app.command()
def models(
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
    json_out: bool = _JSON,
) -> None:
    """List registered model versions, their test metric and which one is the champion.

    Example: raygbm models
    """
    from raygbm.registry.store import Registry

    reg = Registry(_config(config, set_, None, None, None).registry)
    versions = reg.versions()
    if json_out:
        _emit([{"version": v.version, "champion": "champion" in v.aliases, "aliases": v.aliases,
                "gate_metric": v.tags.get("gate_metric"),
                "test_value": v.tags.get("test_" + v.tags.get("gate_metric", "")),
                "decision": v.tags.get("loop_action") or v.tags.get("decision"), "reason": v.tags.get("gate_reason")}
               for v in versions])
        return
    if not versions:
        typer.echo(f"no versions of {reg.config.model_name!r} in {reg.uri}")
    for v in versions:
        metric = v.tags.get("gate_metric", "")
        mark = "*" if "champion" in v.aliases else " "
        decision = v.tags.get("loop_action") or v.tags.get("decision", "")  # the loop's, when it decided
        typer.echo(f"{mark} v{v.version:<4} {metric} {v.tags.get('test_' + metric, '-'):<10} {decision}: {v.tags.get('gate_reason', '')}")


@app.command()
def promote(
    version: str = typer.Argument(..., metavar="VERSION", help="the version to make champion (e.g. to roll back)"),
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET,
    json_out: bool = _JSON,
) -> None:
    """Move the champion alias to a version by hand (a rollback, or a candidate you trust). A version whose
    bundle fails verification is refused: exit code 4.

    Example: raygbm promote 1
    """
    from raygbm.registry.store import Registry

    reg = Registry(_config(config, set_, None, None, None).registry)
    ref = reg.get(version)
    if ref is None:
        _fail(f"no champion model yet for {reg.config.model_name!r}: give a version number")
    reg.promote(ref)
    reg.set_tags(ref, {"gate_reason": "promoted by hand"})
    if json_out:
        _emit({"name": ref.name, "version": ref.version, "champion": True})
        return
    typer.echo(f"v{ref.version} is now the champion of {ref.name!r}")


@app.command()
def serve(
    model: str = _MODEL,
    config: Optional[Path] = _CONFIG,
    set_: list[str] = _SET_SERVE,
    host: Optional[str] = typer.Option(None, "--host", metavar="HOST", help="bind address (serve.host; default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, "--port", metavar="PORT", help="port (serve.port; default 8000)"),
    detach: bool = typer.Option(False, "--detach", help="return after deploying (on a cluster given by RAY_ADDRESS)"),
    json_out: bool = typer.Option(False, "--json", help="print the endpoint's URL as JSON on stdout (other lines "
                                  "on stderr)"),
) -> None:
    """Deploy a registered model (default: the champion) as the HTTP endpoint and print its URL.

    Example: raygbm serve --port 8000
    """
    from raygbm.application import check, deploy
    from raygbm.runtime import StopSignals, stop_serving

    say = _say(json_out)
    cfg = _config(config, set_, None, None, None, **{"serve.host": host, "serve.port": port})
    check(cfg)
    if detach and not os.environ.get("RAY_ADDRESS"):
        _fail("--detach needs a running cluster (RAY_ADDRESS): an embedded Ray stops when this command exits")
    with _progress(json_out) as progress:
        progress("starting Ray")
        _ray(cfg)
        stop = StopSignals()
        progress(f"deploying model {model}" + (" and the loop" if cfg.retrain.enabled else ""))
        url = deploy(cfg, None if model == "champion" else model)
    if json_out:
        _emit({"url": url, "model": model, "loop": cfg.retrain.enabled, "detached": detach})
    else:
        typer.echo(f"serving at {url}  (POST /predict, GET /model, /drift, /retrain, /healthz, /readyz, /docs)")
    if cfg.retrain.enabled:
        say(f"the loop is on, in the app (LoopController): triggers checked every {cfg.retrain.check_s:g}s "
            "(GET /retrain, raygbm loop status)")
    if detach:
        return
    if cfg.retrain.enabled:
        from raygbm.loop.watch import follow
        from raygbm.monitoring.loop_state import LoopState
        from raygbm.paths import home

        follow(LoopState(home(), cfg.registry.model_name), lambda line: typer.echo(line, err=True))
    say("press Ctrl-C to stop")
    say(f"{stop.wait()}: draining the endpoint and stopping Ray")
    stop_serving()


def _endpoint_error(exc: RaygbmError) -> RaygbmError:
    """A client's error for an endpoint that did not answer, as ``EndpointUnreachable`` (exit code 3)."""
    if isinstance(exc, ServiceUnreachable) or connection_failure(exc) is None:
        return exc
    return EndpointUnreachable(str(exc))


@app.command("drift-report")
def drift_report(
    url: str = _URL,
    output: Path = typer.Option(Path("drift-report.html"), "--output", metavar="PATH", help="HTML file to write"),
    json_out: bool = typer.Option(False, "--json", help="print the windows' verdicts and the report's path as JSON"),
) -> None:
    """Fetch GET /drift from a running endpoint and write an HTML report (reference vs current histograms).
    Sends ``Authorization: Bearer $RAYGBM_ENDPOINT_TOKEN`` when that is set.

    Example: raygbm drift-report --url http://127.0.0.1:8000 --output drift.html
    """
    from raygbm.monitoring.report import drift_report_html
    from raygbm.paths import write_text_atomic
    from raygbm.serving.client import Endpoint

    try:
        report = Endpoint(url).get_json("/drift")
    except RaygbmError as exc:
        raise _endpoint_error(exc) from exc
    write_text_atomic(output, drift_report_html(report))
    windows = report.get("windows", [])
    verdicts = [w["verdict"] for w in windows]
    if json_out:
        _emit({"output": str(output.resolve()), "windows": len(verdicts), "drift": verdicts.count("drift"),
               "verdicts": [{"index": w.get("index"), "verdict": w["verdict"],
                             "drifted_features": w.get("drifted_features", [])} for w in windows]})
        return
    typer.echo(f"{len(verdicts)} windows ({verdicts.count('drift')} with drift); report: {output.resolve()}")


@app.command()
def feedback(
    data: Optional[Path] = typer.Option(None, "--data", metavar="PATH", help="Parquet file or folder, or CSV file, "
                                        "with columns prediction_id and label (required)"),
    input_old: Optional[Path] = typer.Option(None, "--input", hidden=True, help="deprecated: --data"),
    url: str = _URL,
    json_out: bool = _JSON,
) -> None:
    """Send labels for served predictions to a running endpoint's POST /feedback and print the counts.
    Sends ``Authorization: Bearer $RAYGBM_ENDPOINT_TOKEN`` when that is set.

    Example: raygbm feedback --data labels.parquet --url http://127.0.0.1:8000
    """
    from raygbm.serving.client import send_feedback

    source = _renamed("--data", "--input", data, input_old, required=True)
    try:
        out = send_feedback(source, url)
    except RaygbmError as exc:
        raise _endpoint_error(exc) from exc
    if json_out:
        _emit({**out, "url": url})
        return
    typer.echo(f"{out['rows']:,} labels sent to {url}: accepted {out['accepted']:,}, unknown ids {out['unknown_ids']:,}, "
               f"duplicates {out['duplicates']:,}")


@app.command()
def ui(
    port: int = typer.Option(5000, "--port", metavar="PORT", help="port on 127.0.0.1"),
    json_out: bool = typer.Option(False, "--json", help="print the UI's URL as JSON on stdout (other lines on "
                                  "stderr)"),
) -> None:
    """Open the MLflow UI over raygbm's store (runs, trials as child runs, metrics per round, plots, the model
    card, versions with the champion alias). The first start creates the UI's own environment (the full
    mlflow, in $RAYGBM_HOME/mlflow-ui-VERSION or $RAYGBM_UI_ENV): a few minutes, once.

    Example: raygbm ui --port 5000
    """
    from raygbm.runtime import StopSignals

    say = _say(json_out)
    remote = os.environ.get("MLFLOW_TRACKING_URI", "")
    if remote.startswith(("http://", "https://")):
        if json_out:
            _emit({"url": remote, "tracking_server": True})
        else:
            typer.echo(f"MLFLOW_TRACKING_URI is a tracking server: its UI is at {remote}")
        return
    from raygbm.ui import start, stop

    signals = StopSignals()
    proc, url = start(port, say)
    if json_out:
        _emit({"url": url, "tracking_server": False})
    else:
        typer.echo(f"MLflow UI at {url}  (experiment raygbm: runs and their trials; Models: versions and the champion)")
    say("press Ctrl-C to stop")
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
    trigger: Optional[str] = typer.Option(None, "--trigger", hidden=True, help="the trigger's id (set by the loop's jobs)"),
    reason: str = typer.Option("run by hand", "--reason", metavar="TEXT", help="why: recorded with the trigger"),
    kind: str = typer.Option("manual", "--kind", hidden=True, help="the trigger's kind (set by the loop's jobs)"),
    ok_if_rejected: bool = _OK_IF_REJECTED,
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Retrain on the source plus recent labelled traffic; promote the challenger only if it beats the
    champion on recent labelled rows neither trained on (by registry.margin); else exit code 4. One at a
    time per model.

    Example: raygbm retrain --config pipelines/configs/demo.yaml --data .raygbm/demo-data
    """
    from raygbm.loop.triggers import Trigger
    from raygbm.monitoring.loop_state import LoopState
    from raygbm.paths import home

    cfg = _config(config, set_, data, label, None)
    state = LoopState(home(), cfg.registry.model_name)
    fired = Trigger(trigger or f"manual-{int(time.time() * 1000)}", kind, reason)
    if submit:
        if not os.environ.get("RAY_ADDRESS"):
            _fail("--submit needs a running cluster (RAY_ADDRESS)")
        _ray(cfg)
        entry = _submit_retrain(cfg, state, fired)
        if json_out:
            _emit({"trigger": fired.id, "outcome": entry["outcome"], "job": entry.get("job")})
        else:
            typer.echo(f"trigger {fired.id}: {entry['outcome']}" + (f" (job {entry['job']})" if "job" in entry else ""))
        outcome = str(entry["outcome"])
        if outcome.startswith("submission failed"):
            raise JobsApiUnreachable(f"trigger {fired.id}: {outcome}")
        if outcome.startswith("skipped") and not ok_if_rejected:
            raise Rejected(f"trigger {fired.id}: {outcome}")
        return
    with _progress(json_out) as progress:
        result = _retrain_here(cfg, state, fired, trigger is None, progress)
    d = result.decision
    if json_out:
        _emit(result.to_dict())
    else:
        typer.echo(f"challenger v{result.version}: {d.action}: {d.reason}")
    if d.action != "promoted" and not ok_if_rejected:
        raise Rejected(f"challenger v{result.version} {d.action}: {d.reason}")


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
    url: Optional[str] = typer.Option(None, "--url", metavar="URL", help="ask this running endpoint's GET /retrain "
                                      "instead"),
    last: int = typer.Option(10, "--last", metavar="N", help="entries shown per list (the human form)"),
    json_out: bool = typer.Option(False, "--json", help="print the whole record as JSON (as GET /retrain "
                                  "answers it)"),
) -> None:
    """Print the loop's triggers, retraining jobs and decisions (as GET /retrain answers them): the latest
    of each as lines, or the whole record with --json.

    Example: raygbm loop status --url http://127.0.0.1:8000
    """
    if url is not None:
        from raygbm.serving.client import Endpoint

        try:
            doc = Endpoint(url).get_json("/retrain")
        except RaygbmError as exc:
            raise _endpoint_error(exc) from exc
    else:
        from raygbm.monitoring.loop_state import LoopState, public
        from raygbm.paths import home

        cfg = _config(config, set_, None, None, None)
        doc = public(LoopState(home(), cfg.registry.model_name).read())
    if json_out:
        _emit(doc)
        return
    for line in loop_lines(doc, last):
        typer.echo(line)


def _when(at: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(at)))
    except (TypeError, ValueError):
        return "-"


def loop_lines(doc: dict[str, Any], last: int = 10) -> list[str]:
    """The loop's record (``public``'s, as ``GET /retrain`` answers it) for a person: the problem first,
    the watched promotion, then the latest ``last`` triggers, jobs and decisions, one line each."""
    lines = []
    if doc.get("problem"):
        lines.append(f"problem: {doc['problem']}")
    watch = doc.get("watch")
    if watch:
        lines.append(f"watch: v{watch.get('version')} (previous v{watch.get('previous')}) {watch.get('status')} "
                     f"since {_when(watch.get('since'))}, {watch.get('windows', 0)} windows"
                     + (f": {watch['reason']}" if watch.get("reason") else ""))
    show = {
        "triggers": lambda t: f"{t.get('id')} ({t.get('kind')}: {t.get('reason')}): {t.get('outcome')}"
                              + (f" [job {t['job']}]" if t.get("job") else ""),
        "jobs": lambda j: f"{j.get('id')} {j.get('status')}"
                          + (f" v{j['version']} {j.get('action', '')}".rstrip() if j.get("version") else "")
                          + (f": {j['message']}" if j.get("message") else ""),
        "decisions": lambda d: f"v{d.get('version')} {d.get('action')}: {d.get('reason')}",
    }
    for key, line in show.items():
        entries = doc.get(key) or []
        shown = entries[-last:] if last > 0 else []
        more = f", the last {len(shown)}" if len(shown) < len(entries) else ""
        lines.append(f"{key} ({len(entries)}{more}):" if entries else f"{key}: none")
        lines += [f"  {_when(e.get('at'))}  {line(e)}" for e in shown]
    return lines


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
        raise DataError("no label column given (use --label COLUMN or data.label in the config)")

    return check_shards(cfg.data.source, label=cfg.data.label, quarantine=cfg.data.quarantine,
                        extra=cfg.data.extra_shards)


def _ray(cfg: Any) -> None:
    """Ray for this command (``runtime.ensure_ray``); a cluster named by ``RAY_ADDRESS`` that cannot be
    joined is ``RayUnreachable`` (exit code 3)."""
    from raygbm.runtime import ensure_ray

    try:
        ensure_ray(cfg.resources, cfg.serve)
    except (ConnectionError, TimeoutError) as exc:
        address = os.environ.get("RAY_ADDRESS")
        if not address:
            raise
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise RayUnreachable(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {first}") from exc


def _run_data_stage(cfg: Any, progress: Progress, force: bool) -> Any:
    """Check the shards, start Ray, run (or reuse) the data stage."""
    from raygbm.data.preprocess import preprocess as preprocess_stage

    shards = _check(cfg)
    progress("starting Ray")
    _ray(cfg)
    return preprocess_stage(cfg, progress=progress, force=force, shards=shards)


EXIT_CRASH = EXIT_INTERNAL


def main(argv: list[str] | None = None, prog_name: str | None = None) -> None:
    """The console script and the Ray Job entry points (``pipelines.*``). An unexpected exception (a bug,
    or a failure no check foresaw) prints one line: the command, the stage, the exception's type and the
    log file that holds the traceback; exit code 1 (3 when it came from a server that could not be
    reached, e.g. an MLflow tracking server). Work already finished stays finished: a re-run resumes."""
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
        code = exit_code(exc)
        what = "could not reach a service" if code == EXIT_UNREACHABLE else "failed unexpectedly"
        typer.echo(f"error: raygbm {command} {what}{where} ({type(exc).__name__}); "
                   f"the traceback is in {log}", err=True)
        sys.exit(code)


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
