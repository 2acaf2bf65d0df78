"""The head's failure under steady load, with GCS fault tolerance as KubeRay sets it up: the GCS keeps its
tables in an external Redis (Debian's redis-server; ``RAY_REDIS_ADDRESS`` on the head), the worker nodes
wait for it (``RAY_gcs_rpc_server_reconnect_timeout_s``), and the head comes back the way a restarted head
Pod does: every head process killed, then `ray start --head` again on the same Redis; that first restart is
made to crash, and the head is started once more, as Kubernetes restarts a Pod that failed.

The head runs no replicas (``num-cpus: 0``, as in the KubeRay manifests): the endpoint's replicas and
their proxies live on the two workers. A client sends requests with the token to the workers' proxies (a
load balancer's view) before, during and after the outage; the test prints the share answered in each
phase and checks Ray's documented promise (Serve keeps answering on the surviving nodes while the GCS is
down) and that the loop's controller comes back.

Runs in the cluster lane (its own pytest session): never two Ray instances on this host at once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.test_cluster_loop import AUTH, LOCAL, OVERRIDES, ROOT, TOKEN, Client, _call, _run
from tests.cluster.test_serve_cli import _ray_processes, _register_a_model
from tests.conftest import make_shards
from tests.corpora import records_of
from tests.helpers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]
GCS, DASHBOARD, SERVE_PORT, METRICS, REDIS = 6395, 8306, 8307, 8308, 6396
WORKER_PORTS = (SERVE_PORT + 10, SERVE_PORT + 11)
OUTAGE_S, PHASE_S = 20.0, 15.0


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _node_id(pid: int) -> str | None:
    """The node id a Ray process's command line names (raylets, agents, the Ray client server)."""
    try:
        m = re.search(rb"--node-id=([0-9a-f]+)", Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:  # gone
        return None
    return m.group(1).decode() if m else None


HEAD_RAYLET = "raylet/raylet .*node:__internal_head__"  # the raylet holding the head's own resource


def _worker_node_ids(head_raylets: list[int]) -> set[str]:
    """The node ids of the live raylets other than ``head_raylets``."""
    return {_node_id(p) for p in _pids("raylet/raylet") if p not in head_raylets} - {None}


def _head_pids() -> list[int]:
    """Every process of the head "Pod": its GCS, raylet (the one holding the head's own resource),
    dashboard and autoscaler monitor, and every process naming a node id that no worker raylet has (the
    head's agents and Ray client server, also those of a head whose raylet has already exited).

    Not by the head's temp dir: a node that joins takes the head's temp dir (``Node._init_temp``), so on
    this one host the workers' processes name it too. Killing by it took the workers down with a failed
    head start, and the loop's controller never came back (CI)."""
    head_raylets = _pids(HEAD_RAYLET)
    workers = _worker_node_ids(head_raylets)
    orphans = [p for p in _pids("node-id=[0-9a-f]") if _node_id(p) not in workers]
    return sorted(set(_pids("gcs_server") + head_raylets + _pids("dashboard/dashboard.py")
                      + _pids("autoscaler/_private/monitor.py") + orphans))


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # gone with a process killed before it
            pass


def _crash_the_starting_head() -> threading.Thread:
    """Kills the next head's dashboard agent as soon as it appears, before it writes its port file: the
    raylet fate-shares with its agent and never registers, and `ray start` fails ("The current node timed
    out during startup"), as a CI run's restarted head once did on its own."""

    def crash() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            workers = _worker_node_ids(_pids(HEAD_RAYLET))
            agents = [p for p in _pids("dashboard/agent.py") if _node_id(p) not in workers]
            if agents:
                _kill(agents)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=crash, daemon=True)
    thread.start()
    return thread


def _restart_head(head_env: dict[str, str], head_tmp: Path) -> int:
    """`ray start --head` again on the same Redis, as Kubernetes restarts a head Pod. The first start is
    made to fail (``_crash_the_starting_head``) and the head is started again, as a failed Pod is: that
    path once ran only when CI was slow, and then took the workers down with it. A third start is allowed
    (`ray start` gives the head's raylet a fixed 30 s to register, which a busy 2-core machine can miss).
    Only a failed start's processes are killed before the next (``_head_pids``).

    The temp dir is not emptied as a new Pod's would be: the workers on this host live in it too (their
    sockets and logs), and the restarted head takes the next free names there. Only the head's own record
    of the cluster it started goes (``ray_current_cluster``, ``ray._common.utils.get_ray_address_file``):
    with it, `ray start --head` finds the workers' raylets naming that GCS address and refuses ("already
    running"), which a head Pod, alone on its machine, never sees. Returns the number of starts; a third
    failure fails the test with the new head's GCS, raylet and agent logs."""
    from ray._common.utils import get_ray_address_file

    for attempt in (1, 2, 3):
        Path(get_ray_address_file(str(head_tmp))).unlink(missing_ok=True)
        crash = _crash_the_starting_head() if attempt == 1 else None
        try:
            _run([str(LOCAL / "start.sh")], head_env, timeout=180)
        except AssertionError as e:
            logs = _head_logs(head_tmp)
            _kill(_head_pids())  # what the failed start left running, and only that
            print(f"head start {attempt} failed:\n{str(e)[-300:]}")
            if attempt == 3:
                raise AssertionError(f"{e}\n{logs}") from None
        else:
            assert crash is None, "the head started though its agent was killed"
            return attempt
        finally:
            if crash is not None:
                crash.join()
    raise AssertionError("unreachable")


