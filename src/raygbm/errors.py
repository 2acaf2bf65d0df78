"""Errors a user can act on. The CLI prints them as one line and exits non-zero; anything else is a bug."""


class RaygbmError(Exception):
    """Base class: the message is complete, names the offending thing, and fits on one line."""


class ConfigError(RaygbmError):
    pass


class DataError(RaygbmError):
    """Bad input data: a missing, corrupt or mismatched shard, a missing column."""


class RegistryError(RaygbmError):
    """No such model or version, a tampered bundle, or an unreachable store."""
