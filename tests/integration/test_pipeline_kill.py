"""`raygbm run` SIGKILLed in each stage (data, tune, train, register) and run again: each re-run resumes
from the last finished stage, the last one ends with the same registered model as an uninterrupted run,
and no half-written artifact is visible at any point.

One chain keeps it cheap: the first run is killed in the data stage, its re-run in tune, the next in
train, the next in register, and the last re-run finishes. A watcher thread scans the state home all
along; the registry is checked after every kill. Prints ``FAULT pipeline-kill stage=... resumed=...
same_model=...`` per stage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from raygbm.errors import RegistryError
from raygbm.registry.bundle import MANIFEST_FILE, MODEL_FILE, verify_bundle
from raygbm.registry.store import Registry
from tests.conftest import make_shards
from tests.helpers import raygbm_home, wait_until

pytestmark = pytest.mark.slow

# Trials of a few seconds (no early stopping) so a kill lands inside the search after one has finished.
SETS = ["data.drop=[id]", "tune.trials=3", "tune.asha=false", "tune.cv_folds=null", "train.num_boost_round=300",
        "train.early_stopping_rounds=300", "train.report_every=10",
        "resources.max_concurrent_trials=1", "evaluate.permutation_rows=500"]
# The stage a progress line belongs to (the first line of each stage in `raygbm run`'s output).
STAGE_STARTS = {"data": "transforming and writing splits", "tune": "tuning:", "train": "selection by",
                "register": "evaluating on the test split"}
# Where each kill lands: register is killed once it starts writing to MLflow (after the evaluation).
KILL_AT = {**STAGE_STARTS, "register": "logging to MLflow and registering"}
# What a re-run prints for each stage finished before the kill.
REUSED = {"data": "reusing finished run", "tune": "reusing finished search", "train": "reusing finished training"}
ORDER = ["data", "tune", "train", "register"]


def _cli(data: Path, home: Path, out: Path) -> subprocess.Popen:
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAYGBM_HOME": str(home),
           "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    args = [a for s in SETS for a in ("--set", s)]
    with out.open("wb") as f:  # a file, not a pipe nobody reads while the run goes on
        return subprocess.Popen([str(Path(sys.executable).with_name("raygbm")), "run", "--data", str(data),
                                 "--label", "label", *args], env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stage_running(out: Path) -> str | None:
    """The stage of the last progress line printed so far."""
    stage = None
    for line in out.read_text(errors="replace").splitlines():
        stage = next((s for s, start in STAGE_STARTS.items() if start in line), stage)
    return stage


def _kill_ready(stage: str, out: Path, home: Path) -> bool:
    """The moment to kill: the stage's line printed; in tune also a trial recorded as finished in Tune's
    saved state (so there is a search to restore); in register also the bundle uploaded (the version is
    created next)."""
    if KILL_AT[stage] not in out.read_text(errors="replace"):
        return False
    if stage == "tune":
        states = sorted(home.glob("tune/tune-*/experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
        return bool(states) and "TERMINATED" in states[-1].read_text()
    if stage == "register":
        return any(home.glob("mlartifacts/**/artifacts/model"))
    return True


def _kill_in(stage: str, proc: subprocess.Popen, out: Path, home: Path) -> str:
    """SIGKILL the run (its whole process group) once ``stage`` runs: at the line ``KILL_AT`` names, and in
    tune once a trial has finished (so there is a search to restore). Returns the stage the last progress
    line names at the kill."""
    def ready() -> bool:
        if proc.poll() is not None:
            return True
        return _kill_ready(stage, out, home)

    try:
        wait_until(ready, 240, interval=0.05, message=f"the {stage} stage to start")
        assert proc.poll() is None, f"the run ended before its {stage} stage:\n{out.read_text()[-3000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return _stage_running(out) or ""


class Watcher:
    """Scans the state home while runs go on: every visible (not hidden) data run, finished training and
    MLflow bundle must be whole. Tune's own folder is Tune's (only its best.json, written by rename, is ours)."""

    def __init__(self, home: Path):
        self.home, self.scans, self.problems = home, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.problems.extend(half_written(self.home))
            self.scans += 1
            self._stop.wait(0.05)


def half_written(home: Path) -> list[str]:
    """Visible artifacts that are not whole (hidden and staging names are allowed to be partial)."""
    problems: list[str] = []
    for run in home.glob("runs/preprocess-*"):  # a data run appears by rename: manifest and files whole
        manifest = json.loads((run / "manifest.json").read_text())
        missing = [f for f in manifest["sha256"] if not (run / f).exists()]
        problems += [f"{run}: {f} missing" for f in missing]
    for kept in home.glob("trained/train-*"):
        if not (kept / "trained.json").exists() or not (kept / MODEL_FILE).exists():
            problems.append(f"{kept}: incomplete")
        else:
            json.loads((kept / "trained.json").read_text())
    for bundle in home.glob("mlartifacts/**/artifacts/model"):
        try:
            verify_bundle(bundle, None)
        except RegistryError as exc:
            problems.append(str(exc))
    for best in home.glob("tune/tune-*/best.json"):
        json.loads(best.read_text())
    return problems


def registry_state(home: Path) -> list[tuple[str, bool, bool]]:
    """Every registered version as (version, published, champion), each verified against its pinned
    hash in the artifact store (a version without its whole bundle fails here)."""
    with raygbm_home(home):
        reg = Registry()
        out = []
        for ref in reg.versions():
            reg.download(ref, home.parent / f"check-{home.name}-{ref.version}")
            out.append((ref.version, ref.tags.get("published") == "true", "champion" in ref.aliases))
        return out


def _champion_bundle(home: Path) -> str:
    """The champion's model text, without the thread count LightGBM records among its parameters: that
    is compute sizing (the CPUs free when the model was fitted), not the model, and every tree is the same."""
    with raygbm_home(home):
        reg = Registry()
        path = reg.download(reg.get(), home.parent / f"champion-{home.name}")
        lines = (path / MODEL_FILE).read_text().splitlines()
        return "\n".join(line for line in lines if not line.startswith("[num_threads: "))


def _differing_files(a: Path, b: Path) -> list[str]:
    """Files of two downloaded champion bundles whose sha256 differ (from their manifests)."""
    ma, mb = (json.loads((p / MANIFEST_FILE).read_text())["sha256"] for p in (a, b))
    return sorted(f for f in set(ma) | set(mb) if ma.get(f) != mb.get(f))


def test_pipeline_killed_in_each_stage_resumes_and_registers_the_same_model(tmp_path):
    data = make_shards(tmp_path / "data", rows=20_000, shards=2, seed=11)

    base_home, base_out = tmp_path / "uninterrupted", tmp_path / "uninterrupted.out"
    proc = _cli(data, base_home, base_out)
    assert proc.wait(600) == 0, base_out.read_text()[-3000:]
    expected = _champion_bundle(base_home)

    home = tmp_path / "killed"
    outputs: list[str] = []
    landed: dict[str, str] = {}
    left: dict[str, list] = {}  # the registry right after each kill
    with Watcher(home) as watcher:
        for i, stage in enumerate(ORDER):
            out = tmp_path / f"run-{i}.out"
            landed[stage] = _kill_in(stage, _cli(data, home, out), out, home)
            outputs.append(out.read_text())
            assert half_written(home) == []
            state = left[stage] = registry_state(home)
            # A kill in register may leave a version (with its whole bundle) not yet published, never two.
            assert len(state) <= 1 and all(not champion or published for _, published, champion in state), state
        out = tmp_path / "run-last.out"
        proc = _cli(data, home, out)
        assert proc.wait(600) == 0, out.read_text()[-3000:]
        outputs.append(out.read_text())
    assert watcher.scans > 20 and watcher.problems == []

    final = registry_state(home)
    same_model = _champion_bundle(home) == expected and final == [("1", True, True)]
    for i, stage in enumerate(ORDER):
        rerun = outputs[i + 1]
        # Every stage finished before the killed one is reused; the killed one resumes or starts again.
        reused = all(REUSED[s] in rerun for s in ORDER[:ORDER.index(stage)])
        resumed = reused and (stage != "tune" or "resuming interrupted search" in rerun)
        print(f"FAULT pipeline-kill stage={stage} killed_in={landed[stage]} resumed={'yes' if resumed else 'no'} "
              f"same_model={'yes' if same_model else 'no'} versions_left_by_kill={len(left[stage])} "
              f"half_written=0 scans={watcher.scans}")
        assert landed[stage] == stage and resumed, (stage, landed[stage], rerun[-2000:])
    assert same_model, (final, _differing_files(tmp_path / "champion-uninterrupted", tmp_path / "champion-killed"),
                        outputs[-1][-2000:])
    assert "the same model is registered as v1" in outputs[-1] or "logging to MLflow" in outputs[-1]
