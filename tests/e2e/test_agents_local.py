"""Node agents as real processes on this machine (issue 5 "Agents"), without Slurm.

The agents are started the way `--nl-start-method ssh` starts them, through a
stand-in for ssh that runs the remote command line locally (and refuses one
node, to play an agent that cannot start).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from qcg.pilotjob.api.jobdesc import Execution
from qcg.pilotjob.api.jobparse import parse_jobs
from qcg.pilotjob.governor.governor import Governor
from qcg.pilotjob.partition.agent_launcher import AgentLauncher, AgentStartError
from qcg.pilotjob.partition.partition import Partition, PartitionConfig
from qcg.pilotjob.partition.local_nodes import local_resources
from qcg.pilotjob.partition.task import ResourceRequest, TaskSpec

FAKE_SSH = """#!/bin/bash
# fake ssh: ssh [options] NODE COMMAND -> run COMMAND here; node 'bad' is unreachable
while [[ "$1" == -* ]]; do shift 2; done
node=$1; shift
if [[ "$node" == bad* ]]; then echo "ssh: connect to host $node: refused" >&2; exit 255; fi
exec bash -c "$1"
"""


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def fake_ssh(tmp_path):
    path = tmp_path / "fake-ssh"
    path.write_text(FAKE_SSH)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


async def _setup(tmp_path, nodes_spec, fake_ssh, threshold=1.0, timeout=20.0):
    loop = asyncio.get_running_loop()
    res = local_resources(nodes_spec)
    wd = tmp_path / "wd"
    wd.mkdir(exist_ok=True)
    part = Partition(loop, res, PartitionConfig(root_wd=str(wd), scratch_dir=str(tmp_path)), events=None)
    gov = Governor(loop, part, [])
    part.events = gov
    names = [n.name for n in res.nodes]
    launcher = AgentLauncher(loop, names, part._launched, part._exited, keys_dir=str(tmp_path / "keys"),
                             start_method="ssh", ssh_command=[fake_ssh], bind_host="127.0.0.1",
                             init_timeout=timeout, ready_threshold=threshold, on_node_state=part.node_state)
    part.attach_launcher(launcher)
    await launcher.start()
    return gov, part, launcher, res


async def _wait_final(gov, name, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not gov.registry.get(name).is_final:
        assert time.monotonic() < deadline, f"job {name} not finished in {timeout}s"
        await asyncio.sleep(0.02)
    return gov.registry.get(name)


def _agent_pids(node, tmp_path):
    """This test's agents of `node` (tests running in parallel have agents of the same node names)."""
    keys = str(tmp_path / "keys")
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "qcg.pilotjob.agent" in cmd and "--node" in cmd and cmd[cmd.index("--node") + 1] == node \
                and "--keys" in cmd and cmd[cmd.index("--keys") + 1] == keys:
            out.append(p.pid)
    return out


def test_tasks_run_through_agents(tmp_path, fake_ssh):
    """Issue 5 Agents: one agent per node, one persistent connection each; tasks run on their nodes."""
    async def main():
        gov, part, launcher, res = await _setup(tmp_path, "a:2,b:2", fake_ssh)
        try:
            assert sorted(launcher.ready_nodes) == ["a", "b"]
            gov.submit(parse_jobs([{"name": "it", "execution": {"script": "echo $QCG_PM_NODELIST > out.${it}"},
                                    "iteration": {"stop": 40}}]))
            job = await _wait_final(gov, "it")
            assert job.state.value == "SUCCEED"
            seen = {(tmp_path / "wd" / f"out.{i}").read_text().strip() for i in range(40)}
            assert seen == {"a", "b"}
        finally:
            await part.shutdown()
        assert _agent_pids("a", tmp_path) == [] and _agent_pids("b", tmp_path) == []
    run(main())


FAKE_SSH_LOGIN = """#!/bin/bash
# fake ssh that gives the remote command a fresh login's environment, as sshd does
while [[ "$1" == -* ]]; do shift 2; done
node=$1; shift
exec env -i HOME="$HOME" PATH=/usr/bin:/bin SSH_CONNECTION="127.0.0.1 40001 127.0.0.1 22" bash -c "$1"
"""


