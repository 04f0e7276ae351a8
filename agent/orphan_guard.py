"""Ends the tasks of a launcher that died without ending them.

A launcher (the service in flat mode, a node agent) starts every task in a
process group of its own, so that cancel reaches the whole tree. The price:
when the launcher is killed outright (`kill -9`, the OOM killer), nothing
stops its tasks; they run on unseen, and `--resume` then starts them a second
time next to the first. Slurm ends what a step leaves behind; a local run or
an ssh-started agent has no such help.

The guard is a small process of its own (`python -I -S` on this file: a few
milliseconds, standard library only). It learns which groups live from a table
in memory both share (a memfd, its descriptor 3): the launcher writes a group's
id into a free slot when it starts the group and zeroes the slot when it has
reaped it -- a store into memory, no system call, and the guard does not wake
for it. (It used to read ``+PGID``/``-PGID`` notes from a pipe: one wake-up of
the guard per loop turn, about 0.1 ms of CPU per task on a 2-core test VM,
where the tasks needed the cores.) The guard sleeps on the read end of a pipe
(its descriptor 0). The launcher writes ``.`` to it when it shuts down in
order; when the pipe closes without that word, the launcher is gone: the
guard reads the table and sends the groups still in it SIGTERM and, after a
grace time, SIGKILL. It ignores the signals that stop a run from a terminal or
a batch system, so that it outlives the launcher long enough to clean up.
"""

from __future__ import annotations

import array
import errno
import mmap
import os
import signal
import sys
import time

GRACE = 3.0                     # seconds between SIGTERM and SIGKILL, as cancel has

# guards told to leave that had not yet, by pidfd (a pid could be reused once someone else reaped it):
# reaped later (`reap_left`), never waited for -- a guard still starting its interpreter takes ~40 ms to
# read the word, which a one-task run would spend waiting
_LEFT: dict[int, int] = {}      # pidfd -> pid


def reap_left() -> None:
    """Reap the guards that have left since they were told to (no zombies in a launcher that goes on)."""
    for fd in list(_LEFT):
        try:
            gone = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG) is not None
        except ChildProcessError:
            gone = True             # reaped by someone else
        if gone:
            del _LEFT[fd]
            os.close(fd)


_SLOT = array.array("i").itemsize     # a group id (pid_max is below 2**22)
_FIRST_SLOTS = 1024                   # grown by doubling when more tasks run at once


def _table_file() -> int:
    """A descriptor of a file that lives in memory only and goes when both processes close it."""
    create = getattr(os, "memfd_create", None)
    if create is None:      # not Linux: no guard (the launcher warns and runs without it)
        raise OSError(errno.ENOSYS, "memfd_create is not available")
    return create("qcg-orphan-guard", os.MFD_CLOEXEC)


def _not_below(fd: int, lowest: int) -> int:
    """`fd`, or a duplicate numbered `lowest` or higher (a child's fd 0 and 3 are set by dup2 from it)."""
    if fd >= lowest:
        return fd
    try:
        return _not_below(os.dup(fd), lowest)
    finally:
        os.close(fd)


