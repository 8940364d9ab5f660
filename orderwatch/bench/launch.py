"""Run one command and report its wall time, exit code and peak memory as JSON (stdlib only).

    python orderwatch/bench/launch.py RESULT.json -- COMMAND [ARG...]

Why a separate, tiny launcher instead of `subprocess.Popen` in the bench process itself: on
Linux a child's `ru_maxrss` is at least the high-water RSS of the process that spawned it
(`exec` folds the old address space's peak into the new process's `maxrss`, and Python spawns
with vfork, so the "old" address space is the parent's). Spawned from the bench process, which
grows while it generates inputs and compares outputs, every child would report that floor
instead of its own peak. This script is run *by file path* so it imports nothing from orderwatch
and stays ~10 MiB: the floor it adds is below any real measurement.

`ru_maxrss` from `os.wait4` covers the child and, via RUSAGE_BOTH, the largest of the children
it waited for; it is a *maximum*, never a sum. So the launcher also samples `VmHWM` (the
per-process peak RSS of the current address space) of the child and of every descendant from
/proc every `SAMPLE_S`: that is how the processes of `replay --processes 2` are told apart. A
sample can miss growth in the last interval before a process exits. Each process's CPU time
(user + system, from /proc/<pid>/stat) is sampled alongside, to show how evenly the processes
of a cluster share the work; it misses the same last interval.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

SAMPLE_S = 0.02
_TICKS = os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, field: str) -> int | None:
    """A memory line of /proc/<pid>/status (`VmHWM`, `VmRSS`, ...), KiB; None if it is gone."""
    key = field.encode() + b":"
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None  # a zombie has no memory lines


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has used so far (/proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()  # the command may hold spaces
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14, 15
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:  # a child spawned from any thread is listed under that thread only
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class Sampler(threading.Thread):
    """Keeps the largest VmHWM and CPU time seen per process of the tree rooted at `root`."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peaks: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.parents: dict[int, int] = {}
        self.commands: dict[int, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(SAMPLE_S)

    def sample(self) -> None:
        todo = [(self.root, 0)]
        while todo:
            pid, parent = todo.pop()
            kib = status_kib(pid, "VmHWM")
            if kib is not None:
                self.peaks[pid] = max(kib, self.peaks.get(pid, 0))
                self.parents.setdefault(pid, parent)
                cpu = cpu_seconds(pid)
                if cpu is not None:
                    self.cpu[pid] = max(cpu, self.cpu.get(pid, 0.0))
                if pid not in self.commands:
                    self.commands[pid] = _cmdline(pid)
            todo.extend((c, pid) for c in _children(pid))


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    result_path, command = argv[0], argv[2:]
    started = time.perf_counter()
    pid = os.posix_spawnp(command[0], command, os.environ)
    sampler = Sampler(pid)
    sampler.start()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    result = {
        "wall_s": wall,
        "exit_code": os.waitstatus_to_exitcode(status),
        "maxrss_kib": usage.ru_maxrss,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "processes": [
            {
                "pid": p,
                "parent": sampler.parents.get(p, 0),
                "hwm_kib": kib,
                "cpu_s": sampler.cpu.get(p),
                "command": sampler.commands.get(p, ""),
            }
            for p, kib in sorted(sampler.peaks.items())
        ],
        "launcher_hwm_kib": status_kib(os.getpid(), "VmHWM"),  # the floor it adds to ru_maxrss
    }
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