def test_ssh_started_agents_tasks_get_the_services_environment(tmp_path, monkeypatch):
    """Reference 8 "Execution environments": the tasks' base environment is the service's, also when ssh
    started their agent in a fresh login. Before, an exported marker and a PATH entry of the service were
    missing. What names the manager's session (SSH_CONNECTION, HOSTNAME) stays the node's or goes, and
    SLURMD_NODENAME is the node's own."""
    login = tmp_path / "fake-ssh-login"
    login.write_text(FAKE_SSH_LOGIN)
    login.chmod(0o755)
    marker_dir = tmp_path / "marker-bin"
    monkeypatch.setenv("QCG_TEST_MARK", "mark-5519")
    monkeypatch.setenv("PATH", f"{marker_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    monkeypatch.setenv("HOSTNAME", "qcg-manager-host")
    monkeypatch.setenv("SSH_CONNECTION", "10.99.0.1 40000 10.99.0.2 22")
    monkeypatch.setenv("SLURMD_NODENAME", "manager-node")

    async def main():
        gov, part, launcher, res = await _setup(tmp_path, "a:1,b:1", str(login))
        try:
            gov.submit(parse_jobs([{"name": "e", "iteration": {"stop": 2},
                                    "execution": {"script": "env > env.${it}"}}]))
            job = await _wait_final(gov, "e")
            assert job.state.value == "SUCCEED"
        finally:
            await part.shutdown()
    run(main())
    nodes = set()
    for i in range(2):
        seen = dict(line.split("=", 1) for line in (tmp_path / "wd" / f"env.{i}").read_text().splitlines()
                    if "=" in line)
        assert seen.get("QCG_TEST_MARK") == "mark-5519", seen
        assert str(marker_dir) in seen["PATH"].split(os.pathsep), seen["PATH"]
        assert seen.get("SSH_CONNECTION") == "127.0.0.1 40001 127.0.0.1 22", seen
        assert "HOSTNAME" not in seen, seen
        assert seen["SLURMD_NODENAME"] == seen["QCG_PM_NODELIST"], seen
        nodes.add(seen["SLURMD_NODENAME"])
    assert nodes == {"a", "b"}


def test_threshold_lets_run_start_without_a_failed_agent(tmp_path, fake_ssh):
    """Issue 5: threshold 0.75 with one agent that cannot start -> the run completes on the other nodes."""
    async def main():
        gov, part, launcher, res = await _setup(tmp_path, "a:1,b:1,c:1,bad:1", fake_ssh, threshold=0.75)
        try:
            assert "bad" not in launcher.ready_nodes
            gov.submit(parse_jobs([{"name": "it", "execution": {"exec": "/bin/true"}, "iteration": {"stop": 20}}]))
            job = await _wait_final(gov, "it")
            assert job.state.value == "SUCCEED"
            assert all(not rec.allocation.startswith("bad") for rec in job.its.values())
        finally:
            await part.shutdown()
    run(main())


def test_threshold_not_met_fails_clearly(tmp_path, fake_ssh):
    """Issue 5 / reference 15.1: too few agents -> a clear error, not a hang; it says how each failed agent
    ended and quotes its stderr (the agent's own error is otherwise only in a file of the run)."""
    async def main():
        with pytest.raises(AgentStartError, match="only 1 of 2 node agents became ready") as err:
            gov, part, launcher, res = await _setup(tmp_path, "a:1,bad:1", fake_ssh, threshold=1.0)
        text = str(err.value)
        assert "not ready: bad (the agent of node bad ended before registering (exit code 255)" in text, text
        assert f"stderr {tmp_path / 'agent-bad.err'}: ssh: connect to host bad: refused" in text, text
    run(main())


MUTE_SSH = """#!/bin/bash
# fake ssh whose node 'mute' runs something that never registers
while [[ "$1" == -* ]]; do shift 2; done
node=$1; shift
if [[ "$node" == mute ]]; then echo "mute: waiting for nothing" >&2; exec sleep 30; fi
exec bash -c "$1"
"""


def test_agent_not_registered_in_time_is_named_with_its_stderr(tmp_path):
    """An agent still running but not registered at the init timeout: the error says so, with its stderr."""
    mute = tmp_path / "mute-ssh"
    mute.write_text(MUTE_SSH)
    mute.chmod(mute.stat().st_mode | stat.S_IEXEC)

    async def main():
        with pytest.raises(AgentStartError, match="only 1 of 2 node agents became ready") as err:
            await _setup(tmp_path, "a:1,mute:1", str(mute), threshold=1.0, timeout=2.0)
        text = str(err.value)
        assert "not ready: mute (not registered after " in text and "attempt 1 still running" in text, text
        assert "no message from it" in text, text
        assert f"stderr {tmp_path / 'agent-mute.err'}: mute: waiting for nothing" in text, text
    run(main())


def test_killed_agent_marks_node_lost(tmp_path, fake_ssh):
    """Issue 5: kill -9 of an agent -> its tasks end with reason "node lost" (re-queued once), no hang; the
    task it left running is ended by its orphan guard."""
    async def main():
        gov, part, launcher, res = await _setup(tmp_path, "a:1,b:1", fake_ssh)
        gov.requeue_limit = 0
        try:
            gov.submit(parse_jobs([{"name": "s", "execution": {"exec": "/bin/sleep", "args": ["30"]},
                                    "iteration": {"stop": 2}}]))
            deadline = time.monotonic() + 20
            while gov.registry.get("s").executing_count < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            on_b = [r.pid for r in gov.registry.get("s").its.values() if (r.allocation or "").startswith("b")]
            assert len(on_b) == 1 and on_b[0], on_b
            task = psutil.Process(on_b[0])
            for pid in _agent_pids("b", tmp_path):
                os.kill(pid, signal.SIGKILL)
            # the agent's orphan guard ends the task the killed agent left behind
            assert psutil.wait_procs([task], timeout=15)[1] == [], "the killed agent's task runs on"
            deadline = time.monotonic() + 20
            job = gov.registry.get("s")
            while job.finished_count < 1:
                assert time.monotonic() < deadline, "lost node not detected"
                await asyncio.sleep(0.02)
            lost = [r for r in job.its.values() if r.state.value == "FAILED"]
            assert len(lost) == 1 and "node lost" in lost[0].messages
            # the agent started by (fake) ssh is the spawned process itself, so its end is seen at once
            assert "node lost: b (agent process ended (killed by signal 9 (SIGKILL)))" in lost[0].messages
            assert res.is_down("b")
            gov.cancel(["s"])
            await _wait_final(gov, "s")
        finally:
            await part.shutdown()
    run(main())


def test_what_needs_a_lost_node_fails_instead_of_waiting_for_ever(tmp_path, fake_ssh):
    """Reliable (issue 5 "node lost"): a lost node does not come back. A queued 2-node job, and one
    dispatched after the loss (it waited for a dependency), fail with the reason; one that fits the nodes
    left still runs. They used to wait for ever, and a file-mode run never ended."""
    async def main():
        gov, part, launcher, res = await _setup(tmp_path, "a:1,b:1", fake_ssh)
        try:
            gov.submit(parse_jobs([
                {"name": "hold", "execution": {"exec": "/bin/sleep", "args": ["2"]}},
                {"name": "both", "execution": {"exec": "/bin/true"}, "resources": {"numNodes": {"exact": 2}}},
                {"name": "later", "execution": {"exec": "/bin/true"}, "resources": {"numNodes": {"exact": 2}},
                 "dependencies": {"after": ["one"]}},
                {"name": "one", "execution": {"exec": "/bin/true"}, "dependencies": {"after": ["hold"]}}]))
            deadline = time.monotonic() + 20
            while gov.registry.get("hold").record.pid is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            idle = "b" if (gov.registry.get("hold").record.allocation or "").startswith("a") else "a"
            for pid in _agent_pids(idle, tmp_path):
                os.kill(pid, signal.SIGKILL)
            both = await _wait_final(gov, "both")
            assert both.state.value == "FAILED", both.record.messages
            assert (f"cannot run after node {idle} was lost: requires 2 nodes but the partition has 1 (1 node lost)"
                    in both.record.messages)
            later = await _wait_final(gov, "later")
            assert gov.registry.get("hold").state.value == "SUCCEED"
            assert gov.registry.get("one").state.value == "SUCCEED"
            assert later.state.value == "FAILED" and "1 node lost" in later.record.messages
        finally:
            await part.shutdown()
    run(main())


def test_what_needs_a_node_whose_agent_never_started_fails(tmp_path, fake_ssh):
    """Issue 5 "node lost" with `--nl-ready-threshold` below 1: an agent that never starts (every attempt
    failed) leaves its node down for good, as a lost one. A job needing both nodes fails with the reason;
    it used to wait for ever (found by a helper: a file-mode run never ended)."""
    async def main():
        gov, part, launcher, res = await _setup(tmp_path, "a:1,bad:1", fake_ssh, threshold=0.5)
        try:
            gov.submit(parse_jobs([
                {"name": "both", "execution": {"exec": "/bin/true"}, "resources": {"numNodes": {"exact": 2}}},
                {"name": "one", "execution": {"exec": "/bin/true"}}]))
            both = await _wait_final(gov, "both", timeout=60)
            assert both.state.value == "FAILED", both.record.messages
            assert ("cannot run after node bad was lost: requires 2 nodes but the partition has 1 (1 node lost)"
                    in both.record.messages), both.record.messages
            assert (await _wait_final(gov, "one")).state.value == "SUCCEED"
        finally:
            await part.shutdown()
    run(main(), timeout=90)


def test_a_manager_gives_back_what_it_can_no_longer_run(tmp_path):
    """Partitioned mode (issue 6 "Dispatch"): a partition manager's partition that loses a node does not
    fail the queued tasks that needed it; it tells its parent the new size first, then gives them back
    (the parent runs them elsewhere or fails them). What still fits stays. The totals and credit it
    offers (what its parent sizes iterations and hands out work by) leave the lost node out."""
    class Parent:
        def __init__(self) -> None:
            self.calls: list[tuple[str, Any]] = []

        def task_started(self, ev) -> None:
            pass

        def task_finished(self, ev) -> None:
            self.calls.append(("finished", ev.task_id))

        def capacity_changed(self) -> None:
            self.calls.append(("capacity", None))

        def give_back(self, task_ids: list[str]) -> None:
            self.calls.append(("give_back", task_ids))

    async def main():
        loop = asyncio.get_running_loop()
        res = local_resources("a:1,b:40")
        parent = Parent()
        part = Partition(loop, res, PartitionConfig(root_wd=str(tmp_path), scratch_dir=str(tmp_path)), events=parent)
        for node in ("a", "b"):
            part.node_state(node, False)            # agents not ready: everything stays queued
        two = ResourceRequest(None, None, 2, 2)
        part.submit([TaskSpec("big", "big", None, Execution(exec="/bin/true"), two, seq=1),
                     TaskSpec("one", "one", None, Execution(exec="/bin/true"), ResourceRequest(1, 1), seq=2)])
        assert part.totals() == (41, 2, 40) and part.queue_limit == 41 * 3
        part.node_state("b", False, True)
        assert parent.calls == [("capacity", None), ("give_back", ["big"])]
        assert part.totals() == (1, 1, 1) and part.queue_limit == 64
        part.submit([TaskSpec("late", "late", None, Execution(exec="/bin/true"), two, seq=3)])
        assert parent.calls[-1] == ("give_back", ["late"])
        assert "one" in part.scheduler and "big" not in part.scheduler
        await part.shutdown()
    run(main())


def test_silent_agent_is_lost_by_heartbeat(tmp_path, fake_ssh):
    """Issue 5 heartbeats: an agent that stops answering (SIGSTOP, its process still there) is declared
    lost after the heartbeat timeout; its task is re-queued to the other node and the job completes."""
    async def main():
        gov, part, launcher, res = await _setup(tmp_path, "a:1,b:1", fake_ssh)
        try:
            gov.submit(parse_jobs([{"name": "s", "execution": {"exec": "/bin/sleep", "args": ["1"]},
                                    "iteration": {"stop": 2}}]))
            deadline = time.monotonic() + 20
            while gov.registry.get("s").executing_count < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            pids = _agent_pids("b", tmp_path)
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                job = await _wait_final(gov, "s", timeout=40)
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
            assert job.state.value == "SUCCEED"
            assert res.is_down("b")
        finally:
            await part.shutdown()
    run(main(), timeout=90)


async def _long_task_running(gov: Governor) -> str:
    """Submit `long` (sleep 30) and wait until it runs; the node it runs on."""
    gov.submit(parse_jobs([{"name": "long", "execution": {"exec": "/bin/sleep", "args": ["30"]}}]))
    deadline = time.monotonic() + 20
    while gov.registry.get("long").state.value != "EXECUTING":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    return gov.registry.get("long").record.allocation.split("[")[0]


async def _still_running_then_canceled(gov: Governor) -> None:
    """`long` still runs (the forged messages changed nothing); its real end arrives after a cancel."""
    assert gov.registry.get("long").state.value == "EXECUTING"
    gov.cancel(["long"])
    assert (await _wait_final(gov, "long")).state.value == "CANCELED"


def test_peer_without_agent_key_cannot_pose_as_agent(tmp_path, fake_ssh):
    """Issue 5 / DESIGN principle 5: only holders of the run's agent key may speak as a node agent:
    a forged "task exited" for a running task (with a wrong key, or with no CURVE at all) changes nothing."""
    import zmq
    import zmq.asyncio

    from qcg.pilotjob.api import curve, protocol

    async def main():
        gov, part, launcher, res = await _setup(tmp_path, "a:1,b:1", fake_ssh)
        ctx = zmq.asyncio.Context()
        try:
            node = await _long_task_running(gov)
            server_pub = curve.read_key(str(tmp_path / "keys" / "partition.key"))
            pub, sec = zmq.curve_keypair()
            for keys in ((pub, sec), None):
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.IDENTITY, node.encode())
                sock.setsockopt(zmq.LINGER, 0)
                if keys:
                    curve.make_client(sock, keys[0], keys[1], server_pub)
                sock.connect(launcher.address)
                forged = protocol.encode({"type": "events", "node": node,
                                          "events": [["exited", "long", 0, None, None, time.time(), time.time()]]})
                for _ in range(5):
                    try:   # without a completed handshake there is no peer: the send must not wait
                        await sock.send(forged, flags=zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                    await asyncio.sleep(0.2)
                sock.close()
            await _still_running_then_canceled(gov)
        finally:
            ctx.term()
            await part.shutdown()
    run(main())


def test_agent_key_holder_cannot_speak_for_another_node(tmp_path, fake_ssh):
    """Security audit F5: the agents share one key, so a node is only the identity its agent gives. A holder
    of that key posing as the other node could end a task running elsewhere (SUCCEED, exit code 0, while it
    ran on, its cores handed out again), and one malformed message stopped the launcher reading any agent.
    Now only the agent a task was sent to may speak of it, and bad messages are dropped one by one."""
    import zmq
    import zmq.asyncio

    from qcg.pilotjob.api import curve, protocol

    async def main():
        gov, part, launcher, res = await _setup(tmp_path, "a:1,b:1", fake_ssh)
        ctx = zmq.asyncio.Context()
        try:
            node = await _long_task_running(gov)
            other = "b" if node == "a" else "a"
            server_pub = curve.read_key(str(tmp_path / "keys" / "partition.key"))
            pub, sec = curve.load_pair(str(tmp_path / "keys"), "agent")
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, other.encode())       # the other node's name (its agent is replaced)
            sock.setsockopt(zmq.LINGER, 0)
            curve.make_client(sock, pub, sec, server_pub)
            sock.connect(launcher.address)
            now = time.time()
            for msg in ({"type": "events", "events": [["started"]]},           # malformed
                        {"type": "events", "events": [["exited", "long", 0, None, None, now, now]]},
                        {"type": "events", "events": [["started", "long", 1, now]]}):
                await asyncio.wait_for(sock.send(protocol.encode(msg)), 5)
            await asyncio.sleep(0.5)
            sock.close()
            assert res.info()["free_cores"] == 1
            await _still_running_then_canceled(gov)      # the launcher still reads its agents
        finally:
            ctx.term()
            await part.shutdown()
    run(main())


