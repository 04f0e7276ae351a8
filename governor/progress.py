"""`--show-progress`: a click progress bar over all tasks, redrawn a few times a second.

On a terminal only: batch jobs send stderr to a file, where click draws
nothing but the label. There a plain line (`tasks: done/total (pct%)`) is
written every few seconds while the count moves, and at the end.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

import click

from qcg.pilotjob.governor.governor import GovernorListener

if TYPE_CHECKING:
    from qcg.pilotjob.api.jobdesc import JobDescription
    from qcg.pilotjob.governor.registry import IterationRecord, JobRecord


LINE_INTERVAL = 5.0      # seconds between the plain lines written when stderr is no terminal


class Progress(GovernorListener):
    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.25) -> None:
        self._loop = loop
        self._tty = sys.stderr.isatty()
        self._interval = interval if self._tty else LINE_INTERVAL
        self._total = 0
        self._done = 0
        self._shown = 0
        self._bar: Any = None
        self._timer: asyncio.TimerHandle | None = None

    def submitted(self, rcnt: int, when: Any, descs: list["JobDescription"], raw: Any = None) -> None:
        self._total += sum(len(d.iteration) if d.iteration else 1 for d in descs)
        if self._timer is None:
            if self._tty:
                self._bar = click.progressbar(length=self._total, label="tasks", file=sys.stderr,
                                              show_pos=True, show_percent=True, show_eta=True)
                self._bar.__enter__()
            self._timer = self._loop.call_later(self._interval, self._tick)
        if self._bar is not None:
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
        done = min(self._done, self._total)
        if done <= self._shown:
            return
        if self._bar is not None:
            self._bar.update(done - self._shown)
        else:
            pct = 100 * done // self._total if self._total else 100
            print(f"tasks: {done}/{self._total} ({pct}%)", file=sys.stderr, flush=True)
        self._shown = done

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._draw()
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
