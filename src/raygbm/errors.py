"""Errors a user can act on. The CLI prints them as one line and exits non-zero; anything else is a bug."""


class RaygbmError(Exception):
    """Base class: the message is complete, names the offending thing, and fits on one line."""


class ConfigError(RaygbmError):
    pass


class DataError(RaygbmError):
    """Bad input data: a missing, corrupt or mismatched shard, a missing column."""


class RegistryError(RaygbmError):
    """No such model or version, a tampered bundle, or an unreachable store."""


class stage:  # noqa: N801  (used as a context manager: ``with stage("register"): ...``)
    """Names the pipeline stage an unexpected exception came from: the CLI's one-line report of a crash
    says where it happened. The innermost stage wins; a ``RaygbmError`` passes untouched."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> "stage":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, RaygbmError) and not hasattr(exc, "raygbm_stage"):
            try:
                exc.raygbm_stage = self.name  # type: ignore[attr-defined]
            except AttributeError:  # an exception type with __slots__
                pass


def stage_of(exc: BaseException) -> str | None:
    return getattr(exc, "raygbm_stage", None)