SLOW_SSH = """#!/bin/bash
# fake ssh whose node 'late' takes 2 s to reach
while [[ "$1" == -* ]]; do shift 2; done
node=$1; shift
if [[ "$node" == late ]]; then sleep 2; fi
exec bash -c "$1"
"""


def test_late_agent_joins_the_run(tmp_path):
    """Issue 5 / reference 15.1: the run starts at the threshold; a node whose agent registers later is
    used from then on (and not before)."""
    slow = tmp_path / "slow-ssh"
    slow.write_text(SLOW_SSH)
    slow.chmod(slow.stat().st_mode | stat.S_IEXEC)

    async def main():
        gov, part, launcher, res = await _setup(tmp_path, "a:1,late:1", str(slow), threshold=0.5)
        try:
            assert launcher.ready_nodes == ["a"] and res.is_down("late")
            gov.submit(parse_jobs([{"name": "s", "execution": {"exec": "/bin/sleep", "args": ["0.4"]},
                                    "iteration": {"stop": 12}}]))
            job = await _wait_final(gov, "s", timeout=40)
            assert job.state.value == "SUCCEED"
            nodes = [rec.allocation.split("[")[0] for rec in job.its.values()]
            assert nodes[0] == "a" and "late" in nodes
            assert not res.is_down("late")
        finally:
            await part.shutdown()
    run(main())


