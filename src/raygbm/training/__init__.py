"""Stage 3, tune and train: LightGBM on Ray.

- ``train``: LightGBM parameters and datasets, in-process training and data-parallel Ray Train.
- ``tune``: the Ray Tune search (TPE or random, ASHA), resumable.
- ``fit``: the model that gets registered: one fit, feature selection, the comparison with LightGBM's defaults.
- ``direction``: which value of a metric is better.
"""
