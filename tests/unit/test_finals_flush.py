"""When the service writes final states (issue 3: the journal is "written in batches and flushed before the
run reports success"; reference 13.1, the files behind `--resume`).

With an event publisher, the states of a loop turn are written at its end, before their events leave.
Without one (no `--net`, or `--disable-pub`) nothing waits for them but `--resume` and a reader of
jobs.report: one timer writes what ended within UNPUBLISHED_FINALS_DELAY, and an earlier flush (before
an answer) cancels it. The writers here only record the order of the calls.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from qcg.pilotjob.governor.service import UNPUBLISHED_FINALS_DELAY, Service
from qcg.pilotjob.governor.service_config import ServiceConfig


def _service(loop: asyncio.AbstractEventLoop, writes: list[str], publisher: bool) -> Service:
    svc = Service(ServiceConfig())
    svc.loop = loop
    svc.report = SimpleNamespace(flush=lambda: writes.append("report"))
    svc.journal = SimpleNamespace(flush=lambda: writes.append("journal"))
    svc.publisher = SimpleNamespace(flush=lambda: writes.append("events")) if publisher else None
    return svc


async def _until(cond, limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "not written in time"
        await asyncio.sleep(0.01)


def test_without_publisher_one_timer_writes_the_batch():
    async def main():
        loop = asyncio.get_running_loop()
        writes: list[str] = []
        svc = _service(loop, writes, publisher=False)
        t0 = loop.time()
        svc._schedule_turn_end()
        timer = svc._turn_end_timer
        assert timer is not None and timer.when() >= t0 + UNPUBLISHED_FINALS_DELAY
        svc._schedule_turn_end()                  # more ends meanwhile: the same timer
        assert svc._turn_end_timer is timer
        await _until(lambda: writes)
        assert writes == ["report", "journal"]    # the report first: a journalled end has its report line
        assert loop.time() >= t0 + UNPUBLISHED_FINALS_DELAY - 0.001
        assert svc._turn_end_timer is None and not svc._turn_end_pending

    asyncio.run(main())


def test_a_flush_before_the_timer_cancels_it():
    async def main():
        loop = asyncio.get_running_loop()
        writes: list[str] = []
        svc = _service(loop, writes, publisher=False)
        svc._schedule_turn_end()
        timer = svc._turn_end_timer
        svc.flush_finals()                        # as handle_request does before an answer
        assert writes == ["report", "journal"] and timer.cancelled()
        await asyncio.sleep(UNPUBLISHED_FINALS_DELAY * 3)
        assert writes == ["report", "journal"]

    asyncio.run(main())


def test_with_publisher_the_turn_end_writes_then_publishes():
    async def main():
        loop = asyncio.get_running_loop()
        writes: list[str] = []
        svc = _service(loop, writes, publisher=True)
        svc._schedule_turn_end()
        assert svc._turn_end_timer is None
        await asyncio.sleep(0)                    # the end of this loop turn
        assert writes == ["report", "journal", "events"]

    asyncio.run(main())
