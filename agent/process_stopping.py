"""How the spawner's processes are stopped: cancel, walltime and shutdown, each SIGTERM then SIGKILL.

Part of `ProcessSpawner` (spawner.py), kept apart because stopping is a
concept of its own: every signal goes to the task's whole process group
(each task leads one), the polite signal first (`term_signal`, SIGTERM
unless a child asked for another), SIGKILL after the grace time. A group
that is gone while its leader is not yet reaped is signalled through the
leader's pidfd. Walltime and cancel mark why the process ended (`killed`,
`reason`), which its exit report carries.

A task ends with its first process: whatever that left in the task's group
(a background child, a double fork) gets the same two signals once the
first process is reaped, as the processes of a finished `srun` step do; the
orphan guard keeps the group on its list until the SIGKILL has gone out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import time
from typing import TYPE_CHECKING, Hashable

if TYPE_CHECKING:
    from qcg.pilotjob.agent.guard_keeper import GuardKeeper
    from qcg.pilotjob.agent.spawner import _Proc

_log = logging.getLogger("qcg.pilotjob.agent.spawner")


class ProcessStopping:
    """Mixin of ProcessSpawner; uses its `_procs`, `_loop`, `_kill_grace` and `_idle`."""

    _procs: dict
    _loop: asyncio.AbstractEventLoop
    _kill_grace: float
    _idle: asyncio.Future | None
    _guard: GuardKeeper | None
    _ends_groups: bool
    _lingering: dict[int, "_Lingering"]     # group -> its SIGKILL to come: the leader is reaped, members are not

    def cancel(self, key: Hashable, reason: str = "canceled") -> bool:
        """SIGTERM the process group of `key`, SIGKILL after the grace time."""
        proc = self._procs.get(key)
        if proc is None:
            return False
        if proc.killed is None:
            proc.killed = "canceled"
            proc.reason = reason
        self._terminate(proc)
        return True

    async def wait_then_shutdown(self, timeout: float) -> None:
        """Give the processes `timeout` seconds to end by themselves (told to exit), then `shutdown` the rest."""
        deadline = time.monotonic() + timeout
        if self._procs:
            if self._idle is None or self._idle.done():
                self._idle = self._loop.create_future()
            try:    # woken by the last exit, not by polling: a stop is on the critical path of every run
                await asyncio.wait_for(asyncio.shield(self._idle), timeout)
            except asyncio.TimeoutError:
                pass
        await self.shutdown(timeout=max(0.5, deadline - time.monotonic()))

    def _leader_reaped(self, proc: _Proc, status_known: bool = True) -> None:
        """What the task left in its group gets the polite signal now, SIGKILL after the grace time.

        Once the leader is reaped, only the members hold the group's number: the SIGKILL goes to the group
        only while one of the members seen now is still in it (so the number is still this group's), and to
        each of them through a pidfd. A leader reaped by somebody else vouches for no group."""
        pgid = proc.pid
        if self._ends_groups and status_known:
            try:
                os.killpg(pgid, proc.term_signal)
            except OSError:
                pass        # the usual case: nothing left (ESRCH)
            else:
                _log.info("task %r ended, processes left in its group %d: %s, SIGKILL in %.1fs", proc.key, pgid,
                          signal.Signals(proc.term_signal).name, self._kill_grace)
                self._lingering[pgid] = _Lingering(
                    self._loop.call_later(self._kill_grace, self._kill_lingering, pgid), _group_members(pgid))
                return
        if self._guard is not None:
            self._guard.reaped(pgid)

    def _kill_lingering(self, pgid: int) -> None:
        lingering = self._lingering.pop(pgid, None)
        if lingering is None:
            return
        lingering.handle.cancel()
        try:
            if lingering.still_in(pgid):
                os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
        lingering.kill_and_close()
        if self._guard is not None:
            self._guard.reaped(pgid)

    def _group_reused(self, pgid: int) -> None:
        """A new child got the number of a group still waiting for its SIGKILL: that group is empty (the
        kernel does not give out a number a group still uses), and the signal must not reach the new one."""
        lingering = self._lingering.pop(pgid, None)
        if lingering is not None:
            lingering.handle.cancel()
            lingering.close()
            if self._guard is not None:
                self._guard.reaped(pgid)

    def _kill_all_lingering(self) -> None:
        """At shutdown: the groups' members had their polite signal with their leaders, or earlier."""
        for pgid in list(self._lingering):
            self._kill_lingering(pgid)

    async def _shutdown(self, timeout: float) -> None:
        if not self._procs:
            return
        for proc in list(self._procs.values()):
            if proc.killed is None:
                proc.killed = "canceled"
                proc.reason = "shutdown"
            self._terminate(proc, grace=min(self._kill_grace, timeout / 2))
        if self._idle is None or self._idle.done():
            self._idle = self._loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        except asyncio.TimeoutError:
            left = [p.pid for p in self._procs.values()]
            _log.error("shutdown: %d process(es) did not exit in %.1fs: %s", len(left), timeout, left)
            for proc in list(self._procs.values()):
                self._signal(proc, signal.SIGKILL)

    def _signal(self, proc: _Proc, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            # the group may be gone while the leader (a zombie we still hold) is not
            try:
                signal.pidfd_send_signal(proc.pidfd, sig)
            except OSError:
                pass

    def _terminate(self, proc: _Proc, grace: float | None = None) -> None:
        self._signal(proc, proc.term_signal)
        if proc.kill_handle is None:
            proc.kill_handle = self._loop.call_later(
                self._kill_grace if grace is None else grace, self._kill, proc)

    def _kill(self, proc: _Proc) -> None:
        proc.kill_handle = None
        if self._procs.get(proc.key) is proc:
            self._signal(proc, signal.SIGKILL)

    def _walltime(self, proc: _Proc, wt: float) -> None:
        proc.wt_handle = None
        if self._procs.get(proc.key) is not proc or proc.killed is not None:
            return
        proc.killed = "walltime"
        proc.reason = f"walltime exceeded ({wt:g}s)"
        self._terminate(proc)


class _Lingering:
    """A task group whose leader is reaped: its SIGKILL to come, and (pid, pidfd) of the members seen."""

    __slots__ = ("handle", "members")

    def __init__(self, handle: asyncio.TimerHandle, members: list[tuple[int, int]]) -> None:
        self.handle = handle
        self.members = members

    def still_in(self, pgid: int) -> bool:
        """Whether a member seen at the start is alive and in the group: then the number is still its."""
        for pid, fd in self.members:
            if not select.select([fd], [], [], 0)[0]:       # a pidfd turns readable when its process ends
                try:
                    if os.getpgid(pid) == pgid:
                        return True
                except OSError:
                    pass
        return False

    def kill_and_close(self) -> None:
        for _, fd in self.members:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        for _, fd in self.members:
            os.close(fd)
        self.members = []


def _group_members(pgid: int) -> list[tuple[int, int]]:
    """(pid, pidfd) of the processes in group `pgid` (from /proc: only when a task left some behind)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            if int(fields[2]) != pgid:
                continue
            found.append((int(entry.name), os.pidfd_open(int(entry.name))))
        except (OSError, ValueError, IndexError):
            continue            # gone meanwhile
    return found
