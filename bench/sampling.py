"""What the benches sample while something runs: the memory of a process tree, every process's CPU.

Sampling is not free, and on 2 cores it slows what it measures:

- the RSS sum of a tree (``/proc/<pid>/statm``) costs ~3 ms of CPU per sample with Ray's ~22 processes;
- its PSS (``/proc/<pid>/smaps_rollup``, a shared page counted 1/n in each of its n processes) walks every
  page table: 60 ms of CPU per sample with Ray idle (measured 2026-12-07), far more with GBs mapped. Every
  100 ms that is a third of a core, taken from the run being timed (``bench/preprocess.py``'s Ray runs
  were 3.9-4.6 s with it and 2.7-3.1 s without).

So the benches time their runs with no sampler, and read memory in runs of their own (``PeakMemory``).
"""

from __future__ import annotations

import os
import threading
import time


def tree(pid: int) -> list[int]:
    """A process and all its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def rss_tree_mb(pid: int) -> float:
    """Resident memory of a process tree: the sum of each process's resident set (pages shared between
    processes, such as libraries and the object store, counted once per process)."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total / 2**20


def pss_tree_mb(pid: int) -> float:
    """Proportional memory of a process tree (PSS), so the sum is the memory the tree really holds."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        except (OSError, StopIteration, IndexError, ValueError):
            pass
    return total / 2**20


class Sampler:
    """Calls ``sample()`` every ``every`` seconds in a thread while in use (once more at the end)."""

    def __init__(self, every: float) -> None:
        self.every, self.t0 = every, time.time()
        self._stop = threading.Event()

    def sample(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "Sampler":
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


class PeakMemory(Sampler):
    """The peak memory of a process tree (``pid``: this process by default): the RSS sum every 100 ms, and
    with ``pss`` its PSS too. ``pss_share``: PSS read only while the RSS sum is near its peak and at most
    that share of the time (``bench/scale.py``'s rule, so a slow PSS read cannot take a core from a run
    being timed); None: at every sample, for a run of its own."""

    def __init__(self, pid: int | None = None, pss: bool = False, pss_share: float | None = 0.05,
                 every: float = 0.1) -> None:
        super().__init__(every)
        self.pid, self.pss, self.pss_share = pid or os.getpid(), pss, pss_share
        self.peak_rss = self.peak_pss = 0.0
        self._next_pss = 0.0

    def sample(self) -> None:
        rss = rss_tree_mb(self.pid)
        self.peak_rss = max(self.peak_rss, rss)
        if not self.pss:
            return
        if self.pss_share is None:
            self.peak_pss = max(self.peak_pss, pss_tree_mb(self.pid))
        elif rss >= 0.97 * self.peak_rss and time.monotonic() >= self._next_pss:
            t = time.monotonic()
            self.peak_pss = max(self.peak_pss, pss_tree_mb(self.pid))
            self._next_pss = time.monotonic() + (time.monotonic() - t) / self.pss_share

    @property
    def peak(self) -> float:
        return self.peak_pss if self.pss else self.peak_rss


def busy_cores() -> tuple[float, float]:
    """(now, CPU seconds the whole machine has used, all cores): from /proc/stat, two reads bound a window
    at no cost to it."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return time.time(), (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
