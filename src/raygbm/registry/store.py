"""MLflow tracking and the model registry.

The store is ``MLFLOW_TRACKING_URI`` when set (any remote tracking server), else an embedded sqlite file
and artifact folder under ``$RAYGBM_HOME`` (no server to start). A model is registered as a *bundle*
(``raygbm.registry.bundle``); the sha256 of its manifest is stored as a tag on the model version, and every
bundle downloaded is verified against it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raygbm.config import RegistryConfig
from raygbm.errors import (  # RegistryError also importable from here, where callers expect it
    PromotionRefused,
    RegistryError,
    TrackingUnreachable,
    connection_failure,
)
from raygbm.metrics import DEFAULT_GATE_METRIC, gate_metric
from raygbm.paths import home
from raygbm.registry.bundle import verify_bundle

CHAMPION = "champion"
BUNDLE_PATH = "model"  # artifact path of the bundle inside an MLflow run


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home().resolve() / 'mlflow.db'}"


def silence_mlflow_logging() -> None:
    # MLflow logs schema migrations and experiment creation at INFO on first use, and draws a progress
    # bar for every artifact download.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@dataclass
class ModelRef:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]
    aliases: list[str]

    @property
    def gate_metric(self) -> str:
        """The metric this version was gated on (its task's default where the tag is missing)."""
        task = self.tags.get("task")
        if not self.tags.get("gate_metric") and task not in DEFAULT_GATE_METRIC:
            raise RegistryError(f"model version {self.version} has neither a gate_metric nor a task tag")
        return gate_metric(task or "", self.tags.get("gate_metric"))


class Registry:
    """Thin wrapper over ``MlflowClient`` for one registered model name."""

    def __init__(self, config: RegistryConfig | None = None, uri: str | None = None):
        self.config = config or RegistryConfig()
        self._uri = uri  # default: MLFLOW_TRACKING_URI or the embedded store under RAYGBM_HOME

    # ---- connection

    @property
    def uri(self) -> str:
        """The tracking and registry store's URI (the client's, once connected)."""
        return self._client_uri if hasattr(self, "_client") else (self._uri or tracking_uri())

    @property
    def client(self) -> Any:
        if not hasattr(self, "_client"):
            silence_mlflow_logging()
            from mlflow import MlflowClient

            uri = self._uri or tracking_uri()
            if uri.startswith("sqlite:///"):
                home().mkdir(parents=True, exist_ok=True)
            self._client_uri = uri
            self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return self._client

    def experiment_id(self) -> str:
        c = self.client
        exp = c.get_experiment_by_name(self.config.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            location = (home().resolve() / "mlartifacts").as_uri()
        try:
            return c.create_experiment(self.config.experiment, artifact_location=location)
        except Exception:  # created concurrently by another process
            exp = c.get_experiment_by_name(self.config.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    # ---- runs

    def start_run(self, run_name: str, tags: dict[str, str] | None = None, parent: str | None = None) -> str:
        all_tags = dict(tags or {})
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=all_tags)
        return run.info.run_id

    def log(self, run_id: str, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
            step: int = 0) -> None:
        import time

        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        ms = [Metric(k.replace("@", "_at_"), float(v), now, step) for k, v in (metrics or {}).items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, max(len(ps), len(ms), 1), 100):
            self.client.log_batch(run_id, metrics=ms[i:i + 100], params=ps[i:i + 100])

    def log_history(self, run_id: str, key: str, history: list[list[float]]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(key, float(v), now, int(step)) for step, v in history]
        for i in range(0, len(ms), 500):
            self.client.log_batch(run_id, metrics=ms[i:i + 500])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        """Upload a folder as ``artifact_path`` of a run. In a local (``file:``) store the folder is copied
        under a hidden name and renamed into place, so a crash mid-copy leaves no partial file under the
        run's artifacts; a remote store writes each object whole, and the bundle's manifest hash covers the set."""
        uri = self.client.get_run(run_id).info.artifact_uri
        if not uri.startswith("file:"):
            self.client.log_artifacts(run_id, str(local_dir), artifact_path)
            return
        from mlflow.utils.file_utils import local_file_uri_to_path

        dest = Path(local_file_uri_to_path(uri)) / artifact_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.with_name(f".staging-{dest.name}-{uuid.uuid4().hex[:8]}")
        try:
            shutil.copytree(local_dir, staging)
            if dest.exists():  # a resumed registration logs the report again
                shutil.rmtree(dest)
            os.rename(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    # ---- the registry

    def register(self, run_id: str, manifest_sha256: str, tags: dict[str, str]) -> ModelRef:
        from mlflow.exceptions import MlflowException

        c = self.client
        name = self.config.model_name
        try:
            c.create_registered_model(name, description="raygbm model bundles (LightGBM text + preprocessor JSON)")
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        source = f"{c.get_run(run_id).info.artifact_uri}/{BUNDLE_PATH}"
        mv = c.create_model_version(name, source, run_id=run_id, tags={**tags, "manifest_sha256": manifest_sha256})
        return self._ref(mv)

    def _ref(self, mv: Any) -> ModelRef:
        return ModelRef(mv.name, str(mv.version), mv.run_id, dict(mv.tags or {}), list(getattr(mv, "aliases", []) or []))

    def get(self, version: str | None = None) -> ModelRef | None:
        """A version by number, or the champion (``None`` or ``"champion"``); None if there is no champion."""
        from mlflow.exceptions import MlflowException

        name = self.config.model_name
        try:
            if version is None or version == CHAMPION:
                mv = self.client.get_model_version_by_alias(name, CHAMPION)
            else:
                mv = self.client.get_model_version(name, str(version))
        except MlflowException as exc:
            not_found = str(exc.error_code) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")
            if not not_found:
                raise self._store_error(exc) from None
            if version in (None, CHAMPION):
                return None
            raise RegistryError(f"model {name!r} version {version}: not found in {self.uri}") from None
        return self._ref(mv)

    def _store_error(self, exc: Any) -> RegistryError:
        """An MLflow failure as one line: ``TrackingUnreachable`` (exit code 3) when the tracking server
        could not be reached, else ``RegistryError``."""
        if connection_failure(exc) is not None:
            return TrackingUnreachable(f"cannot reach the MLflow tracking server at {self.uri}: "
                                       f"{_reason(connection_failure(exc))}")
        return RegistryError(f"model registry {self.uri}: {exc.message}")

    def versions(self) -> list[ModelRef]:
        """Every version of the model, newest first (empty if the model was never registered)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{self.config.model_name}'")
        except MlflowException as exc:
            raise self._store_error(exc) from None
        champion = self.get()
        refs = [self._ref(mv) for mv in found]
        for r in refs:  # search results do not always carry aliases
            if champion is not None and r.version == champion.version and CHAMPION not in r.aliases:
                r.aliases.append(CHAMPION)
        return sorted(refs, key=lambda r: -int(r.version))

    def set_tags(self, ref: ModelRef, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(ref.name, ref.version, k, str(v))

    def promote(self, ref: ModelRef) -> None:
        """Move the champion alias to ``ref`` once its bundle, fetched from the store, matches its pinned
        manifest hash (a tampered or incomplete version is refused with ``RegistryError``)."""
        tmp = Path(tempfile.mkdtemp(prefix="raygbm-promote-"))
        try:
            self.download(ref, tmp / "bundle")
        except RegistryError as exc:
            raise PromotionRefused(f"model v{ref.version} not promoted: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.client.set_registered_model_alias(ref.name, CHAMPION, ref.version)

    def find(self, manifest_sha256: str) -> ModelRef | None:
        """The version registered for this very bundle (by its manifest hash), if any: an earlier run of
        the same model, or one interrupted before it finished publishing."""
        return next((r for r in self.versions() if r.tags.get("manifest_sha256") == manifest_sha256), None)

    def close_unfinished_runs(self, tag: str, value: str) -> int:
        """Mark runs still RUNNING with ``tag = value`` as KILLED (an interrupted registration left them);
        returns how many."""
        found = self.client.search_runs([self.experiment_id()],
                                        f"tags.`{tag}` = '{value}' and attributes.status = 'RUNNING'")
        for run in found:
            self.end_run(run.info.run_id, "KILLED")
        return len(found)

    def download(self, ref: ModelRef, dest: Path | None = None) -> Path:
        """The bundle of a version in a local folder, verified against its pinned manifest."""
        from mlflow.artifacts import download_artifacts

        dest = Path(dest or tempfile.mkdtemp(prefix="raygbm-model-"))
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=dest.parent))
        try:
            path = Path(download_artifacts(run_id=ref.run_id, artifact_path=BUNDLE_PATH, dst_path=str(tmp),
                                           tracking_uri=self.uri))
            verify_bundle(path, ref.tags.get("manifest_sha256"))
            os.rename(path, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest


def _reason(exc: BaseException) -> str:
    """The innermost cause of a connection failure, in a few words (urllib3 nests it in its messages)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rsplit(": ", 1)[-1][:200] if "Errno" in text else text[:200]


def local_bundle(registry: Registry, version: str | None = None, cache_root: Path | None = None) -> tuple[ModelRef, Path]:
    """A verified local copy of a version (cached under ``$RAYGBM_HOME/models`` by version)."""
    ref = registry.get(version)
    if ref is None:
        raise RegistryError(f"no champion model yet for {registry.config.model_name!r}: run `raygbm run` first")
    cache = (cache_root or home() / "models") / registry.config.model_name / ref.version
    if cache.exists():
        try:
            verify_bundle(cache, ref.tags.get("manifest_sha256"))
            return ref, cache
        except RegistryError:
            shutil.rmtree(cache)
    return ref, registry.download(ref, cache)
