"""Statistics of the processes a launcher started (reference 16 "Processes statistics", `--enable-proc-stats`).

Why a poller: the tasks' own descendants (shells, `mpirun`, `orted`, the
application ranks) are not started by us, so nothing tells us about them;
psutil sees them in /proc. A daemon thread polls the descendants of this
process (the service in flat mode, the node agent otherwise) every
`interval` seconds (1 s, as the original). A process shorter than one poll
may be missed, as the reference says. Each process is registered once, keyed
by (pid, creation time) so that a reused pid makes a second entry; later
polls only refresh its CPU times and memory. One poll costs one scan of the
system's process table by psutil plus one `oneshot()` read per descendant.

At `stop()` the records go to `ptrace_{node}_{YYYYmmddHHMMSS}_{random}.log`
in the run's working directory. The file is one JSON object (one process per
line, so it also greps well)::

    {"format": "qcg-pj-ptrace/1",
     "node": "n1",                  # node name (the agent's; the host name in flat local runs)
     "host": "vm", "collector_pid": 1234, "interval": 1.0, "polls": 12,
     "started": 1764164359.1, "finished": 1764164371.3,          # epoch seconds
     "cpu_times_fields": ["user", "system", "children_user", "children_system", "iowait"],
     "memory_info_fields": ["rss", "vms", "shared", "text", "lib", "data", "dirty"],
     "processes": [
      {"pid": 11969, "name": "bash", "cmdline": ["bash", "-c", "..."],
       "parent": 1234, "parent_name": "python3", "cpu_affinity": [0], "node": "n1",
       "created": 1764164359.12,                # creation, epoch (psutil's, boot time made exact)
       "first_seen": 1764164359.5, "last_seen": 1764164362.5,      # polls that saw it
       "cpu_times": [0.01, 0.0, 0.02, 0.01, 0.0],                 # last seen, *_fields order
       "memory_info": [3690496, 8851456, 3284992, 905216, 0, 421888, 0],
       "memory_percent": 0.09}]}

`name` and `cmdline` are the process's latest program (refreshed when it
execs); `parent_name` is the parent's name when the process was first seen.
Direct children of the polling process that are our own infrastructure (node
agents, partition managers: `-m qcg.pilotjob.agent`,
`-m qcg.pilotjob.governor.manager_boot`; the spawner's orphan guard) are left
out with their whole subtree: they are not tasks. Nothing here may disturb
the launcher: every psutil error (process gone, access denied) is swallowed,
and the thread only reads /proc (the spawner changes the process's cwd, so
all paths are absolute). The records stay in memory until the end (about a
kilobyte per process), as in the original.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import threading
import time
from datetime import datetime
from typing import Any

import psutil

_log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
FORMAT = "qcg-pj-ptrace/1"
INFRASTRUCTURE = ("-m qcg.pilotjob.agent", "-m qcg.pilotjob.governor.manager_boot")
# the spawner's orphan guard (agent/orphan_guard.py, run as a script) is a child of every launcher
_GUARD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "orphan_guard.py")
CPU_TIMES_FIELDS = ["user", "system", "children_user", "children_system", "iowait"]
MEMORY_INFO_FIELDS = ["rss", "vms", "shared", "text", "lib", "data", "dirty"]


class _Record:
    __slots__ = ("pid", "name", "cmdline", "parent", "parent_name", "cpu_affinity", "created", "first_seen",
                 "last_seen", "cpu_times", "memory_info", "memory_percent")

    def to_json(self, node: str) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "cmdline": self.cmdline, "parent": self.parent,
                "parent_name": self.parent_name, "cpu_affinity": self.cpu_affinity, "node": node,
                "created": self.created, "first_seen": self.first_seen, "last_seen": self.last_seen,
                "cpu_times": self.cpu_times, "memory_info": self.memory_info,
                "memory_percent": self.memory_percent}


class ProcessStats:
    """Polls this process's descendants in a daemon thread; `stop()` writes the ptrace file once."""

    def __init__(self, out_dir: str, node: str, interval: float = POLL_INTERVAL) -> None:
        self.out_dir = os.path.abspath(out_dir)
        self.node = node
        self.interval = interval
        self.polls = 0
        self.path: str | None = None           # the file written by stop()
        self._root = psutil.Process()
        self._root_pid = self._root.pid
        self._root_name = _safe(self._root.name, "?")
        self._root_cmdline = _safe(self._root.cmdline, [])
        self._total_memory = psutil.virtual_memory().total or 1
        self._created_offset = _boot_time_correction()
        self._records: dict[tuple[int, float], _Record] = {}
        self._infrastructure: set[tuple[int, float]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.started = time.time()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Poll now and then every `interval` seconds until `stop()`."""
        self._thread = threading.Thread(target=self._run, name="qcg-proc-stats", daemon=True)
        self._thread.start()
        # a launcher that dies of an exception never reaches its shutdown: the file is written all the same
        atexit.register(self.stop)

    def _run(self) -> None:
        while True:
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - statistics must never take the launcher down
                _log.exception("process statistics poll failed")
            if self._stopping.wait(self.interval):
                return

    def stop(self, write: bool = True) -> str | None:
        """End the polling (waits at most for the poll in progress), poll a last time, write the file.

        Called before the launcher ends its tasks, the last poll gives their
        final statistics. The second call does nothing. Returns the path
        written, None when nothing could be written (logged).
        """
        if self._stopped:
            return self.path
        self._stopped = True
        self._stopping.set()
        atexit.unregister(self.stop)
        alive = False
        if self._thread is not None:
            self._thread.join(self.interval + 1.0)
            alive = self._thread.is_alive()
            if alive:
                _log.warning("process statistics poll still running at stop; writing what was gathered")
        if not alive:
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - as in the thread: never raised to the launcher
                _log.exception("process statistics poll failed")
        if write:
            self.path = self.write()
        return self.path

    # ------------------------------------------------------------------ polling
    def poll(self) -> None:
        """Register new descendants and refresh the statistics of those alive."""
        try:
            children = self._root.children(recursive=True)
        except psutil.Error:
            return
        now = time.time()
        names = {self._root_pid: self._root_name}
        skipped: set[int] = set()          # pids whose subtree is not ours to record in this poll
        for proc in children:
            try:
                with proc.oneshot():
                    self._poll_one(proc, now, names, skipped)
            except (psutil.Error, OSError):       # gone or not readable since the scan: next poll
                continue
        self.polls += 1

    def _poll_one(self, proc: psutil.Process, now: float, names: dict[int, str], skipped: set[int]) -> None:
        ppid = proc.ppid()
        if ppid in skipped:
            skipped.add(proc.pid)
            return
        key = (proc.pid, round(proc.create_time() + self._created_offset, 2))
        if key in self._infrastructure:
            skipped.add(proc.pid)
            return
        name = proc.name()
        rec = self._records.get(key)
        if rec is None:
            cmdline = proc.cmdline()
            if ppid == self._root_pid and self._not_a_task(key, cmdline):
                skipped.add(proc.pid)
                return
            rec = _Record()
            rec.pid, rec.name, rec.cmdline, rec.parent = proc.pid, name, cmdline, ppid
            rec.parent_name = names.get(ppid) or _parent_name(ppid)
            rec.cpu_affinity = _affinity(proc)
            rec.created, rec.first_seen = key[1], now
        elif rec.name != name:        # it exec'd another program since the last poll
            rec.cmdline = proc.cmdline()
            rec.cpu_affinity = _affinity(proc)
        names[proc.pid] = name
        cpu = [round(v, 2) for v in proc.cpu_times()]
        mem = list(proc.memory_info())
        with self._lock:
            rec.name = name
            rec.last_seen = now
            rec.cpu_times = cpu
            rec.memory_info = mem
            rec.memory_percent = mem[0] * 100.0 / self._total_memory
            self._records[key] = rec

    def _not_a_task(self, key: tuple[int, float], cmdline: list[str]) -> bool:
        """Our own agents and managers are not tasks; nor is a child not yet past its exec (or a bare fork)."""
        if cmdline == self._root_cmdline:
            return True                       # undecided: looked at again next poll
        text = " ".join(cmdline)
        if _GUARD_SCRIPT in cmdline or any(mark in text for mark in INFRASTRUCTURE):
            self._infrastructure.add(key)
            return True
        return False

    # ------------------------------------------------------------------ results
    def records(self) -> list[dict[str, Any]]:
        """The processes registered so far (JSON-ready dictionaries, as in the file)."""
        with self._lock:
            return [rec.to_json(self.node) for rec in self._records.values()]

    def write(self) -> str | None:
        """Write the ptrace file into `out_dir` (a new name each time); the path, or None on an error (logged)."""
        header = {"format": FORMAT, "node": self.node, "host": os.uname().nodename, "collector_pid": self._root_pid,
                  "interval": self.interval, "polls": self.polls, "started": self.started, "finished": time.time(),
                  "cpu_times_fields": CPU_TIMES_FIELDS, "memory_info_fields": MEMORY_INFO_FIELDS}
        head = json.dumps(header)[:-1]
        lines = [json.dumps(rec) for rec in self.records()]
        text = f'{head}, "processes": [\n' + ",\n".join(lines) + "\n]}\n"
        safe_node = "".join(c if c.isalnum() or c in "-." else "_" for c in self.node) or "node"
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        for _ in range(20):
            path = os.path.join(self.out_dir, f"ptrace_{safe_node}_{stamp}_{random.randrange(100000):05d}.log")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            except OSError as exc:
                _log.error("cannot write the process statistics to %s: %s", path, exc)
                return None
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(text)
            except OSError as exc:
                _log.error("cannot write the process statistics to %s: %s", path, exc)
                return None
            _log.info("process statistics written: %s (%d processes, %d polls)", path, len(lines), self.polls)
            return path
        _log.error("cannot find a free ptrace file name in %s", self.out_dir)
        return None


def start_collector(out_dir: str, node: str, interval: float = POLL_INTERVAL) -> ProcessStats | None:
    """A started collector; None (logged) when it cannot run -- the tasks run all the same."""
    try:
        stats = ProcessStats(out_dir, node, interval)
        stats.start()
    except Exception as exc:  # noqa: BLE001 - statistics are an extra, never a reason not to run
        _log.error("process statistics not gathered: %s", exc)
        return None
    return stats


def _boot_time_correction() -> float:
    """What to add to psutil's creation times to get this clock's time.

    psutil counts from the boot time of /proc/stat, in whole seconds: its
    creation times were up to a second early, too coarse to compare with the
    dates of jobs.report or to tell which process came first. The boot
    time from CLOCK_BOOTTIME is exact to the microsecond.
    """
    try:
        return (time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)) - psutil.boot_time()
    except (psutil.Error, OSError, AttributeError):
        return 0.0


def _safe(call: Any, default: Any) -> Any:
    try:
        return call()
    except (psutil.Error, OSError):
        return default


def _affinity(proc: psutil.Process) -> list[int] | None:
    try:
        return sorted(proc.cpu_affinity())
    except (psutil.Error, OSError, AttributeError):
        return None


def _parent_name(ppid: int) -> str | None:
    try:
        return psutil.Process(ppid).name()
    except (psutil.Error, OSError):
        return None
