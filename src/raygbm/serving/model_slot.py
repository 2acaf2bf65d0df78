"""The model a replica serves: which registered version, loaded and verified, and how it changes.

A deployment names its model in Serve's ``user_config``, a ``ModelSpec`` (model name, version, pinned
manifest hash, tracking URI, home, whether it follows "the champion", whether the monitor gets its rows). :class:`ModelSlot` loads and verifies that
version *beside* the current one and only then switches, so a request holds the model it started with
and none fails during a swap. Deployed as "the champion", the slot also follows the registry's alias.
Plain Python (threads, no Ray): unit-tested against a real MLflow store.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from raygbm.errors import RaygbmError
from raygbm.registry.bundle import Bundle
from raygbm.serving.request import RequestError, RequestSchema


@dataclass(frozen=True)
class ModelSpec:
    """The model a deployment serves. It travels as Serve's ``user_config`` (a JSON object, which Serve
    compares to decide whether replicas need a ``reconfigure``) and is read back here, checked."""

    model_name: str
    version: str
    tracking_uri: str
    home: str
    manifest_sha256: str | None = None  # pinned: the bundle must match it
    follow: bool = False  # deployed as "the champion": replicas follow the alias
    monitor: bool = True  # scored rows go to the drift monitor (false pauses it without a restart)

    def to_user_config(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, user_config: "ModelSpec | dict[str, Any]") -> "ModelSpec":
        if isinstance(user_config, ModelSpec):
            return user_config
        unknown = sorted(set(user_config) - {f.name for f in fields(cls)})
        missing = sorted(f.name for f in fields(cls) if f.default is MISSING and f.name not in user_config)
        if unknown or missing:
            raise RaygbmError(f"user_config: unknown key(s) {unknown}, missing key(s) {missing}")
        return cls(**user_config)


@dataclass
class ServedModel:
    """A loaded bundle as a replica serves it: the request schema and the drift reference with it."""

    name: str
    version: str
    bundle: Bundle  # booster, preprocessor, metrics, threshold, prediction mapping
    schema: RequestSchema
    reference: dict[str, Any] | None  # None: the bundle has no drift reference: served, not monitored

    @property
    def booster(self) -> Any:
        return self.bundle.booster

    @property
    def names(self) -> list[str]:
        return self.bundle.booster.feature_name()

    def results(self, scores: np.ndarray, ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Per record: prediction (the label's own value), score, its id (``new_ids``); and class
        probabilities for multiclass. The same mapping as the batch path (``Bundle.labelled``)."""
        prediction, score = self.bundle.labelled(scores)
        ids = ids if ids is not None else new_ids(len(prediction))
        out = [{"prediction": p, "score": s, "prediction_id": i}
               for p, s, i in zip(prediction, score.tolist(), ids)]
        if self.bundle.task == "multiclass":
            for o, row in zip(out, scores.tolist()):
                o["probabilities"] = row
        return out

    def table_matrix(self, table: pa.Table) -> np.ndarray:
        """Raw rows of a request table → the booster's feature matrix (a bad table is a 422)."""
        from raygbm.registry.evaluate import features_matrix

        try:
            feats = self.bundle.features(table)
        except RaygbmError as exc:
            raise RequestError(str(exc), 422) from None
        return features_matrix(self.booster, feats)

    def prediction_table(self, scores: np.ndarray, ids: pa.Array | None = None) -> pa.Table:
        prediction, score = self.bundle.predictions(scores)
        cols = {"prediction": prediction, "score": score}
        return pa.table({**cols, "prediction_id": ids} if ids is not None else cols)

    def loop_spec(self) -> dict[str, Any]:
        """What the monitor's prediction log needs: the raw fields and their training types, the label
        (``loop.feedback.LabelSpec``) and the binary threshold."""
        from raygbm.monitoring.feedback import LabelSpec

        types = self.bundle.preprocessor.schema.types
        return {"fields": list(self.schema.fields), "types": {f: types[f] for f in self.schema.fields if f in types},
                "label": LabelSpec.of(self.bundle.preprocessor).to_json(), "threshold": self.bundle.threshold}

    def info(self) -> dict[str, Any]:
        """What ``GET /model`` says about the model itself."""
        b = self.bundle
        return {"name": self.name, "version": self.version, "task": b.task, "metrics": b.metrics,
                "classes": b.preprocessor.label_classes_, "threshold": b.threshold,
                "request_schema": self.schema.json_schema()}


def new_ids(n: int) -> list[str]:
    """Prediction ids of ``n`` records (one random id each)."""
    return [uuid.uuid4().hex for _ in range(n)]


def table_ids(n: int) -> pa.Array:
    """Prediction ids of a table's ``n`` rows: one random id for the table, then ``.<row>``."""
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(pa.scalar(uuid.uuid4().hex + "."), pc.cast(pa.array(np.arange(n)), pa.string()), "")


