"""ProcessSpawner: posix_spawn + pidfd launcher (DESIGN.md "Performance notes";
reference "Execution models" for CPU binding, "Executors" for local processes).

Every wait is bounded by asyncio.wait_for; no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import os
import stat
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from qcg.pilotjob.agent.spawner import ProcessExit, ProcessSpawner, ProcessSpec

WAIT = 20.0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _gone(pid: int) -> bool:
    """No such process any more (or only its zombie); races with its exit are fine."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _zombies() -> list[psutil.Process]:
    return [c for c in psutil.Process().children(recursive=True)
            if c.status() == psutil.STATUS_ZOMBIE]


class Collector:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.exits: dict = {}
        self._waiters: dict = {}

    def __call__(self, key, ev: ProcessExit) -> None:
        self.exits[key] = ev
        fut = self._waiters.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(ev)

    async def wait(self, key) -> ProcessExit:
        if key in self.exits:
            return self.exits[key]
        fut = self._waiters.setdefault(key, self.loop.create_future())
        return await asyncio.wait_for(fut, WAIT)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update(extra)
    return e


def test_exit_code_output_and_cwd_created(tmp_path):
    """Exit status is reported; the wd is created with its parents; stdout is written."""
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        wd = tmp_path / "a" / "b"
        out = tmp_path / "out.txt"
        pid = sp.spawn("t", ProcessSpec(["sh", "-c", "pwd; echo err >&2; exit 7"], env(), str(wd),
                                        stdout=str(out)), col)
        assert isinstance(pid, int)
        assert sp.running == 1
        ev = await col.wait("t")
        assert ev.exit_code == 7 and ev.reason is None and ev.killed is None
        assert ev.pid == pid and ev.finished_at >= ev.started_at
        assert out.read_text() == f"{wd}\n"          # stderr went to /dev/null
        assert sp.running == 0
        await sp.shutdown()
    run(main())


def test_same_file_for_stdout_and_stderr_and_truncation(tmp_path):
    """stdout == stderr -> one file with both streams; existing content is truncated
    (the original opens the files with mode "w")."""
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        log = tmp_path / "both.log"
        log.write_text("OLD CONTENT THAT MUST DISAPPEAR\n" * 10)
        sp.spawn(1, ProcessSpec(["sh", "-c", "echo one; echo two >&2; echo three"], env(), str(tmp_path),
                                stdout=str(log), stderr=str(log)), col)
        ev = await col.wait(1)
        assert ev.exit_code == 0
        assert log.read_text() == "one\ntwo\nthree\n"
        await sp.shutdown()
    run(main())


def test_own_streams_are_not_opened_through_links_and_are_private(tmp_path):
    """`own_streams` (the stderr files of our agents and partition managers, in the run's aux dir): never
    through a link, which in a swapped-in aux dir would truncate a file of the victim's; mode 0600. A task's
    streams still follow links (the user may point them anywhere)."""
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        victim = tmp_path / "victim"
        victim.write_text("precious\n")
        link = tmp_path / "agent.stderr"
        os.symlink(victim, link)
        assert sp.spawn("own", ProcessSpec(["sh", "-c", "echo x >&2"], env(), str(tmp_path), stderr=str(link),
                                           own_streams=True), col) is None
        ev = await col.wait("own")
        assert ev.exit_code is None and "agent.stderr" in ev.reason
        assert victim.read_text() == "precious\n"
        fresh = tmp_path / "fresh.stderr"
        sp.spawn("new", ProcessSpec(["sh", "-c", "echo x >&2"], env(), str(tmp_path), stderr=str(fresh),
                                    own_streams=True), col)
        assert (await col.wait("new")).exit_code == 0
        assert fresh.read_text() == "x\n" and stat.S_IMODE(fresh.stat().st_mode) == 0o600
        sp.spawn("task", ProcessSpec(["sh", "-c", "echo y >&2"], env(), str(tmp_path), stderr=str(link)), col)
        assert (await col.wait("task")).exit_code == 0
        assert victim.read_text() == "y\n"
        await sp.shutdown()
    run(main())


