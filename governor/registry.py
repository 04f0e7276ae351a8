"""The job registry: one record per job, iterations expanded lazily.

An iterative job of a million iterations is one `JobRecord` with a cursor;
an `IterationRecord` exists only for iterations that were handed out or
finished (their history and runtime are what `jobInfo` and the reports show).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from qcg.pilotjob.governor.states import BLOCKING_STATES, FINAL_STATES, JobState

if TYPE_CHECKING:
    from qcg.pilotjob.api.jobdesc import JobDescription
    from qcg.pilotjob.api.placeholders import FieldTemplate
    from qcg.pilotjob.partition.task import ResourceRequest

History = list[tuple[float, JobState]]  # (time.time(), state)
_NO_ITEMS: Mapping[Any, Any] = MappingProxyType({})
_NO_RELEASED: tuple[int, ...] = ()


class IterationRecord:
    """State of one task: a whole non-iterative job, or one iteration.

    Kept small, because a sweep holds one per finished iteration: the history
    is a flat list `[time, state, time, state, ...]` and the runtime facts are
    plain fields; the reference's `history` pairs and `runtime` dict are built
    only when someone asks for them.
    """

    __slots__ = ("state", "_hist", "allocation", "wd", "pid", "exit_code", "rtime", "messages", "partition")

    def __init__(self, state: JobState = JobState.QUEUED, when: float | None = None,
                 record: bool = True) -> None:
        self.state = state
        # an iteration's history starts when it is scheduled (as in the original)
        self._hist: list = [when or time.time(), state] if record else []
        self.allocation: str | None = None
        self.wd: str | None = None
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.rtime: float | None = None
        self.messages: str | None = None
        self.partition: str | None = None

    def set_state(self, state: JobState, when: float | None = None) -> None:
        self.state = state
        self._hist += (when or time.time(), state)

    def set_started(self, scheduled_at: float, started_at: float) -> None:
        """SCHEDULED then EXECUTING, as a start event reports them (one list extension)."""
        self.state = JobState.EXECUTING
        now = None if scheduled_at and started_at else time.time()     # as set_state: a missing time is now
        self._hist += (scheduled_at or now, JobState.SCHEDULED, started_at or now, JobState.EXECUTING)

    def started_time(self) -> float | None:
        """When it began EXECUTING, while it still is."""
        h = self._hist
        return h[-2] if h and h[-1] is JobState.EXECUTING else None

    @property
    def history(self) -> History:
        h = self._hist
        return list(zip(h[::2], h[1::2]))

    @property
    def runtime(self) -> dict[str, str]:
        return self.runtime_named(None)

    def runtime_named(self, pname: str | None) -> dict[str, str]:
        """The reference's runtime dict (all values strings), in its key order; `pname` (the process name,
        `process_name`) follows `pid`, as the original writes it."""
        rt: dict[str, str] = {}
        if self.allocation is not None:
            rt["allocation"] = self.allocation
        if self.wd is not None:
            rt["wd"] = self.wd
        if self.rtime is not None:
            rt["rtime"] = str(timedelta(seconds=self.rtime))
        if self.exit_code is not None:
            rt["exit_code"] = str(self.exit_code)
        if self.pid is not None:
            rt["pid"] = str(self.pid)
            if pname is not None:
                rt["pname"] = pname
        if self.partition is not None:
            rt["partition"] = self.partition
        return rt

    def add_message(self, message: str | None) -> None:
        if message:
            self.messages = message if not self.messages else f"{self.messages}\n{message}"


@dataclass(eq=False, slots=True, init=False)
class JobRecord:
    """A submitted job: description, state, iteration bookkeeping, dependencies."""

    desc: "JobDescription"
    seq: int
    rcnt: int
    submitted_at: datetime
    request: "ResourceRequest | None"
    record: IterationRecord
    # -- iterations (a plain job: indices None, the containers shared read-only empties)
    indices: range | None
    its: dict[int, IterationRecord]
    cursor: int                          # position in `indices` of the next iteration to hand out
    done_before: dict[int, JobState]     # restored by --resume
    parked: dict[int, int]               # iteration -> unmet per-iteration deps
    released: list[int]                  # parked iterations whose deps are now met
    finished_count: int
    bad_count: int                       # FAILED / CANCELED / OMITTED iterations
    executing_count: int
    canceled: bool
    # -- dependencies
    waiting_for: int                     # unmet job-level dependencies
    per_iteration_deps: tuple[str, ...]
    static_deps: tuple                   # (name, iteration or None) targets common to all iterations
    sized_per_iteration: bool            # an iteration scheduler sizes each iteration
    exec_template: "FieldTemplate | None"   # where the execution's placeholders are (None: nowhere)
    base_vars: dict[str, Any]
    name: str                            # the description's name, read on every event

    def __init__(self, desc: "JobDescription", seq: int, rcnt: int, submitted_at: datetime,
                 record: IterationRecord | None = None) -> None:
        # written out rather than generated: a submit of 100 000 jobs creates 100 000 of these
        self.desc = desc
        self.seq = seq
        self.rcnt = rcnt
        self.submitted_at = submitted_at
        self.request = None
        self.record = record if record is not None else IterationRecord()
        self.cursor = 0
        if desc.iteration is None:
            # a plain job never touches the iteration bookkeeping: shared empties that refuse writes
            # (a submit of 100 000 plain jobs saves 500 000 containers)
            self.indices = None
            self.its = self.done_before = self.parked = _NO_ITEMS  # type: ignore[assignment]
            self.released = _NO_RELEASED  # type: ignore[assignment]
        else:
            self.indices = desc.iteration.indices()
            self.its = {}
            self.done_before = {}
            self.parked = {}
            self.released = []
        self.finished_count = self.bad_count = self.executing_count = self.waiting_for = 0
        self.canceled = self.sized_per_iteration = False
        self.per_iteration_deps = self.static_deps = ()
        self.exec_template = None
        self.base_vars = _NO_ITEMS  # type: ignore[assignment]    # replaced when the job has a template
        self.name = desc.name

    @property
    def iterative(self) -> bool:
        return self.indices is not None

    @property
    def state(self) -> JobState:
        return self.record.state

    @property
    def total(self) -> int:
        return len(self.indices) if self.indices is not None else 1

    @property
    def is_final(self) -> bool:
        return self.record.state in FINAL_STATES

    def task_id(self, iteration: int | None) -> str:
        return self.desc.name if iteration is None else f"{self.desc.name}:{iteration}"

    def iteration_state(self, iteration: int) -> JobState:
        rec = self.its.get(iteration)
        if rec is not None:
            return rec.state
        if iteration in self.done_before:
            return self.done_before[iteration]
        # a job that ended as a whole before this iteration ran (omitted, canceled, or FAILED at submit as
        # too big: a job FAILED by its iterations has a record for each) ended it too
        if self.record.state in (JobState.OMITTED, JobState.CANCELED, JobState.FAILED):
            return self.record.state
        return JobState.QUEUED

    def final_state_from_iterations(self) -> JobState:
        if self.canceled:
            return JobState.CANCELED
        return JobState.FAILED if self.bad_count else JobState.SUCCEED

    def next_iteration(self) -> int | None:
        """Advance the cursor past finished (resumed) iterations; None when exhausted."""
        if self.released:
            return self.released.pop()
        assert self.indices is not None
        while self.cursor < len(self.indices):
            idx = self.indices[self.cursor]
            self.cursor += 1
            if idx in self.done_before:
                continue
            return idx
        return None

    def count_final(self, state: JobState) -> None:
        self.finished_count += 1
        if state in BLOCKING_STATES:
            self.bad_count += 1


class Registry:
    """All jobs known to the governor, by name, in submission order."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self._seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def __contains__(self, name: object) -> bool:
        return name in self.jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[JobRecord]:
        return iter(self.jobs.values())

    def get(self, name: str) -> JobRecord | None:
        return self.jobs.get(name)

    def add(self, job: JobRecord) -> None:
        self.jobs[job.name] = job

    def remove(self, name: str) -> JobRecord | None:
        return self.jobs.pop(name, None)


def split_task_name(name: str) -> tuple[str, int | None]:
    """`job:3` -> ("job", 3); `job` -> ("job", None). ValueError for `job:x`."""
    base, sep, it = name.rpartition(":")
    if not sep:
        return name, None
    try:
        return base, int(it)
    except ValueError:
        raise ValueError(f"'{name}': iteration index '{it}' is not an integer") from None


def process_name(desc: "JobDescription") -> str:
    """The `runtime.pname` of a job's tasks, as the original names it: `bash` for a script, else the
    executable's file name (before placeholders are substituted)."""
    execution = desc.execution
    return "bash" if execution.script is not None else os.path.basename(execution.exec or "")
