"""Errors a user can act on. The CLI prints them as one line and exits non-zero; anything else is a bug."""

from collections.abc import Iterator
from contextlib import contextmanager


class RaygbmError(Exception):
    """Base class: the message is complete, names the offending thing, and fits on one line."""


class ConfigError(RaygbmError):
    pass


class DataError(RaygbmError):
    """Bad input data: a missing, corrupt or mismatched shard, a missing column."""


class RegistryError(RaygbmError):
    """No such model or version, a tampered bundle, or an unreachable store."""


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Names the pipeline stage an unexpected exception came from, so the CLI's one-line report of a
    crash says where it happened. The innermost stage wins; a ``RaygbmError`` passes untouched."""
    try:
        yield
    except RaygbmError:
        raise
    except Exception as exc:
        if not hasattr(exc, "raygbm_stage"):
            try:
                exc.raygbm_stage = name  # type: ignore[attr-defined]
            except AttributeError:  # an exception type with __slots__
                pass
        raise


def stage_of(exc: BaseException) -> str | None:
    return getattr(exc, "raygbm_stage", None)