def test_stdin_and_separate_stderr(tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        (tmp_path / "in").write_text("hello input\n")
        sp.spawn(1, ProcessSpec(["sh", "-c", "cat; echo e >&2"], env(), str(tmp_path),
                                stdin=str(tmp_path / "in"), stdout=str(tmp_path / "o"),
                                stderr=str(tmp_path / "e")), col)
        assert (await col.wait(1)).exit_code == 0
        assert (tmp_path / "o").read_text() == "hello input\n"
        assert (tmp_path / "e").read_text() == "e\n"
        await sp.shutdown()
    run(main())


def test_environment_is_exactly_spec_env_and_path_lookup_uses_it(tmp_path):
    """The child gets spec.env only; argv[0] is looked up in spec.env's PATH,
    not in the manager's PATH."""
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        bindir = tmp_path / "bin"
        bindir.mkdir()
        tool = bindir / "only-here-tool"
        tool.write_text("#!/bin/sh\nenv > \"$1\"\n")
        tool.chmod(0o755)
        e = {"PATH": f"{bindir}:/usr/bin:/bin", "ONLY_VAR": "x y $z"}
        sp.spawn(1, ProcessSpec(["only-here-tool", str(tmp_path / "env.txt")], e, str(tmp_path)), col)
        ev = await col.wait(1)
        assert ev.exit_code == 0, ev.reason
        lines = set((tmp_path / "env.txt").read_text().splitlines())
        assert "ONLY_VAR=x y $z" in lines
        assert not any(l.startswith("HOME=") for l in lines)
        # not on the manager's PATH -> the lookup must have used spec.env
        sp.spawn(2, ProcessSpec(["only-here-tool", "/dev/null"], env(), str(tmp_path)), col)
        ev2 = await col.wait(2)
        assert ev2.exit_code is None and "only-here-tool" in ev2.reason
        await sp.shutdown()
    run(main())


def test_relative_executable_is_relative_to_cwd(tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        (tmp_path / "app.sh").write_text("#!/bin/sh\nexit 5\n")
        (tmp_path / "app.sh").chmod(0o755)
        sp.spawn(1, ProcessSpec(["./app.sh"], env(), str(tmp_path)), col)
        assert (await col.wait(1)).exit_code == 5
        await sp.shutdown()
    run(main())


def test_spawn_failures_report_clear_reason(tmp_path):
    """Missing executable, unwritable stdout, missing stdin, uncreatable wd: pid None,
    on_exit called later with exit_code None and a reason naming the culprit."""
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        blocker = tmp_path / "file"
        blocker.write_text("")
        cases = {
            "noexe": ProcessSpec(["no-such-program-xyz"], env(), str(tmp_path)),
            "abs": ProcessSpec([str(tmp_path / "missing")], env(), str(tmp_path)),
            "out": ProcessSpec(["true"], env(), str(tmp_path), stdout=str(tmp_path / "nodir" / "o")),
            "in": ProcessSpec(["true"], env(), str(tmp_path), stdin=str(tmp_path / "noinput")),
            "wd": ProcessSpec(["true"], env(), str(blocker / "sub")),
        }
        for key, spec in cases.items():
            assert sp.spawn(key, spec, col) is None
            assert key not in col.exits            # reported later, not re-entrantly
        got = {k: await col.wait(k) for k in cases}
        assert got["noexe"].reason == \
            "cannot start 'no-such-program-xyz': [Errno 2] No such file or directory"
        assert got["abs"].reason.startswith(f"cannot start '{tmp_path / 'missing'}': [Errno 2]")
        assert got["out"].reason.startswith(f"cannot open stdout '{tmp_path / 'nodir' / 'o'}'")
        assert got["in"].reason.startswith(f"cannot open stdin '{tmp_path / 'noinput'}'")
        assert str(blocker / "sub") in got["wd"].reason
        assert all(ev.exit_code is None and ev.pid is None for ev in got.values())
        assert sp.running == 0
        await sp.shutdown()
    run(main())


def test_cwd_is_restored_after_spawn(tmp_path):
    """spawn() chdir()s into the task's wd and back (DESIGN: posix_spawn has no chdir action)."""
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        before = os.getcwd()
        sp.spawn(1, ProcessSpec(["true"], env(), str(tmp_path / "w")), col)
        sp.spawn(2, ProcessSpec(["nonexistent-xyz"], env(), str(tmp_path / "w")), col)
        assert os.getcwd() == before
        await col.wait(1)
        await col.wait(2)
        await sp.shutdown()
    run(main())


def test_walltime_kills_the_whole_process_group(tmp_path):
    """Walltime: TERM to the group; a child that ignores TERM is KILLed after the grace."""
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop, kill_grace=0.5)
        col = Collector(loop)
        pidfile = tmp_path / "grandchild.pid"
        script = f'trap "" TERM; sleep 60 & echo $! > {pidfile}; wait'
        sp.spawn("w", ProcessSpec(["sh", "-c", script], env(), str(tmp_path), walltime=0.3), col)
        ev = await col.wait("w")
        assert ev.killed == "walltime"
        assert ev.reason == "walltime exceeded (0.3s)"
        assert ev.exit_code == -signal.SIGKILL
        gpid = int(pidfile.read_text())
        # the grandchild (same group) got TERM too; it is re-parented, wait for it to vanish
        for _ in range(200):
            if _gone(gpid):
                break
            await asyncio.sleep(0.05)
        assert _gone(gpid)
        await sp.shutdown()
    run(main())


async def _until_gone(pids: list[int]) -> bool:
    for _ in range(int(WAIT / 0.05)):
        if all(_gone(p) for p in pids):
            return True
        await asyncio.sleep(0.05)
    return False


def test_walltime_reaches_what_stays_in_the_group_after_the_first_process_ended(tmp_path):
    """README "Differences from the original": walltime TERMs the task's process group, then KILLs it. The
    first process dies of the TERM; a child that ignores it is still in the group and gets the KILL."""
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop, kill_grace=0.5, orphan_guard=True)
        col = Collector(loop)
        pidfile = tmp_path / "child.pid"
        script = f'(trap "" TERM; exec sleep 61) & echo $! > {pidfile}; sleep 60'
        sp.spawn("w", ProcessSpec(["sh", "-c", script], env(), str(tmp_path), walltime=0.5), col)
        ev = await col.wait("w")
        assert ev.killed == "walltime" and ev.exit_code == -signal.SIGTERM
        child = int(pidfile.read_text())
        assert await _until_gone([child])
        await sp.shutdown()
    run(main())
    _reap_stopped_guards()


