"""Node agents with `--proc-stats-dir` as real processes, without Slurm (reference 16.1 "How it works").

The agents are started as `--nl-start-method ssh` starts them, through a
stand-in for ssh that runs the command here. An agent ended by SIGTERM (its
partition or Slurm stopping it) writes its file all the same.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import time
from pathlib import Path

import psutil
import pytest

from qcg.pilotjob.api.jobparse import parse_jobs
from qcg.pilotjob.governor.governor import Governor
from qcg.pilotjob.partition.agent_command import agent_args
from qcg.pilotjob.partition.agent_launcher import AgentLauncher
from qcg.pilotjob.partition.partition import Partition, PartitionConfig
from qcg.pilotjob.partition.local_nodes import local_resources

FAKE_SSH = """#!/bin/bash
while [[ "$1" == -* ]]; do shift 2; done
shift
exec bash -c "$1"
"""
WAIT = 30.0


def _agent_pid(node: str, keys: str) -> int | None:
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "qcg.pilotjob.agent" in cmd and cmd[cmd.index("--node") + 1:][:1] == [node] \
                and cmd[cmd.index("--keys") + 1:][:1] == [keys]:
            return p.pid
    return None


async def _until(check, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {WAIT}s"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("stats", [True, False], ids=["enabled", "disabled"])
def test_agents_write_their_files_also_when_terminated(tmp_path: Path, stats: bool) -> None:
    """Node `a`'s agent ends normally at the partition's exit, node `b`'s by SIGTERM while its task runs:
    both leave ptrace_{node}_... in the working directory. Disabled: the agents get no option and write nothing."""
    ssh = tmp_path / "fake-ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(ssh.stat().st_mode | stat.S_IEXEC)
    wd = tmp_path / "wd"
    wd.mkdir()
    keys = str(tmp_path / "keys")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        res = local_resources("a:1,b:1")
        part = Partition(loop, res, PartitionConfig(root_wd=str(wd), scratch_dir=str(tmp_path)), events=None)
        gov = Governor(loop, part, [])
        part.events = gov
        launcher = AgentLauncher(loop, ["a", "b"], part._launched, part._exited, keys_dir=keys, start_method="ssh",
                                 ssh_command=[str(ssh)], bind_host="127.0.0.1", init_timeout=WAIT,
                                 on_node_state=part.node_state, proc_stats_dir=str(wd) if stats else None)
        part.attach_launcher(launcher)
        await asyncio.wait_for(launcher.start(), WAIT)
        try:
            gov.submit(parse_jobs([{"name": "w", "iteration": {"stop": 2},
                                    "execution": {"exec": "bash", "args": ["-c", "sleep 2.5 & wait"]}}]))
            await _until(lambda: len(part.running) == 2, "two tasks running")
            await asyncio.sleep(1.5)                  # a poll (every second) sees them
            b = _agent_pid("b", keys)
            assert b is not None
            cmd = psutil.Process(b).cmdline()
            assert ("--proc-stats-dir" in cmd) == stats, cmd
            os.kill(b, signal.SIGTERM)
            await _until(lambda: not psutil.pid_exists(b) or psutil.Process(b).status() == psutil.STATUS_ZOMBIE,
                         "agent b ended")
        finally:
            await asyncio.wait_for(part.shutdown(), WAIT)

    asyncio.run(asyncio.wait_for(main(), 3 * WAIT))
    files = {json.loads(f.read_text())["node"]: f for f in wd.glob("ptrace_*.log")}
    if not stats:
        assert files == {}
        return
    assert sorted(files) == ["a", "b"], files
    for node, path in files.items():
        assert path.name.startswith(f"ptrace_{node}_")
        procs = json.loads(path.read_text())["processes"]
        assert ["bash", "-c", "sleep 2.5 & wait"] in [p["cmdline"] for p in procs if p["name"] == "bash"], procs
        assert not [p for p in procs if "orphan_guard" in " ".join(p["cmdline"])], procs   # not a task


def test_agent_option_only_when_enabled() -> None:
    """The agent's argv is unchanged without --enable-proc-stats (reference 16.2: the feature is opt-in)."""
    assert "--proc-stats-dir" not in agent_args("n1", "tcp://h:1", "/k")
    assert agent_args("n1", "tcp://h:1", "/k", proc_stats_dir="/wd")[-2:] == ["--proc-stats-dir", "/wd"]
