"""Final states: how a job or an iteration ends, what its end releases or omits, and waiting for all ends.

`FinalStates` is a base class of `Governor` (governor.py), apart from the
per-task path of submit, dispatch and task events, which call into it once
per end. Every end -- a task's exit, a cancel (cancellation.py), a job that
never fits, an omitted dependant -- goes through `_finish_job` /
`_finish_iteration`: they tell the listeners, queue the end for
`_propagate` (a worklist, no recursion) and wake `wait_all_finished` when no
job is left. It uses the governor's registry, waiter index, listeners
(`_listeners`, `_notify_state`), count of unfinished jobs, worklist of ends
(`_finals`, `_propagating`), idle waiters and loop, all set up in
`Governor.__init__`, and hands a released job back through `_make_runnable`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from qcg.pilotjob.governor.registry import IterationRecord, JobRecord
from qcg.pilotjob.governor.states import FINAL_STATES, JobState

if TYPE_CHECKING:
    from qcg.pilotjob.governor.dependencies import WaiterIndex
    from qcg.pilotjob.governor.governor import GovernorListener
    from qcg.pilotjob.governor.registry import Registry


class FinalStates:
    # the Governor's (see governor.py)
    loop: asyncio.AbstractEventLoop
    registry: "Registry"
    waiters: "WaiterIndex"
    unfinished: int
    _listeners: "list[GovernorListener]"
    _finals: deque[tuple[str, int | None, JobState]]
    _propagating: bool
    _idle_waiters: list[asyncio.Future[None]]

    if TYPE_CHECKING:
        def _make_runnable(self, job: JobRecord) -> None: ...
        def _notify_state(self, job: JobRecord, it: int | None, state: JobState) -> None: ...

    def _finish_iteration(self, job: JobRecord, it: int, rec: IterationRecord, state: JobState) -> None:
        job.count_final(state)
        for lst in self._listeners:
            lst.task_final(job, it, rec)
        self._notify_state(job, it, state)
        self._finals.append((job.name, it, state))
        self._maybe_complete(job)

    def _maybe_complete(self, job: JobRecord) -> None:
        if job.is_final or job.finished_count < job.total:
            return
        self._finish_job(job, job.final_state_from_iterations())

    def _finish_job(self, job: JobRecord, state: JobState, notify: bool = True, when: float | None = None) -> None:
        if job.is_final:
            return
        job.record.set_state(state, when)
        self.unfinished -= 1
        if notify:
            for lst in self._listeners:
                if not job.iterative:
                    lst.task_final(job, None, job.record)
                lst.job_final(job)
            self._notify_state(job, None, state)
        self._finals.append((job.name, None, state))
        if self.unfinished == 0:
            self._wake_idle()

    def _end_unstarted(self, job: JobRecord, state: JobState, reason: str) -> None:
        """A whole job ends before any of its tasks is handed out."""
        if job.is_final:
            return
        job.record.add_message(reason)
        if job.indices is not None:
            # its iterations end with it (and read its state): counted so, none is left "in schedule"
            job.cursor = len(job.indices)
            left = job.total - job.finished_count
            job.finished_count += left
            job.bad_count += left
        self._finish_job(job, state)

    def _omit(self, job: JobRecord, it: int | None, reason: str) -> None:
        if it is None:
            self._end_unstarted(job, JobState.OMITTED, reason)
            return
        job.parked.pop(it, None)
        rec = IterationRecord(JobState.OMITTED)
        rec.add_message(reason)
        job.its[it] = rec
        self._finish_iteration(job, it, rec, JobState.OMITTED)

    def _propagate(self) -> None:
        """Release or omit the dependants of everything that just ended (worklist, no recursion)."""
        if self._propagating:
            return
        self._propagating = True
        try:
            jobs = self.registry.jobs
            while self._finals:
                name, it, state = self._finals.popleft()
                if it is None:
                    self._iterations_ended_with(name)
                for wjob, wit in self.waiters.pop((name, it)):
                    if jobs.get(wjob.name) is not wjob or wjob.record.state in FINAL_STATES:
                        continue
                    if wit is None:
                        if state is JobState.SUCCEED:
                            wjob.waiting_for -= 1
                            if wjob.waiting_for == 0:
                                self._make_runnable(wjob)
                        else:
                            self._omit(wjob, None, _ended(name, it, state))
                    elif wit in wjob.parked:
                        if state is JobState.SUCCEED:
                            wjob.parked[wit] -= 1
                            if wjob.parked[wit] == 0:
                                del wjob.parked[wit]
                                wjob.released.append(wit)
                                self._make_runnable(wjob)
                        else:
                            self._omit(wjob, wit, _ended(name, it, state))
        finally:
            self._propagating = False

    def _iterations_ended_with(self, name: str) -> None:
        """Queue the ends of the waited-for iterations that ended with their job, unrun (`after: ["b:1"]`
        of a job omitted or canceled before b:1 started); a running one still ends on its own."""
        its = self.waiters.iterations(name)
        job = self.registry.jobs.get(name) if its else None       # almost every job: nobody waits for one
        if job is None:
            return
        for it in its:
            state = job.iteration_state(it)
            if state in FINAL_STATES:
                self._finals.append((name, it, state))

    # ------------------------------------------------------------- waiting
    @property
    def all_finished(self) -> bool:
        return self.unfinished == 0

    async def wait_all_finished(self) -> None:
        if self.unfinished == 0:
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self._idle_waiters.append(fut)
        await fut

    def _wake_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)



def _ended(name: str, it: int | None, state: JobState) -> str:
    """Why a dependant is omitted."""
    target = name if it is None else f"{name}:{it}"
    return f"dependency '{target}' ended {state.value}"