def test_processes_a_task_left_in_its_group_end_with_it(tmp_path):
    """A task that exits leaving children in its group (one ignoring TERM, one double-forked): they end
    too, as a finished srun step's processes do; infrastructure processes (no orphan guard) are left alone."""
    async def main():
        loop = asyncio.get_running_loop()
        col = Collector(loop)
        left = {}
        for guarded in (True, False):
            sp = ProcessSpawner(loop, kill_grace=0.5, orphan_guard=guarded)
            a, b = tmp_path / f"a{guarded}", tmp_path / f"b{guarded}"
            script = (f'(trap "" TERM; exec sleep 62) & echo $! > {a}; '
                      f'(sleep 63 & echo $! > {b}) ; exit 3')
            sp.spawn(guarded, ProcessSpec(["sh", "-c", script], env(), str(tmp_path)), col)
            ev = await col.wait(guarded)
            assert ev.exit_code == 3 and ev.killed is None
            left[guarded] = [int(a.read_text()), int(b.read_text())]
            if guarded:
                assert await _until_gone(left[True])
            await sp.shutdown()
        try:
            assert not any(_gone(p) for p in left[False])
        finally:
            for p in left[False]:
                os.kill(p, signal.SIGKILL)
    run(main())
    _reap_stopped_guards()