def test_agents_started_before_their_socket_is_bound_are_adopted(tmp_path):
    """Issue 6 "Starting partitions" (manager start-up): `early_agents.start_early` spawns the agents first,
    they wait for the address file, connect once the socket is bound; the launcher adopts them (no second
    agent per node) and tasks run through them."""
    from qcg.pilotjob.partition import early_agents

    async def main():
        loop = asyncio.get_running_loop()
        res = local_resources("a:2,b:2")
        wd = tmp_path / "wd"
        wd.mkdir()
        keys = tmp_path / "keys"
        early = early_agents.start_early(["a", "b"], start_method="local", keys_dir=str(keys),
                                         err_dir=str(tmp_path), bind_host="127.0.0.1")
        assert (keys / early_agents.ADDRESS_FILE).read_text() == early.address
        spawned = {node: pid for node, (pid, _) in early.processes.items()}
        assert sorted(spawned) == ["a", "b"] and not early.errors
        part = Partition(loop, res, PartitionConfig(root_wd=str(wd), scratch_dir=str(tmp_path)), events=None)
        gov = Governor(loop, part, [])
        part.events = gov
        launcher = AgentLauncher(loop, ["a", "b"], part._launched, part._exited, keys_dir=str(keys),
                                 start_method="local", bind_host="127.0.0.1", init_timeout=30,
                                 on_node_state=part.node_state)
        part.attach_launcher(launcher)
        await launcher.start(early_agents.take())
        try:
            assert sorted(launcher.ready_nodes) == ["a", "b"]
            assert _agent_pids("a", tmp_path) == [spawned["a"]] and _agent_pids("b", tmp_path) == [spawned["b"]]
            gov.submit(parse_jobs([{"name": "e", "execution": {"script": "echo $QCG_PM_NODELIST > out.${it}"},
                                    "iteration": {"stop": 8}}]))
            assert (await _wait_final(gov, "e")).state.value == "SUCCEED"
            assert {(wd / f"out.{i}").read_text().strip() for i in range(8)} == {"a", "b"}
        finally:
            await part.shutdown()
        assert _agent_pids("a", tmp_path) == [] and _agent_pids("b", tmp_path) == []
        # the early socket knows it is closed (its own flag, not libzmq's answer on a stale handle): its
        # finaliser would otherwise close whatever socket later reuses the handle, e.g. another test's
        assert early.sock._closed
    run(main())


