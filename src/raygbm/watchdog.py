"""The embedded Ray's keeper: a small process that outlives the raygbm command that started it only
long enough to stop that command's Ray.

``ray.init`` starts its processes (GCS, raylet, dashboard, and under the raylet the agents and workers)
as children of the driver. When the driver exits normally, ``ray.shutdown`` stops them; when it is
killed (SIGKILL, the OOM killer), nothing does at once: the raylet and GCS notice later, and the dashboard
and runtime-env agents stayed listening for ~110 s here. ``runtime.ensure_ray`` starts this keeper (in a
session of its own, so a signal to the command's process group does not reach it) for an embedded Ray
only; it waits for the command to exit, then terminates every process that descended from it (SIGTERM,
then SIGKILL after ``GRACE_S``) and exits.

Run as ``python -m raygbm.watchdog <pid>``. Imports psutil only.
"""

from __future__ import annotations

import os
import select
import sys
import time

import psutil

SNAPSHOT_S = 2.0  # how often the keeper notes the command's descendants while it runs
GRACE_S = 3.0


def _descendants(roots: list[psutil.Process]) -> dict[int, psutil.Process]:
    out: dict[int, psutil.Process] = {}
    for p in roots:
        try:
            if p.is_running():
                out[p.pid] = p
                out.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.Error:
            pass
    return out


def _wait_for_exit(parent: psutil.Process, timeout: float) -> bool:
    """Whether ``parent`` has exited (a zombie counts) within ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(parent.pid)
    except (AttributeError, OSError):  # no pidfd (macOS, old kernels): poll
        time.sleep(timeout)
        try:
            return not parent.is_running() or parent.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def keep(parent_pid: int) -> None:
    me = os.getpid()
    try:
        parent = psutil.Process(parent_pid)
    except psutil.Error:
        return
    known: dict[int, psutil.Process] = {}
    while True:  # a note at once (Ray's processes are up when the keeper starts), then every SNAPSHOT_S
        try:
            known.update((c.pid, c) for c in parent.children(recursive=True) if c.pid != me)
        except psutil.Error:
            break
        if _wait_for_exit(parent, SNAPSHOT_S):
            break
    # Processes started since the last note are children of ones noted (the raylet's workers).
    left = [p for pid, p in _descendants(list(known.values())).items() if pid != me]
    for p in left:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(left, timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    keep(int(sys.argv[1]))
