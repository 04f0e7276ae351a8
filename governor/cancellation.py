"""Cancel and remove: the part of the governor that ends or drops jobs on request.

`Cancellation` is a base class of `Governor` (governor.py). It uses the
governor's registry, its tasks in flight and its partition, and ends jobs
through the governor's own `_finish_job` / `_finish_iteration` so that
reports, journal and dependants see a canceled job as any other end. A task
already handed to a partition is canceled there; its CANCELED end arrives
later as a task event. A cancel while the service stops (`stopping`) is
not the user's: the journal leaves such ends out, so `--resume` runs the
tasks again.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

from qcg.pilotjob.governor.registry import IterationRecord, JobRecord, split_task_name
from qcg.pilotjob.governor.states import FINAL_STATES, JobState

if TYPE_CHECKING:
    from qcg.pilotjob.governor.governor import GovernorListener, PartitionPort
    from qcg.pilotjob.governor.registry import Registry

STOPPED = "canceled: the service stopped before it ended (--resume runs it again)"
UNSTARTED_LISTED = 100_000   # report lines for the never-started iterations of one canceled job (~0.1 s)


class Cancellation:
    # the Governor's (see governor.py)
    registry: "Registry"
    partition: "PartitionPort"
    inflight: dict[str, tuple[JobRecord, int | None]]
    stopping: bool
    canceled_by_user: set[str]
    _listeners: "list[GovernorListener]"

    if TYPE_CHECKING:
        def _finish_job(self, job: JobRecord, state: JobState, notify: bool = True,
                        when: float | None = None) -> None: ...
        def _finish_iteration(self, job: JobRecord, it: int, rec: IterationRecord, state: JobState) -> None: ...
        def _maybe_complete(self, job: JobRecord) -> None: ...
        def _propagate(self) -> None: ...

    def cancel(self, names: list[str]) -> tuple[int, dict[str, str]]:
        canceled = 0
        errors: dict[str, str] = {}
        to_partition: list[str] = []
        for full in names:
            try:
                name, it = split_task_name(full)
            except ValueError as exc:
                errors[full] = str(exc)
                continue
            job = self.registry.get(name)
            if job is None:
                errors[full] = f"job '{name}' does not exist"
                continue
            if it is not None:
                err = self._cancel_iteration(job, it, to_partition)
            else:
                err = self._cancel_job(job, to_partition)
            if err:
                errors[full] = err
            else:
                canceled += 1
        if to_partition:
            if not self.stopping:
                # their CANCELED ends are the user's decision, whenever they arrive (the journal asks)
                self.canceled_by_user.update(to_partition)
            self.partition.cancel(to_partition)
        self._propagate()
        return canceled, errors

    def _cancel_job(self, job: JobRecord, to_partition: list[str]) -> str | None:
        if job.is_final:
            return f"job '{job.name}' already finished ({job.state.value})"
        if job.canceled:
            return f"job '{job.name}' already canceled"
        job.canceled = True
        if job.iterative and not self.stopping:
            self.canceled_by_user.add(job.name)
        if not job.iterative:
            if job.name in self.inflight:
                to_partition.append(job.name)
            else:
                job.record.add_message(self._cancel_text())
                self._finish_job(job, JobState.CANCELED)
            return None
        assert job.indices is not None
        for it in list(job.parked) + job.released:
            job.parked.pop(it, None)
            rec = IterationRecord(JobState.CANCELED)
            job.its[it] = rec
            self._finish_iteration(job, it, rec, JobState.CANCELED)
        job.released.clear()
        # never started: counted, not enumerated (a sweep may have 10**12 iterations)
        rest = job.indices[job.cursor:]
        done = job.done_before
        remaining = len(rest) - (sum(1 for i in done if i in rest) if done else 0)
        if remaining and not self.stopping:
            # the user's cancel ends each of them, as in the original (a `jobs.report` line each, the first
            # UNSTARTED_LISTED of them); a stop only interrupts them: `--resume` runs them
            listed = list(itertools.islice((i for i in rest if i not in done) if done else rest, UNSTARTED_LISTED))
            if remaining > len(listed):
                job.record.add_message(f"{remaining} iterations canceled before they started; the report lists "
                                       f"the first {len(listed)}")
            when = time.time()
            for lst in self._listeners:
                lst.unstarted_canceled(job, listed, when)
        job.cursor = len(job.indices)
        job.finished_count += remaining
        job.bad_count += remaining
        to_partition.extend(tid for tid, (j, _) in self.inflight.items() if j is job)
        self._maybe_complete(job)
        return None

    def _cancel_iteration(self, job: JobRecord, it: int, to_partition: list[str]) -> str | None:
        if job.indices is None or it not in job.indices:
            return f"job '{job.name}' has no iteration {it}"
        if job.iteration_state(it) in FINAL_STATES:
            return f"iteration {it} of job '{job.name}' already finished"
        tid = job.task_id(it)
        if tid in self.inflight:
            to_partition.append(tid)
            return None
        # not handed out yet: finish it now, and make the cursor skip it
        job.parked.pop(it, None)
        if it in job.released:
            job.released.remove(it)
        rec = IterationRecord(JobState.CANCELED)
        rec.add_message(self._cancel_text())
        job.its[it] = rec
        job.done_before[it] = JobState.CANCELED
        self._finish_iteration(job, it, rec, JobState.CANCELED)
        return None

    def remove(self, names: list[str]) -> tuple[int, dict[str, str]]:
        removed: list[str] = []
        errors: dict[str, str] = {}
        for name in names:
            job = self.registry.get(name)
            if job is None:
                errors[name] = f"job '{name}' does not exist"
            elif not job.is_final:
                errors[name] = f"job '{name}' not finished ({job.state.value}) - can not be removed"
            else:
                self.registry.remove(name)
                self.canceled_by_user.discard(name)     # an iterative job's own entry
                removed.append(name)
        if removed:
            for lst in self._listeners:
                lst.removed(removed)
        return len(removed), errors

    def canceled_by_stop(self, task_id: str) -> bool:
        """Whether a CANCELED end of this task (or iterative job) came from the service stopping, not from a
        user: the journal leaves it out so that `--resume` runs the task again."""
        return self.stopping and task_id not in self.canceled_by_user

    def _cancel_text(self) -> str:
        return STOPPED if self.stopping else "canceled by user"

    def cancel_everything(self) -> None:
        """Cancel every unfinished job (used by `finish` and on signals)."""
        self.stopping = True
        names = [j.name for j in self.registry if not j.is_final and not j.canceled]
        if names:
            self.cancel(names)

