"""Where raygbm keeps state: one home, ``./.raygbm`` by default, moved with ``RAYGBM_HOME``."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The state home (run directories, MLflow store, logs). Read at call time, never at import."""
    return Path(os.environ.get("RAYGBM_HOME") or Path.cwd() / ".raygbm").resolve()


def runs_dir() -> Path:
    return home() / "runs"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a hidden file beside ``path`` and rename it over ``path``: readers see the old
    content or the new, never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
