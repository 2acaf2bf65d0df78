"""Stages 1 and 2, data and features: Parquet shards read by Ray tasks, validated, profiled and split
deterministically; the preprocessor fitted on training rows only.

- ``schema``: shard discovery, schema checks across shards, column roles.
- ``stats``: mergeable per-block column statistics.
- ``split``: deterministic row assignment to train / validation / test (hashed or by time).
- ``task``: which task a label means (binary, multiclass, regression).
- ``features``: the ``Preprocessor`` (saved as JSON; the same transform in batch and in the endpoint).
- ``preprocess``: the stage itself, on Ray tasks (or locally), staged and renamed into a run folder.
- ``generate``: synthetic shards with known structure and optional drift, for demos, tests and benches.
"""
