"""The governor core: accepts jobs, tracks their states, releases dependants, dispatches tasks.

It talks to its partition through four calls (`submit`, `cancel`,
`never_fits`, `queue_limit`) and hears back through `task_started` and
`task_finished`; in flat mode those are plain method calls. Everything per
event is O(1) plus O(dependants): a heap of runnable jobs keyed by
submission order, an index of waiters per target, and a cursor per
iterative job. Cancel and remove are in cancellation.py; final states
(ending jobs and iterations, releasing or omitting their dependants, waiting
for all jobs to end) in final_states.py; both are base classes of `Governor`.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

import structlog

from qcg.pilotjob.governor import logs
from qcg.pilotjob.governor.admission import Admission, SizingPort
from qcg.pilotjob.governor.cancellation import STOPPED, Cancellation
from qcg.pilotjob.governor.dependencies import WaiterIndex, resolve_template
from qcg.pilotjob.governor.final_states import FinalStates
from qcg.pilotjob.governor.registry import (
    IterationRecord, JobRecord, Registry,
)
from qcg.pilotjob.governor.states import BLOCKING_STATES, STATE_OF, JobState
from qcg.pilotjob.governor.tasks import make_task, request_variables
from qcg.pilotjob.partition.task import Allocation, TaskFinished, TaskSpec, TaskStarted

if TYPE_CHECKING:
    from qcg.pilotjob.api.jobdesc import JobDescription

log = structlog.get_logger("governor")

#: times a task its partition ended on its own (CANCELED unasked: the manager lost its parent or was stopped)
#: runs again before that end stands -- as `partition_set.MAX_MOVES` bounds the moves of a lost partition's
INTERRUPTIONS = 3


def _task_fields(job: str, it: int | None, **fields: object) -> dict:
    """The fields of a task's debug line, those without a value left out."""
    return {k: v for k, v in (("job", job), ("iteration", it), *fields.items()) if v is not None}


class PartitionPort(SizingPort, Protocol):
    """What the governor needs from a partition (in-process object or remote proxy)."""

    queue_limit: int

    def submit(self, tasks: list[TaskSpec]) -> None: ...
    def cancel(self, task_ids: list[str]) -> None: ...


class GovernorListener:
    """Hooks for reports, journal, progress and event publishing; all optional."""

    def submitted(self, rcnt: int, when: datetime, descs: list["JobDescription"],
                  raw: list[dict] | None = None) -> None: ...
    def state_changed(self, job: JobRecord, iteration: int | None, state: JobState) -> None: ...
    def task_final(self, job: JobRecord, iteration: int | None, record: IterationRecord) -> None: ...
    def job_final(self, job: JobRecord) -> None: ...
    def unstarted_canceled(self, job: JobRecord, iterations: Iterable[int], when: float) -> None: ...
    def removed(self, names: list[str]) -> None: ...


