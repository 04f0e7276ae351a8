"""When the service writes final states (issue 3: the journal is "written in batches and flushed before the
run reports success"; reference 13.1, the files behind `--resume`): governor/finals_writer.py.

With an event publisher, the states of a loop turn are written at its end, before their events leave.
Without one (no `--net`, or `--disable-pub`) nothing waits for them but `--resume` and a reader of
jobs.report: one timer writes what ended within UNPUBLISHED_FINALS_DELAY, and an earlier flush (before
an answer) cancels it. The writers here only record the order of the calls.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from qcg.pilotjob.governor.finals_writer import UNPUBLISHED_FINALS_DELAY, FinalsWriter


def _writer(writes: list[str], publisher: bool) -> FinalsWriter:
    events = SimpleNamespace(flush=lambda: writes.append("events")) if publisher else None
    w = FinalsWriter(asyncio.get_running_loop(), SimpleNamespace(flush=lambda: writes.append("report")), events)
    w.journal = SimpleNamespace(flush=lambda: writes.append("journal"))
    return w


async def _until(cond, limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "not written in time"
        await asyncio.sleep(0.01)


def test_without_publisher_one_timer_writes_the_batch():
    async def main():
        loop = asyncio.get_running_loop()
        writes: list[str] = []
        w = _writer(writes, publisher=False)
        t0 = loop.time()
        w.due()
        timer = w._timer
        assert timer is not None and timer.when() >= t0 + UNPUBLISHED_FINALS_DELAY
        w.due()                                   # more ends meanwhile: the same timer
        assert w._timer is timer
        await _until(lambda: writes)
        assert writes == ["report", "journal"]    # the report first: a journalled end has its report line
        assert loop.time() >= t0 + UNPUBLISHED_FINALS_DELAY - 0.001
        assert w._timer is None and not w._due

    asyncio.run(main())


def test_a_flush_before_the_timer_cancels_it():
    async def main():
        writes: list[str] = []
        w = _writer(writes, publisher=False)
        w.due()
        timer = w._timer
        w.flush_if_due()                          # as the service does before an answer
        assert writes == ["report", "journal"] and timer.cancelled()
        w.flush_if_due()                          # nothing due: nothing written
        await asyncio.sleep(UNPUBLISHED_FINALS_DELAY * 3)
        assert writes == ["report", "journal"]

    asyncio.run(main())


def test_with_publisher_the_turn_end_writes_then_publishes():
    async def main():
        writes: list[str] = []
        w = _writer(writes, publisher=True)
        w.due()
        assert w._timer is None
        await asyncio.sleep(0)                    # the end of this loop turn
        assert writes == ["report", "journal", "events"]

    asyncio.run(main())


def test_a_failed_write_holds_the_events_back_and_is_tried_again():
    """A full disk: nothing is published while the states are not on disk; the next flush tries again."""
    async def main():
        writes: list[str] = []
        w = _writer(writes, publisher=True)
        full = [True]

        def journal_flush() -> None:
            if full[0]:
                raise OSError(28, "No space left on device")
            writes.append("journal")

        w.journal = SimpleNamespace(flush=journal_flush)
        w.due()
        await asyncio.sleep(0)
        assert writes == ["report"] and w.write_failures == 1
        full[0] = False
        w.flush()
        assert writes == ["report", "report", "journal", "events"]

    asyncio.run(main())
