"""When the final states of tasks are written: `jobs.report`, then `track.states`, then their events.

The order is what makes `--resume` exact (README "Resume"): a final state in the journal always has its
report line (a kill between the two writes only makes `--resume` run those tasks again), and a client
that hears of an end (`wait4_any_job_finish`, an Executor future, an answer) never sees that task run
again after a `kill -9` and `--resume`.

When: at the end of the loop turn in which tasks ended, so the events of a turn leave together; with no
event publisher nothing waits for them but `--resume` and a reader of jobs.report, so one timer writes
what ended within UNPUBLISHED_FINALS_DELAY (a write per turn was two system calls a task when two tasks
run, about 5 % of a fan-out of 2000 short tasks). Always before a request is answered, and once a
second for report lines that no journal entry brought with it (the cancellations of a stop).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import structlog

from qcg.pilotjob.governor.aux_dir import own_opener

log = structlog.get_logger("service")

FLUSH_INTERVAL = 1.0
UNPUBLISHED_FINALS_DELAY = 0.05


class FinalsWriter:
    """`due` is the `on_pending` of the journal and the publisher: something waits to be written."""

    def __init__(self, loop: asyncio.AbstractEventLoop, report: Any, publisher: Any) -> None:
        self.loop = loop
        self.report = report
        self.publisher = publisher      # None: no events, the timer decides
        self.journal: Any = None        # set once made: its `on_pending` is `due`
        self.write_failures = 0         # flushes that could not write jobs.report or track.states
        self._due = False
        self._timer: asyncio.TimerHandle | None = None

    def due(self) -> None:
        if self._due:
            return
        self._due = True
        if self.publisher is None:
            self._timer = self.loop.call_later(UNPUBLISHED_FINALS_DELAY, self.flush)
        else:
            self.loop.call_soon(self.flush)

    def flush_if_due(self) -> None:
        if self._due:
            self.flush()

    def flush(self) -> None:
        self._due = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self.report.flush()
            self.journal.flush()
        except OSError as exc:
            # a full disk, a quota: the run goes on and answers; what is not written stays buffered and is
            # tried again (each turn with ends, each second), and its events wait for it
            self.write_failures += 1
            if self.write_failures == 1:
                print(f"Warning: jobs.report and track.states cannot be written now ({exc.strerror or exc}): "
                      f"the final states wait until they can be", file=sys.stderr)
            if self.write_failures == 1 or self.write_failures % 1000 == 0:
                log.error("final states not written; their events are held back", error=str(exc),
                          failures=self.write_failures)
            return
        if self.publisher is not None:
            self.publisher.flush()

    def close(self, report_name: str, status: dict | None, status_path: str) -> list[str]:
        """jobs.report, then track.states (a final state in the journal has its report line, so the
        states wait for the report: unwritten, those tasks run again on --resume), then the final status
        (None: left as it is) in any case. Returns what could not be written, and why."""
        failed: list[str] = []
        try:
            self.report.close()
            report_written = True
        except OSError as exc:
            report_written = False
            failed.append(f"{report_name}: {exc.strerror or exc}")
        try:
            self.journal.close(flush=report_written)
        except OSError as exc:
            failed.append(f"track.states: {exc.strerror or exc}")
        if status is not None:
            try:
                with open(status_path, "w", opener=own_opener) as f:
                    json.dump(status, f, indent=2)
            except OSError as exc:
                failed.append(f"{os.path.basename(status_path)}: {exc.strerror or exc}")
        return failed

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.flush()
            if self.publisher is not None:
                self.publisher.tend()
