"""``raygbm ui``: the MLflow UI over raygbm's store, from an environment of its own.

raygbm depends on mlflow-skinny, which has no UI server, and the full ``mlflow`` package pins pyarrow below
the version raygbm needs (``mlflow<=3.17`` needs ``pyarrow<26``; the first release that accepts pyarrow 26
needs an ``mlflow-skinny`` that is not published). So the UI runs from a separate virtual environment
holding the full ``mlflow`` at the installed mlflow-skinny's version (the same store schema). It is created
on first use, staged under a temporary name and renamed into place once it imports, so an interrupted
create is never used; later runs reuse it.

The server listens on 127.0.0.1 only, reads the embedded sqlite store under ``$RAYGBM_HOME`` (or the store
``MLFLOW_TRACKING_URI`` names) and serves the runs' artifacts from their ``file://`` artifact folders.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from raygbm.errors import RaygbmError
from raygbm.paths import home

HOST = "127.0.0.1"
ENV_VARIABLE = "RAYGBM_UI_ENV"  # where the UI's environment lives (default: under $RAYGBM_HOME)
READY_FILE = "raygbm-ui.json"  # written last into a complete environment: the requirement it holds
STARTUP_S = 180.0  # the server imports Flask, FastAPI and the store's migrations before it answers


class UIError(RaygbmError):
    """The UI cannot start: no store yet, a busy port, an environment that cannot be created."""


def requirement() -> str:
    """The full MLflow at the version of the mlflow-skinny raygbm writes the store with."""
    return f"mlflow=={version('mlflow-skinny')}"


def env_dir() -> Path:
    override = os.environ.get(ENV_VARIABLE)
    return Path(override).resolve() if override else home() / f"mlflow-ui-{version('mlflow-skinny')}"


def env_python(env: Path) -> Path:
    return env / "bin" / "python"


def is_ready(env: Path, wanted: str) -> bool:
    try:
        return json.loads((env / READY_FILE).read_text()).get("requirement") == wanted
    except (OSError, ValueError):
        return False


def ensure_env(env: Path, wanted: str, say: Callable[[str], None]) -> Path:
    """The UI's environment at ``env``, created if missing or made for another requirement. Creation is
    staged in ``<env>.partial`` and renamed into place once MLflow's server imports there; a lock file
    keeps two ``raygbm ui`` from building it at once. Returns the environment's python."""
    import fcntl

    if is_ready(env, wanted):
        return env_python(env)
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.with_name(env.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(env, wanted):  # built by another process while this one waited
            return env_python(env)
        stage = env.with_name(env.name + ".partial")
        shutil.rmtree(stage, ignore_errors=True)
        say(f"creating the MLflow UI's environment in {env} ({wanted}; once, a few minutes)")
        try:
            _run([sys.executable, "-m", "venv", str(stage)], "python -m venv")
            # --no-compile: pip would byte-compile every module of MLflow and its dependencies (half the
            # install's time).
            _run([str(env_python(stage)), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-compile",
                  wanted], "pip install")
            # The import check writes the bytecode of what the server loads, even where the caller's
            # PYTHONDONTWRITEBYTECODE would have every start compile MLflow from source again.
            _run([str(env_python(stage)), "-c", "import mlflow.server"], "import mlflow.server",
                 {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
        except UIError:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        (stage / READY_FILE).write_text(json.dumps({"requirement": wanted}))
        shutil.rmtree(env, ignore_errors=True)
        os.rename(stage, env)  # a venv runs from its new path: the server is started as `python -m mlflow`
    return env_python(env)


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        last = (r.stderr.strip() or r.stdout.strip() or f"exit code {r.returncode}").splitlines()[-1]
        raise UIError(f"creating the MLflow UI's environment failed at {what}: {last}")


def store_uri() -> str:
    """The store the UI reads: ``MLFLOW_TRACKING_URI`` or the embedded sqlite file (which must exist)."""
    from raygbm.registry.store import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UIError(f"no MLflow store at {uri[len('sqlite:///'):]} yet: run `raygbm run` first "
                      "(or set RAYGBM_HOME to the folder it used)")
    return uri


def check_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            raise UIError(f"port {port} on {HOST} is in use: pick another with --port") from None


def server_command(python: Path, uri: str, port: int) -> list[str]:
    """``mlflow server`` on 127.0.0.1 with one worker. Runs keep their ``file://`` artifact folders (the
    server reads them for the UI); experiments made in the UI store theirs under ``$RAYGBM_HOME``."""
    return [str(python), "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", HOST, "--port", str(port),
            "--workers", "1", "--artifacts-destination", (home() / "mlartifacts").as_uri()]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = STARTUP_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            raise UIError(f"the MLflow server stopped: {tail[0]} (log: {log})")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise UIError(f"the MLflow server did not answer within {timeout:.0f}s (log: {log})")


def stop(proc: subprocess.Popen) -> None:
    """The server and its workers (its own process group) stop; killed if they linger."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start(port: int, say: Callable[[str], None]) -> tuple[subprocess.Popen, str]:
    """Start the UI's server (creating its environment on first use); returns it once it answers, and its URL."""
    uri = store_uri()
    check_port(port)
    python = ensure_env(env_dir(), requirement(), say)
    log = home() / "logs" / "mlflow-ui.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(server_command(python, uri, port), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=home(), start_new_session=True)
    url = f"http://{HOST}:{port}"
    try:
        wait_healthy(url, proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc, url
