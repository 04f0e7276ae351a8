"""Job and task states of the reference, and which of them are final."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    QUEUED = "QUEUED"
    SCHEDULED = "SCHEDULED"
    EXECUTING = "EXECUTING"
    SUCCEED = "SUCCEED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    OMITTED = "OMITTED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset({JobState.SUCCEED, JobState.FAILED, JobState.CANCELED, JobState.OMITTED})
# A dependant of a job that ended in one of these will never run.
BLOCKING_STATES = frozenset({JobState.FAILED, JobState.CANCELED, JobState.OMITTED})
# value -> member: a dict lookup, where `JobState(value)` goes through the enum machinery (~15x slower)
STATE_OF: dict[str, JobState] = {s.value: s for s in JobState}
