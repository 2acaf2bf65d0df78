"""``raygbm.watchdog``: a killed command's descendants (an embedded Ray's processes) do not outlive it.
Real processes, no Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil

from tests.helpers import wait_until

# A stand-in for a raygbm command with an embedded Ray: a child that ignores SIGTERM (the keeper must follow
# with SIGKILL) and a child of that child, then the keeper (as ``ensure_ray`` starts it after ``ray.init``);
# it prints the two pids and waits.
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from raygbm.runtime import keep_embedded_ray
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(g.pid, flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    grandchild = child.stdout.readline().strip()
    keep_embedded_ray()
    print(child.pid, grandchild, flush=True)
    time.sleep(600)
""")


def _fds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def test_the_keeper_stops_a_killed_commands_processes_and_itself():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        keeper = wait_until(lambda: [p for p in psutil.process_iter(["cmdline"])
                                     if p.info["cmdline"][-2:] == ["raygbm.watchdog", str(parent.pid)]], 10,
                            message="the keeper to start")
        assert len(pids) == 2
        # The keeper notes the descendants, then waits on a pidfd of the command: once it holds one, the
        # note is taken.
        wait_until(lambda: "anon_inode:[pidfd]" in _fds(keeper[0].pid), 10, message="the keeper's first note")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                   for p in pids), 10, message="the killed command's processes to go")
        wait_until(lambda: not keeper[0].is_running() or keeper[0].status() == psutil.STATUS_ZOMBIE, 10,
                   message="the keeper to exit")
    finally:
        for p in psutil.Process(os.getpid()).children(recursive=True):
            p.kill()
