"""Ends the tasks of a launcher that died without ending them.

A launcher (the service in flat mode, a node agent) starts every task in a
process group of its own, so that cancel reaches the whole tree. The price:
when the launcher is killed outright (`kill -9`, the OOM killer), nothing
stops its tasks; they run on unseen, and `--resume` then starts them a second
time next to the first. Slurm ends what a step leaves behind; a local run or
an ssh-started agent has no such help.

The guard is a small process of its own (`python -I -S` on this file: a few
milliseconds, standard library only). The launcher writes to it, through a
pipe, ``+PGID`` for every group it starts and ``-PGID`` for every group it
has reaped, and ``.`` when it shuts down in order. When the pipe closes
without that word, the launcher is gone: the guard sends the groups it still
holds SIGTERM and, after a grace time, SIGKILL. It ignores the signals that
stop a run from a terminal or a batch system, so that it outlives the
launcher long enough to clean up.
"""

from __future__ import annotations

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


class OrphanGuard:
    """The launcher's end of the pipe. Writes are batched per loop turn by the caller (`note`/`flush`)."""

    def __init__(self, grace: float = GRACE) -> None:
        reap_left()
        read_end, self._fd = os.pipe()
        os.set_inheritable(self._fd, False)
        try:
            self.pid: int | None = os.posix_spawn(
                sys.executable, [sys.executable, "-I", "-S", os.path.abspath(__file__), str(grace)], os.environ,
                # not the launcher's stdout/stderr: a reader waiting for their end must not wait for the guard
                file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0),
                              (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                              (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)], setsid=True)
        finally:
            os.close(read_end)
        self._pending: list[bytes] = []
        self.broken = False

    def started(self, pgid: int) -> None:
        self._pending.append(b"+%d\n" % pgid)

    def reaped(self, pgid: int) -> None:
        self._pending.append(b"-%d\n" % pgid)

    def flush(self) -> None:
        """Hand the notes to the guard; a guard that died makes the launcher go on without one."""
        if not self._pending or self.broken:
            self._pending.clear()
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError:
            self.broken = True

    def close(self) -> None:
        """The launcher ends in order (its tasks ended): the guard leaves them all alone (not waited for)."""
        self._pending.append(b".\n")
        self.flush()
        try:
            os.close(self._fd)
        except OSError:
            pass
        pid, self.pid = self.pid, None
        if pid is None:
            return
        try:
            _LEFT[os.pidfd_open(pid)] = pid
        except OSError:
            return                  # no descriptor left: it stays a zombie until this process ends
        reap_left()


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
    groups: set[int] = set()
    rest = b""
    clean = False
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line.startswith(b"+"):
                groups.add(int(line[1:]))
            elif line.startswith(b"-"):
                groups.discard(int(line[1:]))
            elif line == b".":
                clean = True
    if not clean and groups:
        _end(groups, grace)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