def load_served_model(spec: ModelSpec, max_rows: int) -> ServedModel:
    """Fetch the bundle from the registry (cached locally) and verify it against the pinned manifest hash."""
    from raygbm.config import RegistryConfig
    from raygbm.monitoring.reference import REFERENCE_FILE, with_labels
    from raygbm.registry.store import Registry, local_bundle

    # Explicit store and cache: a replica's environment is the cluster's, not the deploying CLI's.
    reg = Registry(RegistryConfig(model_name=spec.model_name), uri=spec.tracking_uri)
    ref, path = local_bundle(reg, spec.version, Path(spec.home) / "models")
    pinned = spec.manifest_sha256
    if pinned and ref.tags.get("manifest_sha256") != pinned:
        raise RaygbmError(f"model v{ref.version}: registry manifest hash differs from the one deployed")
    bundle = Bundle.load(path, pinned)
    reference = json.loads((path / REFERENCE_FILE).read_text()) if (path / REFERENCE_FILE).exists() else None
    if reference is not None:  # category values and the decision threshold, for GET /drift's readers
        reference = with_labels(reference, bundle.preprocessor.categories_,
                                bundle.threshold if bundle.task == "binary" else None)
    return ServedModel(ref.name, ref.version, bundle, RequestSchema(bundle.preprocessor, max_rows), reference)


class ChampionLookup:
    """The registry's current champion for a deployed ``ModelSpec`` (one registry client kept per model
    name and store)."""

    def __init__(self) -> None:
        self._registry: Any = None
        self._key: tuple[str, str] | None = None

    def __call__(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` pointed at the current champion (unchanged if there is none or it is the same)."""
        from raygbm.config import RegistryConfig
        from raygbm.registry.store import Registry

        key = (spec.model_name, spec.tracking_uri)
        if self._key != key:
            self._registry = Registry(RegistryConfig(model_name=key[0]), uri=key[1])
            self._key = key
        ref = self._registry.get(None)
        if ref is None or ref.version == spec.version:
            return spec
        return replace(spec, version=ref.version, manifest_sha256=ref.tags.get("manifest_sha256"))


class ModelSlot:
    """The current model of one replica, switched under a lock.

    ``poll_s`` > 0 lets a slot deployed as "the champion" (``follow: true``) follow the registry's alias;
    ``on_switch`` runs (under the lock) after each switch, e.g. to hand the drift monitor the new reference.
    """

    def __init__(self, max_rows: int, poll_s: float, on_switch: Callable[[ServedModel], None] | None = None,
                 loader: Callable[[ModelSpec, int], ServedModel] = load_served_model):
        self.max_rows, self.poll_s = max_rows, poll_s
        self.on_switch = on_switch
        self.loader = loader
        self.model: ServedModel | None = None
        self.spec: ModelSpec | None = None
        self.champion_check: dict[str, Any] = {"checked_at": None, "error": None}
        self.champion = ChampionLookup()
        self._lock = threading.Lock()

    @property
    def version(self) -> str | None:
        return self.model.version if self.model is not None else None

    def follows(self, spec: ModelSpec | None = None) -> bool:
        """Deployed as "the champion" (and following is on)."""
        spec = self.spec if spec is None else spec
        return spec is not None and spec.follow and self.poll_s > 0

    def reconfigure(self, user_config: ModelSpec | dict[str, Any]) -> None:
        """Serve the model ``user_config`` names: load and verify it, then switch (a failure keeps the
        current model and raises)."""
        spec = ModelSpec.of(user_config)
        if self.follows(spec):
            # A replica started after a promotion (autoscaling, a restart) gets the deployment's original
            # user_config: start on the alias's current version, like its peers.
            try:
                spec = self.champion(spec)
            except Exception:
                pass  # unreachable registry: serve what was deployed; the follower retries
        with self._lock:
            self.spec = spec
            if spec.version != self.version:
                self._switch(self.loader(spec, self.max_rows))

    def check_champion(self) -> None:
        """One step of following: when the alias has moved, load and verify that version beside the
        current one, then switch. A failed check keeps the current model and is kept in ``champion_check``."""
        spec = self.spec
        if spec is None or not self.follows(spec):
            return
        try:
            target = self.champion(spec)
            if target.version != self.version:
                model = self.loader(target, self.max_rows)
                with self._lock:
                    if self.spec is spec:  # no redeploy or pinning happened meanwhile
                        self.spec = target
                        self._switch(model)
            self.champion_check = {"checked_at": time.time(), "error": None}
        except Exception as exc:
            self.champion_check = {"checked_at": time.time(), "error": f"{type(exc).__name__}: {exc}"}

    def start_following(self) -> threading.Thread | None:
        """Check the alias every ``poll_s`` seconds in a daemon thread: registry calls and model loading
        block, and the replica's event loop must keep answering with the current model meanwhile."""
        if self.poll_s <= 0:
            return None

        def follow() -> None:
            while True:
                time.sleep(self.poll_s)
                self.check_champion()

        thread = threading.Thread(target=follow, name="raygbm-champion", daemon=True)
        thread.start()
        return thread

    def _switch(self, model: ServedModel) -> None:
        self.model = model
        if self.on_switch is not None:
            self.on_switch(model)
