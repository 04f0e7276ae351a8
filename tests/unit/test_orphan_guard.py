"""The orphan guard (agent/orphan_guard.py): tasks do not outlive a launcher killed outright.

DESIGN principle 4 ("Nothing lost ... `--resume` replays exactly the unfinished set"): a task left running
by a killed service would run twice after a resume, next to its own re-run. Tasks have process groups of
their own, so without the guard a `kill -9` of the launcher (the OOM killer's way) leaves them all running.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import psutil

LAUNCHER = textwrap.dedent("""
    import asyncio, os, sys
    from qcg.pilotjob.agent.spawner import ProcessSpawner, ProcessSpec

    async def main():
        sp = ProcessSpawner(asyncio.get_running_loop(), kill_grace=0.5, orphan_guard=True)
        env, cwd = dict(os.environ), os.getcwd()
        polite = sp.spawn("polite", ProcessSpec(["/bin/sh", "-c", "sleep 60 & wait"], env, cwd), lambda k, e: None)
        # ignores SIGTERM (the ignored disposition survives exec): only the guard's SIGKILL ends it
        stubborn = sp.spawn("stubborn", ProcessSpec(["/bin/sh", "-c", "trap '' TERM; sleep 60"], env, cwd),
                            lambda k, e: None)
        ended = sp.spawn("ended", ProcessSpec(["/bin/true"], env, cwd), lambda k, e: None)
        await asyncio.sleep(0.5)            # /bin/true is reaped (its slot in the guard's table cleared)
        print(polite, stubborn, ended, sp._guard.current.pid, flush=True)
        if sys.argv[1] == "shutdown":
            await sp.shutdown(timeout=5)
            print("down", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
""")


def _launch(mode: str) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, mode], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()          # type: ignore[union-attr]
    assert line, "the launcher did not start its tasks"
    return proc, [int(x) for x in line.split()]


def _clean_up(proc: subprocess.Popen, *groups: int | None) -> None:
    """Whatever a failed test left: the launcher, and the task groups it had."""
    proc.kill()
    proc.wait(timeout=10)
    for pgid in groups:
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.05)
    return False


def _group(pgid: int) -> list[int]:
    """The live processes of a process group (the task's tree)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (OSError, psutil.Error):
            pass
    return out


def _table(guard: int) -> set[int]:
    """The group ids the guard would end now: its shared table (its fd 3)."""
    from qcg.pilotjob.agent.orphan_guard import live_groups

    with open(f"/proc/{guard}/fd/3", "rb") as f:
        return live_groups(f.fileno())


def test_tasks_of_a_killed_launcher_are_ended():
    """kill -9 of the launcher: the guard sends its task groups SIGTERM (the whole tree: the shell and its
    background sleep), then SIGKILL to what ignores SIGTERM; then the guard itself ends. Until then the
    table it reads holds the live groups and not the reaped one (whose id may be reused)."""
    proc, (polite, stubborn, ended, guard) = _launch("stay")
    tree = _group(polite) + _group(stubborn)
    try:
        assert len(tree) >= 3, tree          # sh + sleep of the first, sh/sleep of the second
        assert _table(guard) == {polite, stubborn}, (_table(guard), ended)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _gone(tree, 10), f"tasks outlived their killed launcher: {[p for p in tree if psutil.pid_exists(p)]}"
        assert _gone([guard], 10), "the guard did not end after its work"
    finally:
        _clean_up(proc, polite, stubborn)


def test_guard_leaves_alone_after_an_ordered_shutdown():
    """An ordered shutdown ends the tasks itself and tells the guard, which leaves at once, killing nothing
    (a group id it once held may belong to somebody else by then)."""
    proc, (_polite, _stubborn, _ended, guard) = _launch("shutdown")
    try:
        assert proc.stdout.readline().strip() == "down"     # type: ignore[union-attr]
        assert _gone([guard], 5), "the guard stayed after the launcher's ordered shutdown"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_guard_only_for_tasks_and_only_once_one_runs():
    """The guard is for tasks: infrastructure spawners (agents, partition managers) have none. A task
    launcher starts its guard with its first task, so one replaced before it runs any (the default launcher
    of a partition that gets node agents) leaves no guard process behind (a review found one per Slurm
    service, for the whole run)."""
    import asyncio

    from qcg.pilotjob.agent.orphan_guard import reap_left
    from qcg.pilotjob.agent.spawner import ProcessSpawner, ProcessSpec

    async def main():
        before = {p.pid for p in psutil.Process().children()}
        infra = ProcessSpawner(asyncio.get_running_loop())
        tasks = ProcessSpawner(asyncio.get_running_loop(), orphan_guard=True)
        assert infra._guard is None and tasks._guard.current is None
        assert {p.pid for p in psutil.Process().children()} == before
        done = asyncio.get_running_loop().create_future()
        tasks.spawn("t", ProcessSpec(["/bin/true"], {}, os.getcwd()), lambda k, e: done.set_result(e))
        assert (await asyncio.wait_for(done, 10)).exit_code == 0
        assert tasks._guard.current is not None
        await tasks.shutdown()
        assert tasks._guard.current is None
        # the guard leaves on its own (shutdown does not wait for it); a launcher that goes on reaps it
        deadline = time.monotonic() + 10
        while {p.pid for p in psutil.Process().children()} != before:
            assert time.monotonic() < deadline, "the guard did not leave"
            reap_left()
            await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(main(), 20))


def test_tasks_run_when_the_guard_cannot_start(monkeypatch, caplog):
    """A guard that cannot start (no interpreter at sys.executable, no memory) is a lost protection, not a
    failed run: the task runs, a warning says what is missing (a review found a traceback instead)."""
    import asyncio

    from qcg.pilotjob.agent.spawner import ProcessSpawner, ProcessSpec

    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")

    async def main():
        sp = ProcessSpawner(asyncio.get_running_loop(), orphan_guard=True)
        done = asyncio.get_running_loop().create_future()
        assert sp.spawn("t", ProcessSpec(["/bin/true"], {}, os.getcwd()), lambda k, e: done.set_result(e))
        assert (await asyncio.wait_for(done, 10)).exit_code == 0
        assert sp._guard.current is None and not sp._guard.active
        await sp.shutdown()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert "orphan guard not started" in caplog.text


GROWN = textwrap.dedent("""
    import os, subprocess, sys
    from qcg.pilotjob.agent.orphan_guard import OrphanGuard

    guard = OrphanGuard(grace=0.5)
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    fake = [pid_max + 1 + i for i in range(3000)]      # no such group: the guard's signal finds nobody
    for pgid in fake[:1500]:
        guard.started(pgid)
    for pgid in fake[:1000]:
        guard.reaped(pgid)                               # slots given back and taken again below
    for pgid in fake[1500:]:
        guard.started(pgid)
    task = subprocess.Popen(["sleep", "60"], process_group=0)
    guard.started(task.pid)                              # in a slot past the first table's 1024
    print(task.pid, guard.pid, flush=True)
    sys.stdin.read()
""")


def test_guard_table_grows_with_the_groups_running_at_once():
    """More groups at once than the first table holds (1 024): the table grows, and a group written past
    its first size is still ended when the launcher is killed."""
    proc = subprocess.Popen([sys.executable, "-c", GROWN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    task = None
    try:
        task, guard = (int(x) for x in proc.stdout.readline().split())   # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _gone([task], 10), "a group in the grown part of the table outlived its killed launcher"
        assert _gone([guard], 10), "the guard did not end after its work"
    finally:
        _clean_up(proc, task)


NO_ROOM = textwrap.dedent("""
    import asyncio, os, resource
    from qcg.pilotjob.agent.spawner import ProcessSpawner, ProcessSpec

    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop, orphan_guard=True)
        ends = {}
        env, cwd = dict(os.environ), os.getcwd()
        spec = lambda: ProcessSpec(["/bin/sh", "-c", "sleep 0.3"], env, cwd)
        sp.spawn("first", spec(), lambda k, e: ends.__setitem__(k, e.exit_code))
        pid_max = int(open("/proc/sys/kernel/pid_max").read())
        guard = sp._guard.current
        while guard._free:                          # the first table is full
            guard.started(pid_max + 1 + len(guard._slot_of))
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))   # it cannot grow
        sp.spawn("second", spec(), lambda k, e: ends.__setitem__(k, e.exit_code))
        for _ in range(200):
            if len(ends) == 2:
                break
            await asyncio.sleep(0.05)
        print(sorted(ends.items()), sp._guard.current is None, flush=True)

    asyncio.run(main())
""")


def test_a_table_that_cannot_grow_costs_the_guard_not_the_run():
    """The guard's table cannot grow (no memory, a file-size limit): the launcher gives the guard up with
    a warning; the task that needed the slot runs, and every task's end is still reported (a review found
    the ends lost and the spawner broken)."""
    out = subprocess.run([sys.executable, "-c", NO_ROOM], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('first', 0), ('second', 0)] True", (out.stdout, out.stderr)
    assert "orphan guard not started or given up" in out.stderr


GUARD_KILLED = textwrap.dedent("""
    import asyncio, logging, os, signal, sys
    from qcg.pilotjob.agent.spawner import ProcessSpawner, ProcessSpec

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")

    async def main(kills):
        sp = ProcessSpawner(asyncio.get_running_loop(), kill_grace=0.5, orphan_guard=True)
        task = sp.spawn("t", ProcessSpec(["/bin/sleep", "60"], dict(os.environ), os.getcwd()), lambda k, e: None)
        guards = []
        for _ in range(kills):
            guard = sp._guard.current.pid
            guards.append(guard)
            os.kill(guard, signal.SIGKILL)                      # somebody kills the guard
            for _ in range(200):
                await asyncio.sleep(0.05)
                if sp._guard.current is None or sp._guard.current.pid != guard:
                    break
        now = sp._guard.current
        print(task, now.pid if now else 0, sp._guard.active, *guards, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main(int(sys.argv[1])))
""")


def _killing_guards(kills: int, log) -> tuple[subprocess.Popen, list[str]]:
    """The launcher of GUARD_KILLED and its report line (read with a deadline: a launcher that hangs or
    spins must fail the test, not hang it); its log goes to the file `log`, never a pipe left unread."""
    proc = subprocess.Popen([sys.executable, "-c", GUARD_KILLED, str(kills)], stdout=subprocess.PIPE,
                            stderr=log, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""                     # type: ignore[union-attr]
    if not line:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError("the launcher did not report its guards")
    return proc, line.split()


def test_a_killed_guard_is_replaced_and_the_new_one_ends_the_tasks(tmp_path):
    """Somebody kills the guard while tasks run: the launcher says so, reaps it, and a new guard takes over
    the live groups -- a kill -9 of the launcher afterwards still ends its task. Guards that keep dying are
    given up with a warning (after `REPLACEMENTS`), and the run goes on."""
    from qcg.pilotjob.agent.guard_keeper import REPLACEMENTS

    log = tmp_path / "launcher.log"
    with open(log, "w") as err:
        proc, (task, guard, active, killed) = _killing_guards(1, err)
    task_pid = int(task)
    try:
        assert int(guard) not in (0, int(killed)) and active == "True"
        assert _table(int(guard)) == {task_pid}, "the new guard does not know the running task"
        assert not psutil.pid_exists(int(killed)), "the killed guard was not reaped"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _gone([task_pid], 10), "the task outlived its killed launcher after its guard was replaced"
        assert "orphan guard ended (killed by signal 9 (SIGKILL)); a new one takes over 1 task group(s)" \
            in log.read_text()
    finally:
        _clean_up(proc, task_pid)

    with open(log, "w") as err:
        proc, (task, guard, active, *killed) = _killing_guards(REPLACEMENTS + 1, err)
    task_pid = int(task)
    try:
        assert guard == "0" and active == "False" and len(set(killed)) == REPLACEMENTS + 1
        assert psutil.Process(task_pid).status() != psutil.STATUS_ZOMBIE      # the task runs on, unguarded
        proc.kill()
        proc.wait(timeout=10)
        assert f"{REPLACEMENTS + 1} guards ended, the last killed by signal 9" in log.read_text()
    finally:
        _clean_up(proc, task_pid)


def test_how_a_guard_ended_is_told_and_a_guard_that_cannot_be_watched_is_not_left_behind(monkeypatch):
    """The launcher's log names the signal that ended its guard, a real-time one too (a review found a
    traceback instead); a guard started but not watchable (no descriptor left for its pidfd) is ended and
    reaped at once, not left a zombie."""
    from qcg.pilotjob.agent.orphan_guard import OrphanGuard

    guard = OrphanGuard(grace=0.5)
    os.kill(guard.pid, signal.SIGRTMIN + 1)       # type: ignore[arg-type]
    os.waitid(os.P_PIDFD, guard.pidfd, os.WEXITED | os.WNOWAIT)          # ended (not reaped yet)
    assert guard.ended_how() == f"killed by signal {signal.SIGRTMIN + 1} (SIGRTMIN+1)"
    guard.close()

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(24, "Too many open files")

    before = {p.pid for p in psutil.Process().children()}
    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    try:
        OrphanGuard(grace=0.5)
    except OSError:
        pass
    else:
        raise AssertionError("a guard that cannot be watched was kept")
    monkeypatch.undo()
    assert {p.pid for p in psutil.Process().children()} == before, "the unwatched guard was left behind"