def test_agent_without_its_address_file_gives_up_clearly(tmp_path):
    """An agent started early whose manager never binds (it failed) ends with one clear line, not a hang."""
    import subprocess
    import sys

    missing = tmp_path / "keys" / "address"
    proc = subprocess.run([sys.executable, "-m", "qcg.pilotjob.agent", "--address-file", str(missing),
                           "--address-wait", "0.3", "--node", "a", "--keys", str(tmp_path / "keys")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert f"no partition address in {missing}" in proc.stderr
    assert "Traceback" not in proc.stderr


FORKING_MANAGER = r"""
import os, sys, time
from qcg.pilotjob.partition import early_agents
keys, err = sys.argv[1], sys.argv[2]
early = early_agents.start_early(["own"], start_method="local", keys_dir=keys, err_dir=err, own_node="own",
                                 bind_host="127.0.0.1")
print(early.processes["own"][0], flush=True)
time.sleep(120)
"""


def test_forked_agent_ignores_step_signals_and_ends_with_its_manager(tmp_path):
    """Issue 6 (manager start-up): the agent of the manager's own node is forked, not started. Slurm
    signals a step as a whole and the manager takes a first SIGTERM as "leave gracefully", so the forked
    agent ignores SIGTERM; it carries its own name for `ps`; and when the manager is killed outright
    the kernel ends the agent too (it would otherwise run on outside the step, up to its 10 s silence
    timeout -- this test allows 5 s)."""
    import subprocess
    import sys

    script = tmp_path / "manager.py"
    script.write_text(FORKING_MANAGER)
    manager = subprocess.Popen([sys.executable, str(script), str(tmp_path / "keys"), str(tmp_path)],
                               stdout=subprocess.PIPE, text=True)
    agent_pid = None
    try:
        agent_pid = int(manager.stdout.readline())
        agent = psutil.Process(agent_pid)
        assert agent.ppid() == manager.pid
        # the child names itself just after the fork, while its manager goes on: give it that moment
        deadline = time.monotonic() + 5
        while agent.name() != "qcg-pj-agent" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert agent.name() == "qcg-pj-agent"
        os.kill(agent_pid, signal.SIGTERM)
        time.sleep(0.5)
        assert agent.is_running() and agent.status() != psutil.STATUS_ZOMBIE
        manager.kill()
        manager.wait(10)
        gone, alive = psutil.wait_procs([agent], timeout=5)
        assert not alive, f"forked agent {agent_pid} outlived its manager"
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait(10)
        if agent_pid is not None:
            try:
                os.kill(agent_pid, signal.SIGKILL)      # whatever failed above, no agent is left behind
            except ProcessLookupError:
                pass


FAILING_MANAGER = r"""
import os, sys, time
from qcg.pilotjob.partition import early_agents
try:
    early_agents.start_early(["own"], start_method="local", keys_dir=sys.argv[1], err_dir=sys.argv[2],
                             own_node="own", bind_host="256.0.0.1")     # cannot bind: start_early fails
except Exception as exc:
    print("failed:", type(exc).__name__, flush=True)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        print("no agent left", flush=True)
        break
    time.sleep(0.05)
else:
    print("agent still running", flush=True)
    import psutil
    for agent in psutil.Process().children():      # not left behind by a failing test
        agent.kill()
"""


SIGHUP_AT_START = {"default": "", "ignored": "signal.signal(signal.SIGHUP, signal.SIG_IGN)",
                   "blocked": "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})"}


@pytest.mark.parametrize("sighup", SIGHUP_AT_START)
def test_forked_agent_is_ended_when_the_early_start_fails(tmp_path, sighup):
    """Issue 6 (manager start-up): when the manager cannot bind the agents' socket, the agents it already
    started (the forked one, which ignores SIGTERM, included) are ended, not left waiting for an address.
    A manager started with SIGHUP ignored (nohup) or blocked passed that on to its forked agent, which then
    dropped its stop signal and the kernel's death signal alike (Python 3.12 helper, under nohup; review)."""
    script = tmp_path / "manager.py"
    script.write_text(f"import signal\n{SIGHUP_AT_START[sighup]}\n" + FAILING_MANAGER)
    p = subprocess.run([sys.executable, str(script), str(tmp_path / "keys"), str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.splitlines()[0].startswith("failed:"), (p.stdout, p.stderr)
    assert "no agent left" in p.stdout, (p.stdout, p.stderr)


def test_malformed_agent_messages_are_dropped_and_the_partition_goes_on(tmp_path, fake_ssh):
    """Issue 5/6 bad input: frames that are not protocol messages, and messages from a node the partition
    does not have (sent with the run's agent key), are dropped; the real agents' work goes on."""
    import zmq
    import zmq.asyncio

    from qcg.pilotjob.api import curve, protocol

    async def main():
        gov, part, launcher, res = await _setup(tmp_path, "a:1,b:1", fake_ssh)
        ctx = zmq.asyncio.Context()
        try:
            keys = str(tmp_path / "keys")
            public, secret = curve.load_pair(keys, "agent")
            server_pub = curve.read_key(os.path.join(keys, "partition.key"))
            # (an identity the ROUTER already has, such as a real agent's, would not be let in at all)
            for ident, frames in ((b"x", [b"\xc1 not msgpack", b""]),
                                  (b"stranger", [protocol.encode({"type": "ready", "node": "stranger"})])):
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.IDENTITY, ident)
                sock.setsockopt(zmq.LINGER, 1000)
                curve.make_client(sock, public, secret, server_pub)
                sock.connect(launcher.address)
                for frame in frames:
                    await sock.send(frame)
                await asyncio.sleep(0.3)
                sock.close()
            assert "stranger" not in launcher.agents
            assert sorted(launcher.ready_nodes) == ["a", "b"]
            gov.submit(parse_jobs([{"name": "after", "execution": {"exec": "/bin/true"}, "iteration": {"stop": 4}}]))
            assert (await _wait_final(gov, "after")).state.value == "SUCCEED"
        finally:
            ctx.term()
            await part.shutdown()
    run(main())


def _signal_while_srun_hangs(tmp_path, sig: int, *args: str) -> tuple[subprocess.Popen, bytes, Path]:
    """The service run with `args` in a Slurm allocation whose `srun` hangs (a stand-in that sleeps; a real
    one does on "Job step creation temporarily disabled"), given `sig` once the agents' srun has started."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = tmp_path / "srun-started"
    (bindir / "srun").write_text(f'#!/bin/sh\necho $$ >> "{marker}"\nexec sleep 300\n')
    (bindir / "srun").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env.update(PATH=f"{bindir}:{env['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="n1",
               SLURM_JOB_CPUS_PER_NODE="2")
    proc = subprocess.Popen([sys.executable, "-m", "qcg.pilotjob.service", *args, "--nl-init-timeout", "300"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the stand-in srun was never run"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)     # well inside the 300 s the start would have waited
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, err, marker


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_agents_start_stops_the_service_at_once(tmp_path, sig):
    """README "Exit codes" 128+N (helper report): a Slurm allocation whose `srun` hangs (here a stand-in
    that sleeps; a real one does on "Job step creation temporarily disabled"). A signal used to be
    logged and then ignored until --nl-init-timeout (600 s by default) ran out, and the run ended with
    exit code 1. Now it ends the start at once: exit 128+N, final_status.json written, no srun left."""
    reqs = tmp_path / "r.json"
    reqs.write_text('[{"request": "submit", "jobs": [{"name": "a", "execution": {"exec": "/bin/true"}}]}]')
    wd = tmp_path / "wd"
    proc, err, marker = _signal_while_srun_hangs(tmp_path, sig, "--file-path", str(reqs), "--wd", str(wd))
    assert proc.returncode == 128 + sig, err
    assert b"Traceback" not in err
    assert list(wd.glob(".qcgpjm-service-*/final_status.json"))
    srun_pids = [int(line) for line in marker.read_text().split()]
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in srun_pids):
        assert time.monotonic() < deadline, "the stand-in srun outlived the service"
        time.sleep(0.05)


def test_a_resume_stopped_while_its_agents_start_keeps_the_runs_final_status(tmp_path):
    """A resume given SIGTERM before it replayed the journal knows nothing of the run yet: it used to
    overwrite the interrupted run's final_status.json with one of no jobs. The file stays as the run
    left it, and a later resume still runs what was unfinished."""
    reqs = tmp_path / "r.json"
    started = tmp_path / "started"
    reqs.write_text(json.dumps([{"request": "submit", "jobs": [{"name": "long", "execution": {
        "exec": "/bin/sh", "args": ["-c", f"touch {started}; exec sleep 60"]}}]}]))
    wd = tmp_path / "wd"
    first = subprocess.Popen([sys.executable, "-m", "qcg.pilotjob.service", "--file-path", str(reqs), "--wd", str(wd),
                              "--nodes", "1", "--id", "r"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    aux = wd / ".qcgpjm-service-r"
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline and first.poll() is None, "the job did not start"
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    status = (aux / "final_status.json").read_text()
    assert json.loads(status)["JobStats"]["TotalJobs"] == 1
    proc, err, _ = _signal_while_srun_hangs(tmp_path, signal.SIGTERM, "--resume", str(aux), "--resources", "slurm")
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert (aux / "final_status.json").read_text() == status


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf"])
def test_agent_heartbeat_must_be_a_positive_number_of_seconds(value, capsys):
    """Helper report: `--heartbeat nan` made the node agent wait for ever, `-1` stop at once."""
    from qcg.pilotjob.agent.agent import main
    with pytest.raises(SystemExit) as exc:
        main(["--address", "tcp://127.0.0.1:1", "--heartbeat", value])
    assert exc.value.code == 2
    assert "is not a positive number of seconds" in capsys.readouterr().err
