"""raygbm: Parquet shards to a tuned LightGBM model and a monitored endpoint, on Ray.

Importing raygbm does nothing but define names: no Ray, no I/O, no logging set-up.
"""

from raygbm._version import __version__ as __version__

# The Python API (raygbm.api): loaded on first use, so that importing raygbm stays free.
_API = ("run", "load_model", "Model")


def __getattr__(name: str):  # noqa: ANN202 (PEP 562)
    if name in _API:
        from raygbm import api

        return getattr(api, name)
    raise AttributeError(f"module 'raygbm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
