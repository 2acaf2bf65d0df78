"""Stage 3, tune and train: LightGBM on Ray.

- ``train``: LightGBM parameters and datasets, in-process training and data-parallel Ray Train.
- ``tune``: the Ray Tune search (TPE or random, ASHA), resumable; ``budget``: its time budget.
- ``select``: the validation scheme by size (CV folds, grouped and stratified, or the validation split).
- ``fit``: the model that gets registered: one fit, feature selection, the comparison with LightGBM's defaults.
- ``ensemble``: fold models averaged into one LightGBM text model.
- ``finished``: a finished training kept on disk, so a re-run registers it instead of training again.
- ``faults``: fault injection for the recovery tests (a killed worker, slowed rounds).
"""
