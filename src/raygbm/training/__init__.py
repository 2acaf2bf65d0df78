"""Stage 3, tune and train: LightGBM on Ray.

- ``train``: LightGBM parameters and datasets, in-process training and data-parallel Ray Train.
- ``tune``: the Ray Tune search (TPE or random, ASHA), resumable.
- ``fit``: the model that gets registered: one fit, feature selection, the comparison with LightGBM's defaults.
- ``faults``: fault injection for the recovery tests (a killed worker, slowed rounds).
"""
