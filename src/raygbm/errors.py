"""Errors a user can act on. The CLI prints them as one line and exits with the error's ``exit_code``;
anything else is a bug (exit code 1, the traceback in a log file).

Exit codes (``raygbm --help`` and every command's help list them; ``raygbm.cli.exit_code`` maps an
exception to one):

- 0: done;
- 1: internal error (an unexpected exception: a bug, or a failure no check foresaw);
- 2: bad input or usage (a bad option, config key, file or data; no such model version);
- 3: cannot reach a service (the endpoint, the Ray cluster, the MLflow tracking server, the Jobs API);
- 4: not promoted (the gate rejected the challenger, ``promote`` refused the version, a retraining was
  refused because another one runs).
"""

from __future__ import annotations

import socket
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_PROMOTED = 4

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "done"),
    (EXIT_INTERNAL, "internal error (one line; the traceback in $RAYGBM_HOME/logs/)"),
    (EXIT_USAGE, "bad input or usage (an option, config key, file, data or model version)"),
    (EXIT_UNREACHABLE, "cannot reach a service (the endpoint, the Ray cluster, the MLflow tracking server, "
                       "the Jobs API)"),
    (EXIT_NOT_PROMOTED, "not promoted (the gate rejected the challenger, promote refused the version, "
                        "a retraining refused or skipped)"),
)


class RaygbmError(Exception):
    """Base class: the message is complete, names the offending thing, and fits on one line. ``exit_code``:
    the CLI's exit code for it; ``label``: the word the CLI's one stderr line starts with."""

    exit_code = EXIT_USAGE
    label = "error"


class ConfigError(RaygbmError):
    pass


class DataError(RaygbmError):
    """Bad input data: a missing, corrupt or mismatched shard, a missing column."""


class RegistryError(RaygbmError):
    """No such model or version, a tampered bundle, or an unreachable store."""


# ---- a service that cannot be reached (exit code 3): retrying later may help, the input is not at fault


class ServiceUnreachable(RaygbmError):
    exit_code = EXIT_UNREACHABLE


class EndpointUnreachable(ServiceUnreachable):
    """A running endpoint (``--url``) did not answer: refused, timed out, or a gateway's 502/503/504."""


class RayUnreachable(ServiceUnreachable):
    """The Ray cluster named by ``RAY_ADDRESS`` could not be joined."""


class TrackingUnreachable(ServiceUnreachable, RegistryError):
    """The MLflow tracking server (``MLFLOW_TRACKING_URI``) did not answer."""


class JobsApiUnreachable(ServiceUnreachable):
    """Ray's Jobs API (the dashboard) did not take a submission, or there is none."""


# ---- nothing wrong, but no new champion (exit code 4): a CI job can gate on it


class NotPromoted(RaygbmError):
    exit_code = EXIT_NOT_PROMOTED
    label = "not promoted"


class Rejected(NotPromoted):
    """The champion gate rejected the challenger (``run``, ``train``, ``retrain``)."""


class PromotionRefused(NotPromoted, RegistryError):
    """A version whose bundle fails verification is never made champion."""

    label = "error"


# ---- connection failures found in an exception's chain


_GATEWAY_CODES = (502, 503, 504)
_LIBRARY_CONNECTION_ERRORS = {"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "NewConnectionError",
                              "MaxRetryError", "ProtocolError"}


def is_connection_failure(exc: BaseException) -> bool:
    """A failure to reach a server over the network (refused, reset, timed out, unresolvable name, a
    gateway's 502/503/504), as urllib, requests/urllib3 (MLflow's client) and sockets raise it; not a local
    file's OSError."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in _GATEWAY_CODES
    if isinstance(exc, (urllib.error.URLError, ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError,
                        socket.gaierror, TimeoutError)):
        return True
    module = type(exc).__module__ or ""
    return module.split(".")[0] in ("requests", "urllib3") and type(exc).__name__ in _LIBRARY_CONNECTION_ERRORS


def connection_failure(exc: BaseException) -> BaseException | None:
    """The connection failure ``exc`` was raised from (itself, or in its ``__cause__``/``__context__``
    chain: ``raise ... from None`` keeps the context), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if is_connection_failure(current):
            return current
        current = current.__cause__ or current.__context__
    return None


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
