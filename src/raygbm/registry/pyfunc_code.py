"""The python model of a raygbm bundle saved as an MLflow Model ("models from code", see
``raygbm.registry.mlflow_model``).

MLflow copies this file into the model's folder and runs it when the model loads; it then sits beside the
bundle's files, which ``load_context`` loads (sha256-checked against the manifest). Run as part of the
raygbm package it only defines the class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel


class BundleModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from raygbm.registry.mlflow_model import BundleScorer

        self._scorer = BundleScorer.load(Path(__file__).resolve().parent)

    # A DataFrame hint: MLflow validates against the saved signature rather than inferring one from hints.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self._scorer.predict(model_input)


if not __name__.startswith("raygbm."):  # run by MLflow (saving or loading the model), not imported
    from mlflow.models import set_model

    set_model(BundleModel())
