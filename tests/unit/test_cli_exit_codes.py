"""One CLI vocabulary and its exit codes, through the real command, without Ray.

Every command's and subcommand's --help reads as words (metavars, no `<type>` or `{name}`), has an
example, lists the exit codes and hides the internal flags; each exit code (0 done, 1 internal error, 2 bad
input or usage, 3 cannot reach a service, 4 not promoted) is reached once; the deprecated spellings
(`generate --out`, `predict`/`feedback --input`) still work; `loop status` speaks to a person unless --json.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from raygbm import cli
from raygbm.cli import app, exit_code
from raygbm.errors import (
    EXIT_CODES,
    DataError,
    PromotionRefused,
    RaygbmError,
    RegistryError,
    Rejected,
)
from tests.conftest import make_shards

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    """The real command (``python -m raygbm.cli``, as the loop's jobs run it), in a clean environment."""
    return subprocess.run([sys.executable, "-m", "raygbm.cli", *args], capture_output=True, text=True, timeout=120,
                          env={"RAYGBM_HOME": str(home), "PATH": "/usr/bin:/bin", **env})


def _free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _commands(command=None, path=()) -> list[tuple[tuple[str, ...], object]]:
    """Every command and subcommand: (its path of names, the click command)."""
    command = command or typer.main.get_command(app)
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def _plain(output: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


# ---- help


@pytest.mark.parametrize("path", [p for p, _ in _commands()], ids=lambda p: " ".join(p) or "raygbm")
def test_every_help_reads_as_words_with_an_example_and_the_exit_codes(path):
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = result.output
    assert not re.search(r"<[a-z_\[\], |]+>", text), f"a type metavar in {path} --help:\n{text}"
    assert "{" not in text and "}" not in text, f"a {{name}} in {path} --help:\n{text}"
    assert "Example: raygbm" in _plain(text), f"{path} --help has no example"
    assert "Exit codes:" in text
    for code, meaning in EXIT_CODES:
        assert f"{code}  {meaning.split(' (')[0]}" in text, f"{path} --help lacks exit code {code}"
    for hidden in ("--trigger", "--kind", "--out ", "--input"):
        assert hidden not in text, f"{path} --help shows {hidden}"


def test_every_option_has_a_metavar_and_every_result_a_json_flag():
    for path, command in _commands():
        ctx = typer.Context(command, info_name=path[-1] if path else "raygbm")
        for param in command.get_params(ctx):
            if getattr(param, "hidden", False) or getattr(param, "is_flag", False):
                continue
            assert param.metavar and param.metavar.upper() == param.metavar, f"{path} {param.name}: {param.metavar!r}"
        if path and not getattr(command, "commands", None):  # a command, not a group
            assert "--json" in [o for p in command.params for o in getattr(p, "opts", [])], f"{path} has no --json"


def test_the_console_script_offers_completion_and_names_every_raygbm_variable():
    script = Path(sys.executable).with_name("raygbm")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and "--install-completion" in result.stdout, result.stdout + result.stderr
    own = (ROOT / "docs" / "environment.md").read_text().split("## raygbm's own", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"^\| `(RAYGBM_[A-Z0-9_]+)` \|", own, re.M)
    assert {"RAYGBM_HOME", "RAYGBM_PROJECT", "RAYGBM_HTTP_LIMITS", "RAYGBM_VENV"} <= set(names)
    missing = [n for n in names if n not in _plain(result.stdout)]
    assert not missing, f"raygbm --help's environment footer lacks {missing}"


# ---- each exit code once, through the real command


def test_exit_0_done_with_json_on_stdout(tmp_path):
    r = _run("generate", "--rows", "1000", "--shards", "2", "--output", str(tmp_path / "g"), "--json", home=tmp_path / "h")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    doc = json.loads(r.stdout)
    assert doc["rows"] == 1000 and len(doc["shards"]) == 2 and all(Path(p).is_file() for p in doc["shards"])


def test_exit_1_an_unexpected_error(tmp_path, monkeypatch, capsys):
    from raygbm.registry.store import Registry

    def broken(self):
        raise KeyError("bug")

    monkeypatch.setenv("RAYGBM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(Registry, "versions", broken)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["models", "--json"])
    assert exit_.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: raygbm models failed unexpectedly (KeyError)")


def test_exit_2_bad_input_a_bad_config_key(tmp_path):
    home = tmp_path / "home"
    r = _run("models", "--set", "registry.no_such_key=1", home=home)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and "no_such_key" in line
    r = _run("generate", "--rows", "10", home=home)  # no --output (nor its old --out)
    assert r.returncode == 2 and "missing option --output" in r.stderr


@pytest.mark.parametrize("command", [["drift-report", "--output", "{tmp}/d.html"], ["feedback", "--data", "{labels}"],
                                     ["loop", "status"], ["predict", "--data", "{labels}", "--output", "{tmp}/o"]],
                         ids=["drift-report", "feedback", "loop-status", "predict"])
def test_exit_3_an_endpoint_nothing_listens_on(tmp_path, command):
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = tmp_path / "labels.parquet"  # labels for feedback, rows to score for predict
    pq.write_table(pa.table({"prediction_id": ["abc"], "label": [1]}), labels)
    url = f"http://127.0.0.1:{_free_port()}"
    args = [a.format(tmp=tmp_path, labels=labels) for a in command]
    r = _run(*args, "--url", url, home=tmp_path / "home")
    assert r.returncode == 3, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach {url}/"), line
    assert not (tmp_path / "d.html").exists() and not (tmp_path / "o").exists()


def test_exit_3_an_mlflow_tracking_server_nothing_listens_on(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    r = _run("models", home=tmp_path / "home", MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
             MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    assert r.returncode == 3, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach the MLflow tracking server at {uri}"), line


def test_exit_3_an_endpoint_behind_a_gateway_that_answers_503_but_2_for_a_refusal(tmp_path, monkeypatch):
    codes = iter([503, 401])

    class Gateway(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = b'{"error": "no"}'
            self.send_response(next(codes))
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("RAYGBM_HOME", str(tmp_path / "home"))
        assert CliRunner().invoke(app, ["drift-report", "--url", url, "--output", str(tmp_path / "d.html")]).exit_code == 3
        assert CliRunner().invoke(app, ["drift-report", "--url", url, "--output", str(tmp_path / "d.html")]).exit_code == 2
    finally:
        server.shutdown()


def test_exit_3_a_ray_cluster_or_jobs_api_that_cannot_be_reached(tmp_path, monkeypatch):
    """RAY_ADDRESS that cannot be joined, and a Jobs API that takes no submission (``retrain --submit``);
    ``ensure_ray`` and the submission are replaced, so no Ray starts."""
    import raygbm.runtime
    from raygbm.loop.jobs import JobSubmitter

    def unreachable(*args, **kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:1")

    monkeypatch.setenv("RAYGBM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.setattr(raygbm.runtime, "ensure_ray", unreachable)
    result = CliRunner().invoke(app, ["retrain", "--submit"])
    assert result.exit_code == 3 and "cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:1" in result.output
    monkeypatch.setattr(raygbm.runtime, "ensure_ray", lambda *a, **k: None)
    monkeypatch.setattr(JobSubmitter, "submit", lambda self, trigger: (_ for _ in ()).throw(ConnectionRefusedError(111, "refused")))
    result = CliRunner().invoke(app, ["retrain", "--submit", "--json"])
    assert result.exit_code == 3, result.output
    assert "submission failed" in result.output


def _outcome(decision: str):
    from raygbm.registry.register import Outcome

    return Outcome(version="2", run_id="r", decision=decision, reason="test roc_auc 0.80 does not beat champion v1",
                   metrics={"roc_auc": 0.8}, gate_metric="roc_auc", champion_score=0.81, report_dir=Path("/r"),
                   card_path=Path("/r/model_card.md"))


@pytest.mark.parametrize("command", ["train", "run"])
def test_exit_4_a_challenger_the_gate_rejects_and_0_with_ok_if_rejected(tmp_path, monkeypatch, command):
    """The pipeline's stages are replaced (they would start Ray); the command's own gate check runs."""
    import raygbm.pipeline

    monkeypatch.setenv("RAYGBM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli, "_run_data_stage", lambda cfg, progress, force: type("R", (), {"run_dir": tmp_path})())
    monkeypatch.setattr("raygbm.training.train.RunMeta.load", lambda run_dir: None)
    monkeypatch.setattr(cli, "_check", lambda cfg: [])
    monkeypatch.setattr(cli, "_ray", lambda cfg: None)
    for decision in ("candidate", "champion"):
        monkeypatch.setattr(raygbm.pipeline, "train_and_register", lambda *a, decision=decision, **k: _outcome(decision))
        monkeypatch.setattr(raygbm.pipeline, "run_pipeline", lambda *a, decision=decision, **k: (_outcome(decision), None))
        args = [command, "--data", "d", "--label", "label"]
        result = CliRunner().invoke(app, [*args, "--json"])
        assert result.exit_code == (4 if decision == "candidate" else 0), result.output
        assert json.loads(result.stdout)["decision"] == decision
        if decision == "candidate":
            assert "not promoted: v2 is a candidate: test roc_auc 0.80 does not beat champion v1" in result.stderr
            assert CliRunner().invoke(app, [*args, "--ok-if-rejected"]).exit_code == 0


def test_exit_4_retrain_rejected_and_0_with_ok_if_rejected(tmp_path, monkeypatch):
    from raygbm.loop.decisions import Decision
    from raygbm.loop.jobs import entrypoint
    from raygbm.loop.retrain import RetrainResult
    from raygbm.loop.triggers import Trigger

    monkeypatch.setenv("RAYGBM_HOME", str(tmp_path / "home"))
    decision = Decision("rejected", "3", "holdout roc_auc 0.70 does not beat champion v2", "roc_auc", 0.7, "2", 0.72, 400)
    result_ = RetrainResult("3", decision, 1000, 400, tmp_path)
    monkeypatch.setattr(cli, "_retrain_here", lambda *a, **k: result_)
    result = CliRunner().invoke(app, ["retrain"])
    assert result.exit_code == 4 and "challenger v3: rejected" in result.stdout
    assert CliRunner().invoke(app, ["retrain", "--ok-if-rejected"]).exit_code == 0
    # The loop's own jobs: a rejection is the loop's recorded decision, and the job succeeded.
    assert "--ok-if-rejected" in entrypoint(tmp_path / "c.yaml", Trigger("t", "drift", "why"))


def test_exit_4_promote_refuses_a_version_that_fails_verification(tmp_path, home):
    """A version registered without Ray (as tests/unit/test_registry.py does), one byte of it flipped in the
    store: ``raygbm promote`` refuses it with exit code 4 and the alias stays."""
    import shutil

    from raygbm.config import EvaluateConfig, RegistryConfig, TrainConfig, load_config
    from raygbm.data.preprocess import LocalRunner, preprocess
    from raygbm.registry.register import evaluate_and_register
    from raygbm.registry.store import Registry
    from raygbm.training.fit import Trained
    from raygbm.training.train import RunMeta, train_in_process
    from tests.helpers import flip_one_byte, store_file

    data = make_shards(tmp_path / "data", rows=3000, shards=1)
    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(data), "data.label": "label"})
    meta = RunMeta.load(preprocess(cfg, runner=LocalRunner()).run_dir)
    for rounds in (20, 2):  # v1 the champion, v2 a worse candidate
        train = TrainConfig(num_boost_round=rounds, early_stopping_rounds=None)
        evaluate_and_register(meta, Trained(train_in_process(meta, train), meta, None), train,
                              EvaluateConfig(permutation_rows=500), RegistryConfig(), None)
    reg = Registry()
    assert reg.get().version == "1"
    flip_one_byte(store_file(reg, "2"))
    shutil.rmtree(home / "models", ignore_errors=True)
    r = _run("promote", "2", home=home)
    assert r.returncode == 4, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: model v2 not promoted")
    r = _run("promote", "1", "--json", home=home)
    assert r.returncode == 0 and json.loads(r.stdout) == {"name": "raygbm", "version": "1", "champion": True}
    assert _run("promote", "9", home=home).returncode == 2  # no such version: bad input


def test_the_mapping_in_one_place():
    def raised_while(context: BaseException, error: Exception) -> Exception:
        try:
            try:
                raise context
            except BaseException:
                raise error from None
        except Exception as exc:
            return exc

    refused = urllib.error.URLError(ConnectionRefusedError(111, "refused"))
    assert exit_code(KeyError("bug")) == 1
    assert exit_code(RaygbmError("bad")) == exit_code(DataError("bad")) == 2
    assert exit_code(raised_while(FileNotFoundError(2, "no such file"), DataError("x"))) == 2
    assert exit_code(raised_while(refused, DataError("cannot reach"))) == 3
    assert exit_code(raised_while(TimeoutError("timed out"), DataError("cannot reach"))) == 3
    http = lambda code: urllib.error.HTTPError("http://x", code, "x", {}, None)  # noqa: E731
    assert exit_code(raised_while(http(503), DataError("x"))) == 3
    assert exit_code(raised_while(http(422), DataError("x"))) == 2
    assert exit_code(raised_while(refused, RuntimeError("a library's own error"))) == 3  # e.g. MLflow's
    assert exit_code(Rejected("x")) == exit_code(PromotionRefused("x")) == 4
    assert isinstance(PromotionRefused("x"), RegistryError)


# ---- the old spellings


def test_the_deprecated_spellings_still_work(tmp_path):
    home = tmp_path / "home"
    r = _run("generate", "--rows", "1000", "--shards", "2", "--out", str(tmp_path / "g"), home=home)
    assert r.returncode == 0 and len(list((tmp_path / "g").glob("*.parquet"))) == 2
    assert r.stderr.strip() == "warning: --out is deprecated, use --output"
    r = _run("predict", "--input", str(tmp_path / "g"), "--output", str(tmp_path / "o"), home=home)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "warning: --input is deprecated, use --data", "error: no champion model yet for 'raygbm': run `raygbm run` first"]
    r = _run("feedback", "--input", str(tmp_path / "nope.csv"), home=home)
    assert r.returncode == 2 and "nope.csv: no such file or folder" in r.stderr
    r = _run("predict", "--input", "a", "--data", "b", "--output", str(tmp_path / "o"), home=home)
    assert r.returncode == 2 and "give --data only (--input is its deprecated name)" in r.stderr
    for path in ("Makefile", "docs/data.md", "docs/training.md", "docs/http-api.md", "docs/monitoring.md",
                 "cluster/README.md", "cluster/local/submit.sh"):
        text = (ROOT / path).read_text()
        assert not re.search(r"raygbm generate [^\n]*--out\b|(predict|feedback)[^\n]*--input\b", text), path


# ---- loop status


def test_loop_status_speaks_to_a_person_and_gives_json_on_request(tmp_path, monkeypatch):
    from raygbm.monitoring.loop_state import LoopState, public

    home = tmp_path / "home"
    monkeypatch.setenv("RAYGBM_HOME", str(home))
    state = LoopState(home, "raygbm")
    assert CliRunner().invoke(app, ["loop", "status"]).stdout.splitlines() == ["triggers: none", "jobs: none",
                                                                               "decisions: none"]
    state.append("triggers", {"id": "drift-w3", "kind": "drift", "reason": "drift in 3 of 4 windows",
                              "outcome": "submitted", "job": "raygbm-retrain-raygbm-drift-w3"})
    state.set_job("raygbm-retrain-raygbm-drift-w3", status="SUCCEEDED", version="2", action="rejected")
    state.append("decisions", {"action": "rejected", "version": "2", "reason": "holdout roc_auc 0.70 does not beat v1"})
    result = CliRunner().invoke(app, ["loop", "status"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "triggers (1):" and "drift-w3 (drift: drift in 3 of 4 windows): submitted" in lines[1]
    assert "raygbm-retrain-raygbm-drift-w3 SUCCEEDED v2 rejected" in lines[3]
    assert lines[-1].endswith("v2 rejected: holdout roc_auc 0.70 does not beat v1")
    as_json = CliRunner().invoke(app, ["loop", "status", "--json"])
    assert json.loads(as_json.stdout) == json.loads(json.dumps(public(state.read())))
