"""api/unless_stopped.py: the wait the service's start-up and the node agent's run lock share."""

from __future__ import annotations

import asyncio

from qcg.pilotjob.api.unless_stopped import unless_stopped


def test_the_works_result_when_it_ends_first_false_included():
    async def main() -> list:
        stop = asyncio.Event()

        async def work(value: bool) -> bool:
            await asyncio.sleep(0.01)
            return value

        return [await unless_stopped(work(True), stop), await unless_stopped(work(False), stop)]

    assert asyncio.run(main()) == [True, False]


def test_a_stop_first_cancels_the_work_and_waits_for_its_clean_up():
    cleaned: list[str] = []

    async def main() -> object:
        stop = asyncio.Event()

        async def work() -> bool:
            try:
                await asyncio.sleep(60)
            finally:
                cleaned.append("work")
            return True

        asyncio.get_running_loop().call_later(0.05, stop.set)
        return await asyncio.wait_for(unless_stopped(work(), stop), 10)

    assert asyncio.run(main()) is None
    assert cleaned == ["work"]
