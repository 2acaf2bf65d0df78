"""The progress callback the stages take: called with one short line as each step starts."""

from __future__ import annotations

from typing import Callable

Progress = Callable[[str], None]


def no_progress(_msg: str) -> None:
    """The default progress callback: shows nothing."""
