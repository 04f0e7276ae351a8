"""ProcessStats, the collector behind `--enable-proc-stats` (reference 16.1 "How it works").

Real child processes of the test; every wait is bounded. The polls are
driven by hand (`poll()`) where the test must know what was seen when.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from qcg.pilotjob.agent.process_stats import CPU_TIMES_FIELDS, MEMORY_INFO_FIELDS, ProcessStats
from qcg.pilotjob.partition.launcher import LaunchRequest, LocalLauncher

WAIT = 20.0
NAME = re.compile(r"^ptrace_(?P<node>[^_]+)_(?P<date>\d{14})_(?P<rand>\d{5})\.log$")


def _poll_until(stats: ProcessStats, check, timeout: float = WAIT) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        stats.poll()
        recs = stats.records()
        if check(recs):
            return recs
        assert time.monotonic() < deadline, f"not seen in {timeout}s: {recs}"
        time.sleep(0.05)


def _by_pid(recs: list[dict], pid: int) -> list[dict]:
    return [r for r in recs if r["pid"] == pid]


@pytest.fixture
def tree():
    """`bash -c 'sleep 2 & wait'`: a shell with one child, as a task's tree (killed at the end)."""
    procs: list[subprocess.Popen] = []

    def start(script: str = "sleep 2 & wait") -> subprocess.Popen:
        proc = subprocess.Popen(["bash", "-c", script])
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=WAIT)


def test_a_task_tree_is_recorded_with_its_statistics(tmp_path: Path, tree) -> None:
    """Reference 16.1: every descendant with pid, name, command line, parent pid and name, cpu affinity,
    creation time, node, cpu times and memory; the file ptrace_{node}_{date}_{random}.log is JSON."""
    stats = ProcessStats(str(tmp_path), "n1", interval=0.1)
    shell = tree()
    recs = _poll_until(stats, lambda rs: any(r["parent"] == shell.pid and r["name"] == "sleep" for r in rs))
    root = _by_pid(recs, shell.pid)
    assert len(root) == 1, recs
    root = root[0]
    assert root["name"] == "bash" and root["cmdline"] == ["bash", "-c", "sleep 2 & wait"]
    assert root["parent"] == os.getpid() and root["parent_name"]
    assert root["node"] == "n1"
    assert root["cpu_affinity"] == sorted(os.sched_getaffinity(shell.pid))
    assert abs(root["created"] - time.time()) < 60
    child = next(r for r in recs if r["parent"] == shell.pid)
    assert child["cmdline"] == ["sleep", "2"] and child["parent_name"] == "bash"
    assert child["created"] >= root["created"] - 0.02
    assert len(child["cpu_times"]) == len(CPU_TIMES_FIELDS)
    assert len(child["memory_info"]) == len(MEMORY_INFO_FIELDS) and child["memory_info"][0] > 0
    assert 0 < child["memory_percent"] < 100
    seen = child["last_seen"]
    stats.poll()                               # later polls refresh, never duplicate
    again = [r for r in stats.records() if r["pid"] == child["pid"]]
    assert len(again) == 1 and again[0]["last_seen"] >= seen and again[0]["first_seen"] == child["first_seen"]

    path = stats.stop()
    assert path is not None and os.path.dirname(path) == str(tmp_path)
    m = NAME.match(os.path.basename(path))
    assert m and m["node"] == "n1", path
    doc = json.loads(Path(path).read_text())
    assert doc["node"] == "n1" and doc["cpu_times_fields"] == CPU_TIMES_FIELDS
    assert doc["memory_info_fields"] == MEMORY_INFO_FIELDS and doc["polls"] >= 2
    assert {r["pid"] for r in doc["processes"]} >= {shell.pid, child["pid"]}
    assert stats.stop() == path                  # once only
    assert len(list(tmp_path.glob("ptrace_*.log"))) == 1


def test_exec_updates_the_entry_and_reused_identity_is_pid_plus_creation(tmp_path: Path, tree) -> None:
    """A process that execs another program stays one entry (pid + creation time), with its latest program;
    reference 16.1's shortcoming "another process with the same identifier" is told apart by creation time."""
    stats = ProcessStats(str(tmp_path), "n1", interval=0.1)
    shell = tree("sleep 0.5; exec sleep 3")
    _poll_until(stats, lambda rs: any(r["pid"] == shell.pid and r["name"] == "bash" for r in rs))
    recs = _poll_until(stats, lambda rs: any(r["pid"] == shell.pid and r["name"] == "sleep" for r in rs))
    mine = _by_pid(recs, shell.pid)
    assert len(mine) == 1 and mine[0]["cmdline"] == ["sleep", "3"], mine
    keys = {(r["pid"], r["created"]) for r in stats.records()}
    assert len(keys) == len(stats.records())
    stats.stop(write=False)
    assert not list(tmp_path.glob("ptrace_*"))


