"""The run lock (agent/run_lock.py): a resumed run's tasks do not start next to the first copies.

Helper report: `--resume` right after a `kill -9` of the service started the interrupted tasks at once,
while the killed launcher's orphan guard was still ending them (SIGTERM, SIGKILL 3 s later): two copies on
the same cores for seconds (9 s in Slurm mode, where the agents notice the loss of their service late).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import psutil

from qcg.pilotjob.agent.run_lock import RunLock

LAUNCHER = textwrap.dedent("""
    import asyncio, os, sys
    from qcg.pilotjob.agent.run_lock import RunLock
    from qcg.pilotjob.agent.spawner import ProcessSpawner, ProcessSpec

    async def main():
        lock = RunLock(sys.argv[1], "n1")
        assert await lock.acquire(timeout=5)
        sp = ProcessSpawner(asyncio.get_running_loop(), kill_grace=1.0, orphan_guard=True, run_lock=lock)
        # ignores SIGTERM: only the guard's SIGKILL, 1 s later, ends it
        pid = sp.spawn("t", ProcessSpec(["/bin/sh", "-c", "trap '' TERM; sleep 60"], dict(os.environ), os.getcwd()),
                       lambda k, e: None)
        print(pid, flush=True)
        if sys.argv[2] == "shutdown":
            await sp.shutdown(timeout=5)
            print("down", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
""")


def _take(lock: RunLock, **wait: Any) -> bool:
    return asyncio.run(lock.acquire(**wait))


def _alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def test_one_holder_at_a_time_and_the_next_takes_it_once_released(tmp_path):
    first, second = RunLock(str(tmp_path), "n1"), RunLock(str(tmp_path), "n1")
    other_node = RunLock(str(tmp_path), "n2")
    try:
        assert _take(first, timeout=1)
        called = []
        assert not _take(second, timeout=0.3, waiting=lambda: called.append(1))
        assert called == [1]
        assert _take(other_node, timeout=1)         # another node of the same run is not waited for
        first.release()
        assert _take(second, timeout=1)
    finally:
        for lock in (first, second, other_node):
            lock.release()


def test_a_lock_that_was_not_taken_is_not_removed_on_release(tmp_path):
    """Review: a launcher whose wait timed out went on, and at its end removed the file its predecessor's
    guard still held locked; the next launcher then made a new file and did not wait at all."""
    holder, late, next_one = (RunLock(str(tmp_path), "n1") for _ in range(3))
    try:
        assert _take(holder, timeout=1)
        assert not _take(late, timeout=0.2)
        late.release()
        assert not _take(next_one, timeout=0.2)
    finally:
        for lock in (holder, late, next_one):
            lock.release()


def test_a_killed_launchers_lock_is_held_until_its_guard_has_ended_the_tasks(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path), "kill"], stdout=subprocess.PIPE,
                            text=True)
    task = int(proc.stdout.readline())          # type: ignore[union-attr]
    resumed = RunLock(str(tmp_path), "n1")
    try:
        assert not _take(resumed, timeout=0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _take(resumed, timeout=20), "the lock was never released"
        assert not _alive(task), "the lock was free while the killed launcher's task still ran"
    finally:
        resumed.release()
        proc.kill()
        proc.wait(timeout=10)
        try:
            os.killpg(task, signal.SIGKILL)
        except OSError:
            pass


def test_a_launcher_that_ended_its_tasks_releases_the_lock(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path), "shutdown"], stdout=subprocess.PIPE,
                            text=True)
    resumed = RunLock(str(tmp_path), "n1")
    try:
        task = int(proc.stdout.readline())          # type: ignore[union-attr]
        assert proc.stdout.readline().strip() == "down"     # type: ignore[union-attr]
        assert not _alive(task)
        assert _take(resumed, timeout=2)
    finally:
        resumed.release()
        proc.kill()
        proc.wait(timeout=10)


def test_the_lock_directory_follows_tmpdir_as_tempfile_does(tmp_path, monkeypatch):
    from qcg.pilotjob.agent.run_lock import _temp_root

    for var in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(var, raising=False)
    assert _temp_root() == "/tmp"
    monkeypatch.setenv("TMP", str(tmp_path))
    assert _temp_root() == str(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))       # not a directory: the next one counts
    assert _temp_root() == str(tmp_path)
    monkeypatch.setenv("TMPDIR", "rel")
    (tmp_path / "rel").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _temp_root() == str(tmp_path / "rel")
    assert RunLock("run", "n1").path.startswith(str(tmp_path / "rel" / f"qcgpj-{os.getuid()}") + "/")
