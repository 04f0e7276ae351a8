"""`--show-progress`: a click progress bar over all tasks, redrawn a few times a second."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

import click

from qcg.pilotjob.governor.governor import GovernorListener

if TYPE_CHECKING:
    from qcg.pilotjob.api.jobdesc import JobDescription
    from qcg.pilotjob.governor.registry import IterationRecord, JobRecord


class Progress(GovernorListener):
    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.25) -> None:
        self._loop = loop
        self._interval = interval
        self._total = 0
        self._done = 0
        self._shown = 0
        self._bar: Any = None
        self._timer: asyncio.TimerHandle | None = None

    def submitted(self, rcnt: int, when: Any, descs: list["JobDescription"], raw: Any = None) -> None:
        self._total += sum(len(d.iteration) if d.iteration else 1 for d in descs)
        if self._bar is None:
            self._bar = click.progressbar(length=self._total, label="tasks", file=sys.stderr,
                                          show_pos=True, show_percent=True, show_eta=True)
            self._bar.__enter__()
            self._timer = self._loop.call_later(self._interval, self._tick)
        self._bar.length = self._total

    def task_final(self, job: "JobRecord", iteration: int | None, record: "IterationRecord") -> None:
        self._done += 1

    def job_final(self, job: "JobRecord") -> None:
        if job.iterative:   # iterations never handed out (omitted or canceled jobs) count as done too
            self._done += job.total - sum(1 for _ in job.its) if job.state.value in ("OMITTED", "CANCELED") else 0

    def _tick(self) -> None:
        self._draw()
        self._timer = self._loop.call_later(self._interval, self._tick)

    def _draw(self) -> None:
        if self._bar is not None and self._done > self._shown:
            self._bar.update(min(self._done, self._total) - self._shown)
            self._shown = min(self._done, self._total)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._bar is not None:
            self._draw()
            self._bar.__exit__(None, None, None)
