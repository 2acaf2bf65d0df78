"""The prediction log's write-ahead files: what makes "answered 2xx" mean "its prediction id will be
accepted by /feedback", whatever process dies.

The normal path of a served row into the prediction log crosses two buffers in memory (the replica's
``MonitorBuffer``, the monitor actor's ``PredictionLog``) and a Ray call that is never awaited; a crash of
either process, or of the whole embedded Ray, loses what they held. So before a replica answers, it
appends the rows' request parts, prediction ids and scores to a file of its own (``WalWriter``), one
``write`` per ``@serve.batch`` batch (group commit). A process crash cannot lose what ``write`` handed the
kernel; ``fsync`` (``monitor.feedback.fsync``) also survives a power loss, at the cost of a disk flush per
batch.

The monitor reads the files (``WalReader``): on start (after a crash: everything it has not logged), when
a label names an id it cannot find (a row still on its way), and in a sweep that puts rows the normal
path lost into the log, writes them, and deletes files old enough that their writer has moved on.

Layout, beside the prediction log::

    <log_dir>/<model name>/wal/<created ms>-<host>-<pid>-<seq>.wal

A writer starts a new file once its current one is ``ROTATE_S`` old; the monitor deletes a file, once
read to its end, when it is ``ROTATE_S + GRACE_S`` old. On a cluster, ``monitor.log_dir`` must be a
filesystem every node shares (as for the prediction log itself).

A record: ``MAGIC``, header length, payload length, CRC32 of both, the header (JSON: version, time,
kind, prediction ids and scores) and the payload (a ``/predict`` body as received, OIP records as JSON,
or a table as an Arrow IPC stream). A record cut short by a crash fails its length or CRC check and
ends the file's reading. Plain Python: no Ray.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

MAGIC = b"RGW1"
_FRAME = struct.Struct("<4sIII")
ROTATE_S = 30.0
GRACE_S = 30.0
SETTLE_S = 5.0  # the sweep leaves records this young to the normal path (they may still be on their way)


def wal_dir(log_dir: str | Path, name: str) -> Path:
    return Path(log_dir) / name / "wal"


def frame(version: str, ts: float, raw: Any, scores: np.ndarray) -> bytes:
    """One record of a request part (``prediction_log.RawRows``) and its scores."""
    header: dict[str, Any] = {"v": version, "ts": ts, "scores": np.asarray(scores, dtype=np.float64).tolist()}
    if raw.table is not None:
        header["kind"] = "table"
        table = raw.table.append_column("__id", raw.ids.cast(pa.string()) if isinstance(raw.ids, pa.Array)
                                        else pa.array(raw.ids, pa.string()))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        payload = sink.getvalue().to_pybytes()
    else:
        header["ids"] = list(raw.ids)
        if raw.body is not None:
            header["kind"], payload = "body", bytes(raw.body)
        else:
            header["kind"], payload = "records", json.dumps(raw.records, default=str).encode()
    head = json.dumps(header, separators=(",", ":")).encode()
    return _FRAME.pack(MAGIC, len(head), len(payload), zlib.crc32(payload, zlib.crc32(head))) + head + payload


class WalWriter:
    """A replica's write-ahead file for one model name (see the module docstring). ``append`` is called
    from the event loop and from worker threads (table bodies); a lock keeps rotation and writes whole."""

    def __init__(self, folder: Path, fsync: bool = False):
        self.folder = Path(folder)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._opened = 0.0
        self._seq = itertools.count()
        self.error: str | None = None

    def _file(self) -> int:
        now = time.time()
        if self._fd is not None and now - self._opened < ROTATE_S:
            return self._fd
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{int(now * 1000):013d}-{socket.gethostname()}-{os.getpid()}-{next(self._seq)}.wal"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._opened = now
        if self.fsync:  # the new file's name, too, must survive a power loss
            dfd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return self._fd

    def append(self, data: bytes) -> int | None:
        """Write ``data`` (whole records) in one call; the file descriptor to ``fsync`` when that is on.
        A failure (a full disk) is kept in ``error`` and never raised: serving goes on, as it does when the
        prediction log itself cannot be written."""
        with self._lock:
            try:
                fd = self._file()
                view = memoryview(data)
                while view:  # one write in practice; a regular file may take a large one in parts
                    view = view[os.write(fd, view):]
            except OSError as exc:
                self.error = f"the prediction log's write-ahead file: {exc.strerror or type(exc).__name__}"
                return None
            return fd if self.fsync else None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


@dataclass
class Record:
    version: str
    ts: float
    kind: str
    ids: list[str]
    scores: np.ndarray
    payload: bytes
    size: int  # bytes in the file, framing included

    def parts(self) -> dict[str, Any]:
        """The request part as ``prediction_log.RawRows(**parts)`` takes it."""
        if self.kind == "table":
            table = pa.ipc.open_stream(self.payload).read_all()
            return {"ids": table.column("__id").combine_chunks(), "table": table.drop_columns(["__id"])}
        if self.kind == "body":
            return {"ids": self.ids, "body": self.payload}
        return {"ids": self.ids, "records": json.loads(self.payload)}


def _ids_of(header: dict[str, Any], payload: bytes) -> list[str]:
    if "ids" in header:
        return header["ids"]
    return pa.ipc.open_stream(payload).read_all().column("__id").to_pylist()


def read_records(path: Path, offset: int = 0) -> tuple[list[Record], int]:
    """The whole records of ``path`` from ``offset`` on, and the offset after the last of them (a record cut
    short or corrupted ends the reading there)."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    out, pos = [], 0
    while pos + _FRAME.size <= len(data):
        magic, hlen, plen, crc = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + hlen + plen
        if magic != MAGIC or end > len(data):
            break
        head, payload = data[pos + _FRAME.size:pos + _FRAME.size + hlen], data[pos + _FRAME.size + hlen:end]
        if zlib.crc32(payload, zlib.crc32(head)) != crc:
            break
        try:
            h = json.loads(head)
            out.append(Record(h["v"], float(h["ts"]), h["kind"], _ids_of(h, payload), np.asarray(h["scores"]), payload,
                              end - pos))
        except (ValueError, KeyError, TypeError, pa.ArrowException):
            break
        pos = end
    return out, offset + pos