def _cluster_state(env: dict[str, str]) -> str:
    """What Serve and the GCS say of the app, the actors and the nodes (for a failed wait)."""
    env = {**env, "RAY_AUTH_MODE": "token", "PATH": f"{sys.prefix}/bin:{env['PATH']}"}
    address = f"http://127.0.0.1:{DASHBOARD}"
    out = []
    for cmd in (["serve", "status", "--address", address], ["ray", "list", "actors", "--address", address],
                ["ray", "list", "nodes", "--address", address]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
            out.append(f"--- {' '.join(cmd[:3])}\n{(done.stdout + done.stderr)[-4000:]}")
        except subprocess.TimeoutExpired:
            out.append(f"--- {' '.join(cmd[:3])}: no answer in 60 s")
    return "\n".join(out)


def _head_logs(temp_dir: Path) -> str:
    """The tails of the newest head's GCS, raylet and dashboard agent logs (what a failed restart leaves to
    read). The session's log directory is shared with the workers on this host; Ray names a node's log
    files with the next free index (``raylet.out``, ``raylet.1.out``, ...), so the newest is the highest."""
    logs = temp_dir / "session_latest" / "logs"

    def newest(stem: str, suffix: str) -> Path | None:
        found = [(0, p) if p.name == f"{stem}{suffix}" else (int(p.name[len(stem) + 1:-len(suffix)]), p)
                 for p in logs.glob(f"{stem}*{suffix}") if re.fullmatch(rf"{stem}(\.\d+)?{re.escape(suffix)}", p.name)]
        return max(found)[1] if found else None

    out = []
    for stem, suffix in (("gcs_server", ".out"), ("gcs_server", ".err"), ("raylet", ".out"), ("raylet", ".err"),
                         ("dashboard_agent", ".log")):
        path = newest(stem, suffix)
        if path is not None:
            out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
    return "\n".join(out) or f"no logs under {logs}"


class Phases:
    """The client's answers counted per phase (before, outage, after)."""

    def __init__(self, client: Client):
        self.client, self.marks = client, []

    def mark(self, name: str) -> None:
        self.marks.append((name, self.client.sent, self.client.failed))

    def shares(self) -> dict[str, tuple[int, int]]:
        out = {}
        for (name, sent, failed), (_, sent2, failed2) in zip(self.marks, self.marks[1:]):
            out[name] = (sent2 - sent, (sent2 - sent) - (failed2 - failed))
        return out


def test_serve_keeps_answering_while_the_heads_gcs_is_down_and_the_loop_comes_back(tmp_path, figure):
    from ray._common.network_utils import node_ip_address_from_perspective

    if shutil.which("redis-server") is None:
        if os.environ.get("RAYGBM_REDIS") == "required":  # CI (.ci/run installs it)
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        pytest.skip("needs Debian's redis-server (apt-get install redis-server)")
    wait_until(lambda: not _ray_processes(), 30, message="no other Ray on this host")
    node_ip = node_ip_address_from_perspective()
    home = tmp_path / "home"
    _register_a_model(home, tmp_path / "data")
    data = make_shards(tmp_path / "source", rows=3000, shards=1, seed=1)
    redis = subprocess.Popen(["redis-server", "--port", str(REDIS), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    env = {**os.environ, "RAYGBM_HOME": str(home), "RAY_PORT": str(GCS), "RAY_DASHBOARD_PORT": str(DASHBOARD),
           "RAY_METRICS_EXPORT_PORT": str(METRICS), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray-token"),
           "RAYGBM_VENV": sys.prefix, "RAYGBM_ENDPOINT_TOKEN": TOKEN, "RAY_NODE_IP_ADDRESS": node_ip,
           # GCS fault tolerance as KubeRay configures it: the GCS's tables in Redis, the raylets waiting for
           # a restarted GCS instead of exiting after their default 60 s.
           "RAY_external_storage_namespace": "raygbm-gcs-test", "RAY_gcs_rpc_server_reconnect_timeout_s": "120"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    # The head's temp dir, short (Ray's socket paths live in it); the workers joining it on this host take it
    # from the head, so it is the whole cluster's.
    head_tmp = Path(tempfile.mkdtemp(prefix="rayhead", dir="/tmp"))
    head_env = {**env, "RAY_NUM_CPUS": "0", "RAY_REDIS_ADDRESS": f"127.0.0.1:{REDIS}", "RAY_TEMP_DIR": str(head_tmp)}
    try:
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(REDIS), "ping"], capture_output=True,
                                          text=True).stdout.strip() == "PONG", 30, message="redis-server")
        _run([str(LOCAL / "start.sh")], head_env)
        for i, port in enumerate(WORKER_PORTS):
            _run([str(LOCAL / "join.sh")], {**env, "RAY_NUM_CPUS": "2", "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(port)})
        spec = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
        spec["http_options"]["port"] = SERVE_PORT
        spec["applications"][0]["args"]["set"] = [f"data.source={data}", *OVERRIDES,
                                                  "serve.autoscaling.min_replicas=2"]
        (tmp_path / "serve.yaml").write_text(yaml.safe_dump(spec))
        _run([str(LOCAL / "serve.sh"), str(tmp_path / "serve.yaml")], env, timeout=300)
        worker = f"http://127.0.0.1:{WORKER_PORTS[0]}"
        wait_until(lambda: all(_call(f"http://127.0.0.1:{p}/readyz")[0] == 200 for p in WORKER_PORTS), 120,
                   interval=1.0, message="both workers' proxies to answer")
        before = _call(f"http://127.0.0.1:{SERVE_PORT}/retrain", headers=AUTH)[1]["controller"]
        fields = list(_call(worker + "/model", headers=AUTH)[1]["request_schema"]["oneOf"][0]["properties"])
        import pyarrow.parquet as pq

        records = records_of(pq.read_table(data).slice(0, 500), fields)
        clients = [Client(f"http://127.0.0.1:{p}", records) for p in WORKER_PORTS]
        for c in clients:
            c.__enter__()
        phases = [Phases(c) for c in clients]
        try:
            for p in phases:
                p.mark("before")
            time.sleep(PHASE_S)  # steady load
            # The head "Pod" dies: its GCS, raylet (and so the Serve controller and the loop's controller on
            # it), dashboard and autoscaler monitor.
            # Every process of the head, its agents and Ray client server included (their command lines name the
            # head's node id; the workers' name the head's temp dir too): an agent left behind held the head's
            # metrics port, and the restarted head's agent, unable to bind it, took its raylet down
            # ("dashboard_agent failed and raylet fate-shares with it").
            assert _pids(HEAD_RAYLET), "no head raylet"
            _kill(_head_pids())
            t_down = time.monotonic()
            for p in phases:
                p.mark("outage")
            time.sleep(OUTAGE_S)
            starts = _restart_head(head_env, head_tmp)  # the head comes back on the same Redis
            t_up = time.monotonic()
            for p in phases:
                p.mark("recovery")
            try:
                resumed = wait_until(lambda: (d := _call(f"http://127.0.0.1:{SERVE_PORT}/retrain", headers=AUTH)[1])
                                     .get("controller", {}).get("ticks") and d["controller"]["pid"] != before["pid"]
                                     and d, 180, interval=1.0, message="the loop's controller back on the new head")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{_cluster_state(env)}\n{_head_logs(head_tmp)}") from None
            t_loop = time.monotonic()
            for p in phases:
                p.mark("after")
            time.sleep(PHASE_S)
            for p in phases:
                p.mark("end")
        finally:
            for c in clients:
                c.__exit__(None, None, None)
        totals: dict[str, list[int]] = {}
        for p in phases:
            for name, (sent, answered) in p.shares().items():
                t = totals.setdefault(name, [0, 0])
                t[0], t[1] = t[0] + sent, t[1] + answered
        share = {name: answered / max(sent, 1) for name, (sent, answered) in totals.items()}
        figure(f"gcs failure: head down {t_up - t_down:.0f}s ({starts} head start{'s' * (starts > 1)}), loop controller back {t_loop - t_up:.0f}s after "
              f"the head; " + "; ".join(f"{n}: {a}/{s} answered ({share[n]:.1%})" for n, (s, a) in totals.items()))
        if any(c.errors for c in clients):  # what the failed requests got, on the terminal with -s
            print("errors:", *{e.split(" ", 1)[1][:160] for c in clients for e in c.errors[:20]}, sep="\n  ")
        assert resumed["controller"]["alive"]
        assert share["before"] == 1.0 and share["after"] >= 0.99, share
        assert share["outage"] >= 0.99, share  # Ray's promise: Serve answers on the surviving nodes
    finally:
        subprocess.run([str(LOCAL / "stop.sh"), "--force"], env=env, capture_output=True, timeout=120)
        redis.kill()
        redis.wait()
        shutil.rmtree(head_tmp, ignore_errors=True)
