"""Stage 4, evaluate and register: test metrics, plots and a model card; MLflow tracking and registry;
the champion gate. Metric names, directions and computation are ``raygbm.metrics``.

- ``evaluate``: test metrics, importance (gain, permutation, SHAP), the decision threshold.
- ``plots`` and ``card``: the report's PNG plots, the model card (Markdown and HTML).
- ``bundle``: a registered model on disk (LightGBM text, preprocessor JSON, sha256 manifest) and loading it.
- ``mlflow_model`` and ``pyfunc_code``: the bundle as an MLflow pyfunc model, from code (no pickle).
- ``store``: the MLflow tracking store and model registry.
- ``gate``: the one champion gate (registration on the test split; the loop on recent labelled rows).
- ``register``: evaluate a trained model, write its bundle, log it, register it, move the champion alias.
"""
