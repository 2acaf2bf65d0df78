"""Stage 4, evaluate and register: test metrics, plots and a model card; MLflow tracking and registry;
the champion gate.

- ``evaluate``: metrics, importance, plots, the model card.
- ``bundle``: a registered model on disk (LightGBM text, preprocessor JSON, sha256 manifest) and loading it.
- ``store``: the MLflow tracking store and model registry.
- ``gate``: whether a new model replaces the champion.
- ``register``: evaluate a trained model, log it, register it, move the champion alias.
"""