def _reap_stopped_guards() -> None:
    """A launcher's orphan guard leaves, unwaited, when its tasks have ended (the launcher reaps it later,
    `reap_left`); done here, once it has left, so that the zombie count of the other tests starts at 0."""
    from qcg.pilotjob.agent.orphan_guard import _LEFT, reap_left

    for _ in range(int(WAIT / 0.02)):
        reap_left()
        if not _LEFT:
            return
        time.sleep(0.02)
    raise AssertionError("a stopped orphan guard did not leave")


def _spawn_beside_a_fifo(sp: ProcessSpawner, key: str, spec: ProcessSpec, col: Collector, fifo) -> int | None:
    """`sp.spawn`, with a process that opens the FIFO's other end (O_RDWR never waits) after 10 s, so that
    a spawn stuck in its open returns and the test fails instead of hanging (that spawn holds the GIL:
    a thread of this process could not do it)."""
    import subprocess
    marker = f"{fifo}.rescued"
    rescue = subprocess.Popen(["sh", "-c", f'sleep 10; exec 3<>"$1"; touch "$2"; sleep {WAIT}',
                               "rescue", str(fifo), marker])
    try:
        pid = sp.spawn(key, spec, col)
    finally:
        rescue.kill()
        rescue.wait(WAIT)
    assert not os.path.exists(marker), f"the spawn of {key!r} waited for the other end of its FIFO"
    return pid


def _spawner_and_a_fifo(tmp_path) -> tuple[ProcessSpawner, Collector, Path]:
    """A spawner on the running loop, its exit collector, and a FIFO `pipe` in `tmp_path`."""
    loop = asyncio.get_running_loop()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    return ProcessSpawner(loop), Collector(loop), fifo


def test_fifo_streams_are_opened_by_the_task_not_by_the_spawner(tmp_path):
    """A FIFO as stdin/stdout (helper report: the service hung, unkillable, inside posix_spawn's open of
    a FIFO; a task reading a FIFO that a later task writes deadlocked the run): the reader's spawn
    returns at once, the writer then starts, and the data goes through; stdout and stderr on one FIFO
    share it."""
    async def main():
        sp, col, fifo = _spawner_and_a_fifo(tmp_path)
        assert _spawn_beside_a_fifo(sp, "reader", ProcessSpec(["cat"], env(), str(tmp_path), stdin=str(fifo),
                                                              stdout=str(tmp_path / "got")), col, fifo)
        sp.spawn("writer", ProcessSpec(["sh", "-c", "echo hello; echo world >&2"], env(), str(tmp_path),
                                       stdout=str(fifo), stderr=str(fifo)), col)
        assert (await col.wait("writer")).exit_code == 0
        assert (await col.wait("reader")).exit_code == 0
        assert (tmp_path / "got").read_text() == "hello\nworld\n"
        await sp.shutdown()
    run(main())


def test_a_task_waiting_for_its_fifo_can_be_canceled(tmp_path):
    """Nobody ever reads the FIFO the task writes to: the task waits, the spawner does not, and cancel
    ends it like any task."""
    async def main():
        sp, col, fifo = _spawner_and_a_fifo(tmp_path)
        assert _spawn_beside_a_fifo(sp, "w", ProcessSpec(["echo", "x"], env(), str(tmp_path), stdout=str(fifo)),
                                    col, fifo)
        assert sp.cancel("w") is True
        ev = await col.wait("w")
        assert ev.exit_code == -signal.SIGTERM and ev.killed == "canceled"
        await sp.shutdown()
    run(main())


