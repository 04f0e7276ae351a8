"""`--slurm-partition-nodes`: starting partition managers, retries, and the readiness threshold (issue 6,
"Starting partitions"; reference: option list, `--slurm-partition-nodes`). Real processes, no Slurm: managers are
started as local processes whose command line the test replaces."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from qcg.pilotjob.governor.partition_starter import PartitionStarter, PartitionStartError, split_nodes
from qcg.pilotjob.partition import retries
from qcg.pilotjob.partition.local_nodes import local_resources


class FakeServer:
    """The part of PartitionServer the starter uses: registration events and losses."""

    def __init__(self) -> None:
        self.joined: dict[str, asyncio.Event] = {}
        self.lost: list[tuple[str, str]] = []

    def expect(self, member_id: str) -> asyncio.Event:
        return self.joined.setdefault(member_id, asyncio.Event())

    def lose(self, member_id: str, reason: str) -> None:
        self.lost.append((member_id, reason))


def _starter(loop: asyncio.AbstractEventLoop, tmp_path: Path, nodes: str, threshold: float,
             commands: dict[str, list[str]]) -> tuple[PartitionStarter, FakeServer]:
    server = FakeServer()
    starter = PartitionStarter(loop, server, start_method="local", ready_threshold=threshold,  # type: ignore[arg-type]
                               init_timeout=30)
    starter.plan(split_nodes(local_resources(nodes), 1), base_args=[], work_dir=str(tmp_path / "partitions"),
                 slurm=False)
    for pid, argv in commands.items():
        plan = starter.plans[pid]
        aux = plan.argv[plan.argv.index("--aux-dir") + 1]
        plan.argv = [*argv, "--aux-dir", aux]
    return starter, server


async def _start_error(starter: PartitionStarter) -> str:
    """The text of the PartitionStartError that `starter.start()` must raise."""
    try:
        with pytest.raises(PartitionStartError) as err:
            await starter.start()
    finally:
        await starter.shutdown(timeout=5)
    return str(err.value)


FAIL = [sys.executable, "-c", "import sys; print('no route to the governor', file=sys.stderr); sys.exit(3)"]
SLEEP = [sys.executable, "-c", "import time; time.sleep(30)"]


def test_split_nodes_last_group_may_be_smaller():
    groups = split_nodes(local_resources("a:1,b:1,c:1,d:1,e:1"), 2)
    assert [[n.name for n in g] for g in groups] == [["a", "b"], ["c", "d"], ["e"]]
    with pytest.raises(ValueError, match="at least 1"):
        split_nodes(local_resources("a:1"), 0)


def test_managers_that_never_register_are_retried_then_the_start_fails_clearly(tmp_path):
    async def main() -> None:
        starter, _ = _starter(asyncio.get_running_loop(), tmp_path, "a:1,b:1", 1.0,
                              {"part-0": FAIL, "part-1": FAIL})
        text = await _start_error(starter)
        assert "only 0 of 2 partition managers registered" in text
        # each says how its process ended and quotes its stderr (the next attempt would truncate the file)
        for pid in ("part-0", "part-1"):
            assert f"{pid} (the manager of partition {pid} ended before registering (exit code 3); stderr " in text
        assert text.count("no route to the governor") == 2, text
        assert all(p.attempts == retries.START_ATTEMPTS for p in starter.plans.values())

    asyncio.run(asyncio.wait_for(main(), 60))


def test_manager_still_starting_at_the_timeout_is_named_with_its_stderr(tmp_path):
    """A manager process that runs but never registers: the start error says so, and what it wrote."""
    async def main() -> None:
        starter, _ = _starter(asyncio.get_running_loop(), tmp_path, "a:1", 1.0, {"part-0": [
            sys.executable, "-c", "import sys, time; print('waiting for srun', file=sys.stderr, flush=True); "
            "time.sleep(30)"]})
        starter.init_timeout = 1.5
        text = await _start_error(starter)
        assert re.search(r"part-0 \(not registered after \d+\.\ds, attempt 1 still running", text), text
        assert "attempt 1 still running; stderr " in text and text.endswith("part-0.err: waiting for srun)"), text

    asyncio.run(asyncio.wait_for(main(), 60))


def test_threshold_met_without_the_manager_that_failed(tmp_path):
    async def main() -> None:
        starter, server = _starter(asyncio.get_running_loop(), tmp_path, "a:1,b:1", 0.5,
                                   {"part-0": FAIL, "part-1": SLEEP})
        task = asyncio.ensure_future(starter.start())
        await asyncio.sleep(0.3)
        server.joined["part-1"].set()          # part-1 registers (its process keeps running)
        try:
            ready = await asyncio.wait_for(task, 30)
        finally:
            await starter.shutdown(timeout=5)
        assert ready == ["part-1"]
        # the ended process of the registered manager (killed at shutdown) is not a loss once closing
        assert server.lost == []

    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("end, said", [
    ("pass", "manager process ended (exit code 0)"),
    ("os.kill(os.getpid(), 9)", "manager process ended (killed by signal 9 (SIGKILL))"),
])
def test_registered_manager_whose_process_ends_is_lost(tmp_path, end, said):
    """The loss names how the process ended (a kill -9 is not reported as an exit code)."""
    async def main() -> None:
        starter, server = _starter(asyncio.get_running_loop(), tmp_path, "a:1", 1.0,
                                   {"part-0": [sys.executable, "-c", f"import os, time; time.sleep(1); {end}"]})
        task = asyncio.ensure_future(starter.start())
        await asyncio.sleep(0.1)
        server.joined["part-0"].set()
        try:
            assert await asyncio.wait_for(task, 30) == ["part-0"]
            for _ in range(300):
                if server.lost:
                    break
                await asyncio.sleep(0.02)
        finally:
            await starter.shutdown(timeout=5)
        assert server.lost and server.lost[0][0] == "part-0"
        assert said in server.lost[0][1], server.lost

    asyncio.run(asyncio.wait_for(main(), 60))
