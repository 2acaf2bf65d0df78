"""The python model of a raygbm bundle saved as an MLflow Model ("models from code", see
``raygbm.registry.mlflow_model``).

MLflow copies this file into the model's folder and runs it when the model loads; it then sits beside the
bundle's files, which ``load_context`` loads (sha256-checked against the manifest). Run as part of the
raygbm package it only defines the class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel


class BundleModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from raygbm.registry.mlflow_model import BundleScorer

        self._scorer = BundleScorer.load(Path(__file__).resolve().parent)

    # No type hints: MLflow would read them as the input's schema; the saved signature is that schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return self._scorer.predict(model_input)


if not __name__.startswith("raygbm."):  # run by MLflow (saving or loading the model), not imported
    from mlflow.models import set_model

    set_model(BundleModel())