def test_cancel_sends_term_and_reports_negative_signal(tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        sp.spawn("c", ProcessSpec(["sleep", "60"], env(), str(tmp_path)), col)
        assert sp.cancel("c") is True
        assert sp.cancel("unknown") is False
        ev = await col.wait("c")
        assert ev.exit_code == -signal.SIGTERM
        assert ev.killed == "canceled" and ev.reason == "canceled"
        assert sp.cancel("c") is False
        await sp.shutdown()
    run(main())


def test_shutdown_terminates_everything(tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop, kill_grace=0.3)
        col = Collector(loop)
        for i in range(5):
            sp.spawn(i, ProcessSpec(["sh", "-c", 'trap "" TERM; sleep 60'] if i % 2 else ["sleep", "60"],
                                    env(), str(tmp_path)), col)
        assert sp.running == 5
        await sp.shutdown(timeout=10)
        assert sp.running == 0
        assert {ev.killed for ev in col.exits.values()} == {"canceled"}
        assert len(col.exits) == 5
    run(main())


def test_duplicate_key_is_rejected(tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        sp.spawn("k", ProcessSpec(["sleep", "60"], env(), str(tmp_path)), col)
        with pytest.raises(ValueError):
            sp.spawn("k", ProcessSpec(["true"], env(), str(tmp_path)), col)
        await sp.shutdown()
    run(main())


def _allowed(path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


def test_cpu_binding_is_inherited_and_parent_mask_restored(tmp_path):
    """Reference "Execution models": tasks are bound to their cores (no taskset)."""
    avail = sorted(os.sched_getaffinity(0))

    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        target = avail[-1]
        sp.spawn(1, ProcessSpec(["cat", "/proc/self/status"], env(), str(tmp_path),
                                stdout=str(tmp_path / "s1"), cpus=[target]), col)
        assert sp.last_effective_cpus == [target]
        assert sorted(os.sched_getaffinity(0)) == avail      # restored
        ev = await col.wait(1)
        assert ev.cpus == [target]
        assert _allowed(tmp_path / "s1") == str(target)
        await sp.shutdown()
    run(main())


def test_cpu_binding_drops_cpus_that_do_not_exist(tmp_path, caplog):
    """slurm-localhost.md caveat: virtual nodes may name CPUs this machine lacks —
    bind to the existing ones only and report the effective set."""
    avail = sorted(os.sched_getaffinity(0))
    bogus = 4096 + 7

    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        sp.spawn(1, ProcessSpec(["cat", "/proc/self/status"], env(), str(tmp_path),
                                stdout=str(tmp_path / "s"), cpus=[avail[0], bogus]), col)
        ev = await col.wait(1)
        assert ev.exit_code == 0 and ev.cpus == [avail[0]]
        assert _allowed(tmp_path / "s") == str(avail[0])
        # no existing CPU at all: runs unbound and says so
        sp.spawn(2, ProcessSpec(["true"], env(), str(tmp_path), cpus=[bogus]), col)
        ev2 = await col.wait(2)
        assert ev2.exit_code == 0 and ev2.cpus is None
        await sp.shutdown()

    with caplog.at_level("WARNING", logger="qcg.pilotjob.agent.spawner"):
        run(main())
    assert any("not all available" in r.getMessage() for r in caplog.records)
    assert any("none of the requested CPUs" in r.getMessage() for r in caplog.records)


def test_ignored_signals_are_not_inherited(tmp_path):
    """Python ignores SIGPIPE, and an agent forked by its partition manager ignores SIGINT and SIGTERM
    (early_agents); a task must get the default dispositions back: cancel and walltime begin with SIGTERM
    (issue 3 "cancel and walltime kill the whole process group (TERM, then KILL)"). Any other signal the
    launcher ignores is not passed on either (SIGUSR1, SIGWINCH, a real-time one)."""
    others = (signal.SIGUSR1, signal.SIGWINCH, signal.SIGRTMIN + 3)
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        sp.spawn(1, ProcessSpec(["sh", "-c", "grep SigIgn /proc/self/status"], env(), str(tmp_path),
                                stdout=str(tmp_path / "o")), col)
        await col.wait(1)
        ign = int((tmp_path / "o").read_text().split()[1], 16)
        for sig in (signal.SIGPIPE, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, *others):
            assert not ign & (1 << (sig - 1)), sig
        await sp.shutdown()

    saved = {sig: signal.signal(sig, signal.SIG_IGN)
             for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, *others)}
    try:
        run(main())
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_own_process_group(tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        pid = sp.spawn(1, ProcessSpec(["sleep", "60"], env(), str(tmp_path)), col)
        assert os.getpgid(pid) == pid != os.getpgid(0)
        sp.cancel(1)
        await col.wait(1)
        await sp.shutdown()
    run(main())


def test_no_zombies_no_fd_leaks(tmp_path):
    """Many spawns (successful, failing, killed): afterwards no zombie children and
    the same number of open descriptors as before."""
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)
        # warm-up: lets the spawner open its /dev/null descriptor and the loop settle
        sp.spawn("warm", ProcessSpec(["true"], env(), str(tmp_path)), col)
        await col.wait("warm")
        before = _fds()
        n = 200
        for i in range(n):
            if i % 10 == 0:
                spec = ProcessSpec(["no-such-xyz"], env(), str(tmp_path))
            elif i % 10 == 1:
                spec = ProcessSpec(["sleep", "30"], env(), str(tmp_path), walltime=0.05)
            else:
                spec = ProcessSpec(["true"], env(), str(tmp_path), stdout=str(tmp_path / f"o{i % 3}"),
                                   stderr=str(tmp_path / f"o{i % 3}"))
            sp.spawn(i, spec, col)
        for i in range(n):
            await col.wait(i)
        assert sp.running == 0
        assert _fds() == before
        assert _zombies() == []
        await sp.shutdown()
        assert _fds() == before - 2        # shutdown closes the /dev/null and the epoll descriptors
    run(main())


def test_broken_callback_does_not_break_spawner(tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        col = Collector(loop)

        def bad(key, ev):
            raise RuntimeError("boom")

        sp.spawn("bad", ProcessSpec(["true"], env(), str(tmp_path)), bad)
        sp.spawn("good", ProcessSpec(["sh", "-c", "sleep 0.2"], env(), str(tmp_path)), col)
        assert (await col.wait("good")).exit_code == 0
        assert sp.running == 0
        await sp.shutdown()
    run(main())


def test_before_exits_runs_before_the_exit_callbacks_of_a_turn(tmp_path):
    """The hook the flat-mode service uses to answer waiting requests before refilling cores
    (issue 4, "submit ... while 1000 tasks are being launched"): it runs ahead of every exit callback."""
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        order: list[str] = []
        sp.before_exits = lambda: order.append("hook")
        col = Collector(loop)

        def on_exit(key, ev):
            order.append(f"exit {key}")
            col(key, ev)

        for key in ("a", "b"):
            sp.spawn(key, ProcessSpec(["/bin/true"], env(), str(tmp_path)), on_exit)
        await col.wait("a")
        await col.wait("b")
        assert order[0] == "hook"
        for i, item in enumerate(order):
            if item.startswith("exit"):
                assert "hook" in order[:i]
        assert sorted(o for o in order if o != "hook") == ["exit a", "exit b"]
        await sp.shutdown()
    run(main())


def test_adopted_child_is_stopped_with_its_own_signal(tmp_path):
    """A child adopted with `term_signal` (the forked node agent ignores SIGTERM and stops on SIGHUP)
    is asked to stop with that signal; it exits by itself, not by the SIGKILL after the grace time."""
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop, kill_grace=15.0)
        col = Collector(loop)
        ready = tmp_path / "ready"
        code = ("import signal, sys, time, pathlib\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "signal.signal(signal.SIGHUP, lambda *a: sys.exit(5))\n"
                f"pathlib.Path({str(ready)!r}).touch()\n"
                "time.sleep(60)\n")
        pid = os.posix_spawn(sys.executable, [sys.executable, "-c", code], dict(os.environ), setpgroup=0)
        sp.adopt("agent", pid, col, 0.0, signal.SIGHUP)
        deadline = loop.time() + WAIT
        while not ready.exists():
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        assert sp.cancel("agent")
        ev = await col.wait("agent")
        assert ev.exit_code == 5 and ev.killed == "canceled"
        await sp.shutdown()
    run(main())

