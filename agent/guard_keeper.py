"""The launcher's side of the orphan guard: when one runs, what it is told, and what replaces it.

`ProcessSpawner` keeps one `GuardKeeper` when it launches tasks (not
infrastructure). The guard process starts with the first task, so a launcher
that is replaced before it runs any task has none. The keeper tells it of each
task group started and reaped, and watches its pidfd: a guard that dies while
the launcher lives (somebody killed it) would leave the tasks unguarded
without a word, so a new one takes over the live groups -- up to
`REPLACEMENTS` times in the launcher's life, then the launcher goes on
without one, with a warning, as when a guard cannot start at all. The guard
is a protection, not a condition of the run: no failure of it fails a task.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

from qcg.pilotjob.agent.orphan_guard import OrphanGuard

_log = logging.getLogger("qcg.pilotjob.agent.spawner")

REPLACEMENTS = 3       # guards that may die (be killed) and be replaced before the launcher gives up


class GuardKeeper:
    def __init__(self, loop: asyncio.AbstractEventLoop, grace: float, live_groups: Callable[[], Iterable[int]],
                 describe: Callable[[OSError], str] = str, hold: Callable[[], int] | None = None) -> None:
        self._loop = loop
        self._hold = hold                   # the descriptor of the run lock each guard holds too (OrphanGuard)
        self._grace = grace
        self._live_groups = live_groups     # the groups of the tasks running now, for a replacement guard
        self._describe = describe
        self.active = True                  # False once given up: the tasks run unguarded
        self.current: OrphanGuard | None = None
        self.deaths = 0

    def started(self, pgid: int) -> None:
        """A task's group now runs (a store into the memory the guard shares; the first starts the guard)."""
        if not self.active:
            return
        try:
            (self.current or self._start()).started(pgid)
        except OSError as exc:
            self._give_up(self._describe(exc))

    def reaped(self, pgid: int) -> None:
        if self.current is not None:
            self.current.reaped(pgid)

    def stop(self) -> None:
        """The launcher's tasks have all ended: the guard leaves (not waited for); the next task starts one."""
        guard, self.current = self.current, None
        if guard is not None:
            self._loop.remove_reader(guard.pidfd)
            guard.close()

    def _start(self) -> OrphanGuard:
        guard = self.current = OrphanGuard(self._grace, self._hold() if self._hold is not None else -1)
        self._loop.add_reader(guard.pidfd, self._ended, guard)
        return guard

    def _give_up(self, why: str) -> None:
        _log.warning("orphan guard not started or given up (%s): tasks of a killed launcher will outlive it", why)
        self.active = False
        self.stop()

    def _ended(self, guard: OrphanGuard) -> None:
        """The guard died while the launcher lives: unseen, the tasks would outlive a kill -9 of the
        launcher. A new guard takes over the live groups, unless guards keep dying."""
        if guard is not self.current:
            return
        try:
            how = guard.ended_how()
        except Exception as exc:  # noqa: BLE001 - the cause is for the log only; the guard is gone either way
            how = f"cause unknown: {exc}"
        self.stop()                 # no longer watched: this runs once per guard
        self.deaths += 1
        if self.deaths > REPLACEMENTS:
            self._give_up(f"{self.deaths} guards ended, the last {how}")
            return
        groups = list(self._live_groups())
        if not groups:
            _log.warning("orphan guard ended (%s); the next task starts a new one", how)
            return
        _log.warning("orphan guard ended (%s); a new one takes over %d task group(s)", how, len(groups))
        for pgid in groups:
            self.started(pgid)