class Governor(Cancellation, FinalStates):
    def __init__(self, loop: asyncio.AbstractEventLoop, partition: PartitionPort,
                 listeners: Iterable[GovernorListener] = ()) -> None:
        self.loop = loop
        self.partition = partition
        self._listeners: list[GovernorListener] = []
        self._on_state: list[Callable[[JobRecord, int | None, JobState], None]] = []
        for lst in listeners:
            self.add_listener(lst)
        self.registry = Registry()
        self.admission = Admission(self.registry, partition)
        self.waiters = WaiterIndex()
        self.inflight: dict[str, tuple[JobRecord, int | None]] = {}
        self._runnable: list[tuple[int, int, JobRecord]] = []
        self._in_heap: set[JobRecord] = set()   # by identity: a removed name may be reused
        self._dispatch_pending = False
        self._finals: deque[tuple[str, int | None, JobState]] = deque()   # ended targets to propagate
        self._propagating = False
        self.unfinished = 0                 # jobs not yet in a final state
        self.rcnt = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._alloc_text: dict[Allocation, str] = {}
        self._requeues: dict[str, int] = {}
        self._interruptions: dict[str, int] = {}
        self.stopping = False               # cancellations from now on are the service stopping
        self.canceled_by_user: set[str] = set()   # tasks (and iterative jobs) a user canceled while they ran
        self.unfittable: dict[str, str] = {}    # jobs of the last submit FAILED at once: name -> why
        self.requeue_limit = 1             # runs again elsewhere after a lost node, at most this often
        # refill the partition inside each exit (flat: the partition's next pass sees the task at once);
        # with remote partitions, one dispatch per loop turn batches the refills of many exits
        self.eager_dispatch = True

    @property
    def listeners(self) -> tuple[GovernorListener, ...]:
        """Read-only: `add_listener` also files a listener under the hooks it implements."""
        return tuple(self._listeners)

    def add_listener(self, listener: GovernorListener) -> None:
        self._listeners.append(listener)
        # most listeners (report, journal) ignore state changes: three calls per task saved
        if type(listener).state_changed is not GovernorListener.state_changed:
            self._on_state.append(listener.state_changed)

    def _notify_state(self, job: JobRecord, it: int | None, state: JobState) -> None:
        for callback in self._on_state:
            callback(job, it, state)

    # ------------------------------------------------------------------ submit
    def submit(self, descs: list["JobDescription"], *, rcnt: int | None = None, when: datetime | None = None,
               done: dict[str, dict[int | None, JobState]] | None = None,
               raw: list[dict] | None = None) -> list[str]:
        """Register a batch atomically; raise InvalidJobDescriptionError naming every problem.

        `done` (from --resume) gives the final states already reached, per
        job and iteration (None for a plain job). `raw` are the job dicts as
        received (the journal stores them instead of re-serialising).
        """
        admitted = self.admission.check(descs)
        if rcnt is None:
            rcnt = self.rcnt + 1
        when = when or datetime.now()
        for lst in self._listeners:
            lst.submitted(rcnt, when, descs, raw)       # the journal may still refuse the batch
        self.rcnt = max(self.rcnt, rcnt)
        base = request_variables(rcnt, when)
        ts = when.timestamp()
        jobs = [self.admission.record(job, rcnt, when, ts, base) for job in admitted]
        self.unfinished += len(jobs)
        if done:
            for job in jobs:
                restored = done.get(job.name)
                if restored:
                    self._restore(job, restored)
        self.unfittable = {a.desc.name: a.never_fits for a in admitted if a.never_fits}
        for name, reason in self.unfittable.items():
            self._end_unstarted(self.registry.jobs[name], JobState.FAILED, f"field 'resources': {reason}")
        for job in jobs:
            self._register_dependencies(job)
        self._propagate()
        self._request_dispatch()
        return [j.name for j in jobs]

    def _restore(self, job: JobRecord, done: dict[int | None, JobState]) -> None:
        if not job.iterative:
            state = done.get(None)
            if state is not None:
                self._finish_job(job, state, notify=False)
            return
        for it, state in done.items():
            if it is None:
                continue
            job.done_before[it] = state
            job.count_final(state)
        if job.finished_count >= job.total:
            self._finish_job(job, job.final_state_from_iterations(), notify=False)
        elif None in done:
            self._finish_job(job, done[None], notify=False)

    def _register_dependencies(self, job: JobRecord) -> None:
        if job.is_final:
            return
        for name, it in job.static_deps:
            state = self._target_state(name, it)
            if state is JobState.SUCCEED:
                continue
            if state in BLOCKING_STATES:
                self._omit(job, None, f"dependency '{name}' ended {state.value}")
                return
            job.waiting_for += 1
            self.waiters.add((name, it), (job, None))
        if job.waiting_for == 0:
            self._make_runnable(job)

    def _target_state(self, name: str, it: int | None) -> JobState | None:
        job = self.registry.get(name)
        if job is None:
            return None
        if it is None:
            return job.state
        return job.iteration_state(it)

    # ---------------------------------------------------------------- dispatch
    def _make_runnable(self, job: JobRecord) -> None:
        if job not in self._in_heap and not job.is_final:
            self._in_heap.add(job)
            heapq.heappush(self._runnable, (job.seq, id(job), job))
            self._request_dispatch()

    def _request_dispatch(self) -> None:
        if not self._dispatch_pending and self._runnable:
            self._dispatch_pending = True
            self.loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_pending = False
        room = self.partition.queue_limit - len(self.inflight)
        heap = self._runnable
        batch: list[TaskSpec] = []
        while room > 0 and heap:
            job = heap[0][2]
            spec = None if (job.is_final or job.canceled or self.registry.get(job.name) is not job) \
                else self._next_task(job)
            if spec is None or job.indices is None:     # done, or a plain job's only task
                heapq.heappop(heap)
                self._in_heap.discard(job)
                if spec is None:
                    continue
            batch.append(spec)
            room -= 1
        if batch:
            self.partition.submit(batch)
        self._propagate()

    def _next_task(self, job: JobRecord) -> TaskSpec | None:
        if not job.iterative:
            if job.task_id(None) in self.inflight or job.record.state is not JobState.QUEUED:
                return None
            self.inflight[job.name] = (job, None)
            assert job.request is not None
            return make_task(job, None, job.request)
        while True:
            it = job.next_iteration()
            if it is None:
                return None
            if job.per_iteration_deps and not self._iteration_deps_met(job, it):
                continue
            job.its[it] = IterationRecord(JobState.QUEUED, record=False)
            tid = job.task_id(it)
            self.inflight[tid] = (job, it)
            assert job.request is not None and job.indices is not None
            if not job.sized_per_iteration:
                return make_task(job, it, job.request)
            try:
                request = self.admission.request_of(job.desc, it - job.indices.start)
            except ValueError as exc:
                # an iteration scheduler gave this iteration a size no node has (the submit checked the
                # first): it can never run, so it FAILS (reference 7.2) and the others go on
                self.loop.call_soon(self.task_finished, TaskFinished(tid, "FAILED", message=f"resources: {exc}"))
                continue
            return make_task(job, it, request)

    def _iteration_deps_met(self, job: JobRecord, it: int) -> bool:
        assert job.desc.iteration is not None
        values = job.desc.iteration.substitutions(it)
        unmet = 0
        for template in job.per_iteration_deps:
            name, dep_it = resolve_template(template, it, values)
            state = self._target_state(name, dep_it)
            if state is JobState.SUCCEED:
                continue
            if state is None or state in BLOCKING_STATES:
                why = f"dependency '{name if dep_it is None else f'{name}:{dep_it}'}' " + \
                      ("does not exist" if state is None else f"ended {state.value}")
                self._omit(job, it, why)
                return False
            unmet += 1
            self.waiters.add((name, dep_it), (job, it))
        if unmet:
            job.parked[it] = unmet
            return False
        return True

    # ------------------------------------------------------------ task events
    def task_started(self, ev: TaskStarted) -> None:
        entry = self.inflight.get(ev.task_id)
        if entry is None:
            log.debug("start of unknown task", task=ev.task_id)
            return
        job, it = entry
        rec = job.record if it is None else job.its[it]
        rec.allocation = self._describe(ev.allocation)
        rec.wd = ev.wd
        rec.pid = ev.pid
        rec.partition = ev.partition
        rec.set_started(ev.scheduled_at, ev.started_at)
        if logs.task_lines:
            log.debug("task started", **_task_fields(job.name, it, where=rec.allocation, pid=ev.pid,
                                                     partition=ev.partition, wd=ev.wd))
        if it is not None:
            job.executing_count += 1
            if job.record.state is JobState.QUEUED:
                job.record.set_state(JobState.EXECUTING, ev.started_at)
                self._notify_state(job, None, JobState.EXECUTING)
        self._notify_state(job, it, JobState.EXECUTING)

    def _describe(self, allocation: "Allocation") -> str:
        """The allocation string, one shared copy per distinct allocation (sweeps repeat them)."""
        text = self._alloc_text.get(allocation)
        if text is None:
            text = allocation.describe()
            if len(self._alloc_text) < 65536:
                self._alloc_text[allocation] = text
        return text

    def task_finished(self, ev: TaskFinished) -> None:
        entry = self.inflight.pop(ev.task_id, None)
        if entry is None:
            log.debug("end of unknown task", task=ev.task_id)
            return
        job, it = entry
        rec = job.record if it is None else job.its[it]
        was_executing = rec.state is JobState.EXECUTING
        if it is not None and was_executing:
            job.executing_count -= 1
        # CANCELED when nobody asked: its partition manager ended it on its own (it lost its parent, it was
        # stopped) and told before it was declared lost (helper report: a governor stalled for a minute read
        # the ends first, and the tasks stayed CANCELED). An interruption, not a decision: it runs again.
        # At most INTERRUPTIONS times, as a lost partition's tasks move at most MAX_MOVES times.
        # Neither, nor a requeue, when the user canceled it: its end is the user's decision.
        interrupted = ev.state == "CANCELED" and not self.stopping \
            and self._interruptions.get(ev.task_id, 0) < INTERRUPTIONS
        if (interrupted or ev.requeue and self._requeues.get(ev.task_id, 0) < self.requeue_limit) \
                and not job.canceled and ev.task_id not in self.canceled_by_user \
                and self.registry.get(job.name) is job:
            counts = self._interruptions if interrupted else self._requeues
            counts[ev.task_id] = counts.get(ev.task_id, 0) + 1
            log.warning("task requeued", task=ev.task_id, reason=ev.message)
            rec.add_message(ev.message)
            if it is None:
                rec.set_state(JobState.QUEUED)
            else:
                del job.its[it]
                job.released.append(it)
            self._make_runnable(job)
            return
        # a partition manager does not repeat the start time it sent in the start event
        started = ev.started_at if ev.started_at is not None else rec.started_time() if was_executing else None
        if started is not None and ev.finished_at is not None:
            rec.rtime = max(0.0, ev.finished_at - started)
        if ev.exit_code is not None:
            rec.exit_code = ev.exit_code
        if ev.allocation is not None and rec.allocation is None:
            rec.allocation = self._describe(ev.allocation)
        if ev.partition is not None and rec.partition is None:
            rec.partition = ev.partition
        if ev.state == "CANCELED" and self.canceled_by_stop(ev.task_id):
            rec.add_message(STOPPED)        # the partition only knows it was told to cancel
        else:
            rec.add_message(ev.message)
        state = STATE_OF[ev.state]
        if logs.task_lines:
            log.debug("task finished", **_task_fields(job.name, it, state=ev.state, exit_code=ev.exit_code,
                                                      reason=ev.message, where=rec.allocation))
        if it is None:
            self._finish_job(job, state, when=ev.finished_at)
        else:
            rec.set_state(state, ev.finished_at)
            self._finish_iteration(job, it, rec, state)
        # over, and journaled: forgotten, as its name may come back (removeJob frees it; review of c48cefc)
        self.canceled_by_user.discard(ev.task_id)
        self._interruptions.pop(ev.task_id, None)
        self._requeues.pop(ev.task_id, None)
        self._propagate()
        if self._runnable:
            if self.eager_dispatch:
                self._dispatch()
            else:
                self._request_dispatch()

    def task_redispatched(self, task_id: str, reason: str) -> None:
        """Its partition was lost; the task waits to run again elsewhere (at-least-once)."""
        entry = self.inflight.get(task_id)
        if entry is None:
            return
        job, it = entry
        rec = job.record if it is None else job.its[it]
        if it is not None and rec.state is JobState.EXECUTING:
            job.executing_count -= 1
        rec.add_message(reason)
        if rec.state is not JobState.QUEUED:
            rec.set_state(JobState.QUEUED)
            self._notify_state(job, it, JobState.QUEUED)

    def capacity_changed(self) -> None:
        """A partition joined, left or changed its credit: more (or fewer) tasks may be handed out."""
        self.admission.forget_sizes()
        self._request_dispatch()