INFRA = ("import subprocess, sys; subprocess.run(['sleep', '3'])",)


def test_our_own_agents_and_their_subtrees_are_not_tasks(tmp_path: Path, tree) -> None:
    """Node agents and partition managers started by the launcher (`-m qcg.pilotjob.agent`, ...) are left out,
    with what they start; a task next to them is recorded (reference 16.1 records the launched processes)."""
    stats = ProcessStats(str(tmp_path), "n1", interval=0.1)
    agent = subprocess.Popen([sys.executable, "-c", INFRA[0], "-m", "qcg.pilotjob.agent", "--node", "x"])
    try:
        shell = tree()
        deadline = time.monotonic() + WAIT
        while not [c for c in _children(agent.pid) if c.name() == "sleep"]:   # the agent's own child runs
            assert time.monotonic() < deadline
            time.sleep(0.05)
        recs = _poll_until(stats, lambda rs: any(r["parent"] == shell.pid for r in rs))
        assert not _by_pid(recs, agent.pid), recs
        assert not [r for r in recs if r["parent"] == agent.pid], recs
    finally:
        agent.kill()
        agent.wait(timeout=WAIT)
    stats.stop(write=False)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.Error:
        return []


def _orphan_guards() -> list[psutil.Process]:
    """This process's children running agent/orphan_guard.py (the spawner's helper, not a task)."""
    found = []
    for child in psutil.Process().children():
        try:
            if any(arg.endswith("orphan_guard.py") for arg in child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def test_polling_thread_stops_within_one_poll_and_errors_stay_inside(tmp_path: Path, tree) -> None:
    """Reference 16.1: polled every second by a thread; stop() ends it without waiting a whole interval, and
    an unwritable directory is logged, not raised (statistics never stop a run)."""
    stats = ProcessStats(str(tmp_path / "missing" / "dir"), "n1", interval=1.0)
    shell = tree()
    stats.start()
    deadline = time.monotonic() + WAIT
    while not _by_pid(stats.records(), shell.pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    assert stats.stop() is None                 # the directory does not exist: nothing written, no exception
    assert time.monotonic() - t0 < 5.0
    assert not [t for t in threading.enumerate() if t.name == "qcg-proc-stats" and t.is_alive()]


def test_local_launcher_gathers_only_when_enabled(tmp_path: Path) -> None:
    """`--enable-proc-stats` off: no thread and no file, the launcher as before; on: the file is written at
    shutdown, even with a task still running (reference 16.1: "saved to the file at launcher agent finish")."""
    async def main(stats_dir: str | None) -> LocalLauncher:
        loop = asyncio.get_running_loop()
        started: list = []
        others = {p.pid for p in _orphan_guards()}      # of launchers of earlier tests in this process
        launcher = LocalLauncher(loop, lambda *a: started.append(a), lambda res: None, proc_stats_dir=stats_dir)
        launcher.launch(LaunchRequest("t", "a", ["bash", "-c", "sleep 5 & wait"], {}, str(tmp_path), None, None,
                                      None, None, None))
        assert started and started[0][1] is not None
        await asyncio.sleep(0.3)
        assert (launcher._stats is not None) == (stats_dir is not None)
        guards = [p for p in _orphan_guards() if p.pid not in others]
        await asyncio.wait_for(launcher.shutdown(timeout=5.0), WAIT)
        for guard in guards:         # it ends after the launcher: reaped here, no zombie is left to later tests
            guard.wait(WAIT)
        return launcher

    asyncio.run(main(None))
    assert not list(tmp_path.glob("ptrace_*"))
    assert not [t for t in threading.enumerate() if t.name == "qcg-proc-stats" and t.is_alive()]

    asyncio.run(main(str(tmp_path)))
    files = list(tmp_path.glob("ptrace_*.log"))
    assert len(files) == 1 and NAME.match(files[0].name)
    doc = json.loads(files[0].read_text())
    assert any(p["cmdline"] == ["bash", "-c", "sleep 5 & wait"] for p in doc["processes"]), doc


CRASH = """
import subprocess, sys, time
from qcg.pilotjob.agent.process_stats import start_collector
stats = start_collector(sys.argv[1], "n9", 0.1)
child = subprocess.Popen(["sleep", "2"])
time.sleep(0.5)
raise RuntimeError("the launcher fails")
"""


def test_the_file_is_written_when_the_launcher_dies_of_an_exception(tmp_path: Path) -> None:
    """Reference 16.1 saves the data "at launcher agent finish": also when it finishes by an exception."""
    proc = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path)], capture_output=True, text=True,
                          timeout=WAIT)
    assert proc.returncode == 1 and "the launcher fails" in proc.stderr
    files = list(tmp_path.glob("ptrace_n9_*.log"))
    assert len(files) == 1, proc.stderr
    doc = json.loads(files[0].read_text())
    assert any(p["cmdline"] == ["sleep", "2"] for p in doc["processes"]), doc