def created_s(path: Path) -> float:
    try:
        return int(path.name.split("-", 1)[0]) / 1000
    except ValueError:
        return 0.0


class WalReader:
    """The monitor's side: which bytes of which write-ahead file it has read."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.offsets: dict[str, int] = {}

    def files(self) -> list[Path]:
        try:
            return sorted(self.folder.glob("*.wal"))
        except OSError:
            return []

    def read(self, before: float | None = None) -> list[Record]:
        """Records not read before, in file order; with ``before``, a file's reading stops at its first
        record served at or after that time (left for a later read)."""
        out: list[Record] = []
        for path in self.files():
            try:
                records, end = read_records(path, self.offsets.get(path.name, 0))
            except FileNotFoundError:
                continue
            if before is not None:
                young = next((i for i, r in enumerate(records) if r.ts >= before), None)
                if young is not None:
                    records = records[:young]
                    end = self.offsets.get(path.name, 0) + sum(r.size for r in records)
            self.offsets[path.name] = end
            out.extend(records)
        return out

    def delete_settled(self, now: float | None = None) -> int:
        """Delete the files whose writer has moved on, once read (call it after ``read``, and after what was
        read is in the log); how many. Such a file is read to its last whole record: a record cut short by
        its writer's crash is all that can follow, and goes with it."""
        now = time.time() if now is None else now
        gone = 0
        for path in self.files():
            if now - created_s(path) < ROTATE_S + GRACE_S or path.name not in self.offsets:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            self.offsets.pop(path.name, None)
            gone += 1
        return gone