class OrphanGuard:
    """The launcher's end: the shared table of live task groups, and the pipe whose end tells of its death."""

    def __init__(self, grace: float = GRACE, hold_fd: int = -1) -> None:
        """`hold_fd`: a descriptor the guard keeps open as its descriptor 4 for as long as it lives (the
        run lock of the launcher, agent/run_lock.py), so that what it locks outlives a killed launcher
        until the guard has ended the tasks."""
        # here: the guard process imports this file and never needs them (nor could it import the package)
        from contextlib import ExitStack

        from qcg.pilotjob.agent.spawner import end_unwatched

        reap_left()
        size = _FIRST_SLOTS * _SLOT
        with ExitStack() as done, ExitStack() as failed:
            table = _not_below(_table_file(), 4)
            done.callback(os.close, table)      # the mapping keeps the file; the guard gets its own descriptor
            os.ftruncate(table, size)
            self._map = mmap.mmap(table, size)
            failed.callback(self._map.close)
            read_end, self._fd = os.pipe()
            failed.callback(os.close, self._fd)
            read_end = _not_below(read_end, 4)
            done.callback(os.close, read_end)
            extra = []
            if hold_fd >= 0:
                held = _not_below(os.dup(hold_fd), 5)      # not a descriptor the dups into 0 and 3 replace
                done.callback(os.close, held)
                extra.append((os.POSIX_SPAWN_DUP2, held, 4))
            self.pid: int | None = os.posix_spawn(
                sys.executable, [sys.executable, "-I", "-S", os.path.abspath(__file__), str(grace)], os.environ,
                # not the launcher's stdout/stderr: a reader waiting for their end must not wait for the guard
                file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0),
                              (os.POSIX_SPAWN_DUP2, table, 3),
                              (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                              (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0), *extra], setsid=True)
            failed.callback(end_unwatched, self.pid)    # its own group (setsid); no zombie left
            # watched by the launcher: a guard killed by someone is replaced (guard_keeper)
            self.pidfd = os.pidfd_open(self.pid)
            failed.pop_all()                    # started: the map and the write end stay
        self._slots = memoryview(self._map).cast("i")
        self._free = list(range(_FIRST_SLOTS - 1, -1, -1))
        self._slot_of: dict[int, int] = {}

    def started(self, pgid: int) -> None:
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self._slots[slot] = pgid
        self._slot_of[pgid] = slot

    def reaped(self, pgid: int) -> None:
        slot = self._slot_of.pop(pgid, None)
        if slot is not None:
            self._slots[slot] = 0
            self._free.append(slot)

    def _grow(self) -> None:
        """Double the table (OSError when it cannot: the table stays as it was, still usable)."""
        n = len(self._slots)
        self._slots.release()
        try:
            self._map.resize(2 * n * _SLOT)     # the file grows with it: the guard reads its whole size
        finally:
            self._slots = memoryview(self._map).cast("i")
        self._free.extend(range(2 * n - 1, n - 1, -1))

    def ended_how(self) -> str:
        """How the guard process ended ("killed by signal 9 (SIGKILL)", "exit status 1"); reaps it."""
        try:
            res = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return "ended"              # reaped by someone else
        if res is None:
            return "still running"
        if res.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            try:
                name = signal.Signals(res.si_status).name
            except ValueError:          # a real-time signal (or one the C library keeps): no name
                rt = res.si_status - signal.SIGRTMIN
                name = f"SIGRTMIN+{rt}" if rt > 0 else "unnamed"
            return f"killed by signal {res.si_status} ({name})"
        return f"exit status {res.si_status}"

    def close(self) -> None:
        """The launcher ends in order (its tasks ended): the guard leaves them all alone (not waited for)."""
        if self._fd < 0:
            return                  # closed already
        try:
            os.write(self._fd, b".")
        except OSError:
            pass                    # the guard is gone already
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._fd = -1
        self._slots.release()
        self._map.close()
        pid, self.pid = self.pid, None
        if pid is None:
            return
        _LEFT[self.pidfd] = pid
        reap_left()


def live_groups(table_fd: int) -> set[int]:
    """The group ids in the shared table behind `table_fd` (free slots hold 0)."""
    table = array.array("i")
    table.frombytes(os.pread(table_fd, os.fstat(table_fd).st_size, 0))
    return {pgid for pgid in table if pgid > 0}


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end(groups: set[int], grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in list(groups):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                groups.discard(pgid)
            except PermissionError:
                groups.discard(pgid)       # not ours any more: the group id was reused
        deadline = time.monotonic() + grace
        while groups and time.monotonic() < deadline:
            time.sleep(0.05)
            groups = {g for g in groups if _alive(g)}
        if not groups:
            return


def main(argv: list[str]) -> int:
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    grace = float(argv[1]) if len(argv) > 1 else GRACE
    clean = False
    while True:
        chunk = os.read(0, 4096)
        if not chunk:
            break
        clean = clean or b"." in chunk
    if not clean:
        groups = live_groups(3)
        if groups:
            _end(groups, grace)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
