"""Process launcher: `posix_spawn` + pidfd, driven by an asyncio loop.

Used in-process for local runs and inside the node agent. The hot path is a
handful of system calls on top of the spawn itself:

* the executable is resolved against the PATH of the *task's* environment,
  with a cache (spawn_args.py, which also builds the file actions and the
  effective CPU set);
* the working directory is set with ``os.chdir()`` before the spawn and
  restored afterwards, because ``os.posix_spawn`` in Python 3.11 has no chdir
  file action. **Consequence: spawn() must always be called from one thread
  (the loop's thread), and other threads of the process must not rely on the
  current directory.**
* CPU binding: the calling thread's affinity is set with
  ``os.sched_setaffinity(0, cpus)`` just before the spawn and restored after —
  the child inherits the mask. No ``taskset``, no ``preexec_fn`` (which would
  force the slow fork path). CPUs that do not exist here (virtual nodes with
  more CPUs than the machine) are dropped; the effective set is logged and
  returned in ``ProcessExit.cpus`` and ``ProcessSpawner.last_effective_cpus``.
* streams are opened in the child with ``POSIX_SPAWN_OPEN`` file actions, so
  the parent never holds a descriptor for them. stdout/stderr are truncated
  (the original opens them with mode ``"w"``); the same path for both gives
  one shared open file description (``POSIX_SPAWN_DUP2``).
* every child gets its own process group (``setgroup=0``) so cancel and
  walltime signal the whole tree the task started.
* descriptors the process was started with are made close-on-exec when
  the spawner is made (process_setup.py): tasks get stdin/out/err only.
* exits are detected with ``os.pidfd_open``: every pidfd goes into one
  private ``epoll`` whose descriptor is the only thing the asyncio loop
  watches (registering each pidfd with the loop costs several times more in
  Python bookkeeping); the child is reaped with ``os.wait4(pid, WNOHANG)``.
  Exits that arrive together are handled in one wake-up. No polling, no
  threads.
* ``chdir`` is skipped when the task runs in the spawner's own current
  directory (the service runs in its working directory, the default wd).
* the spawning thread asks for a short CPU time slice (process_setup.py):
  the child of a vfork-based spawn is still exec'ing on the spawner's CPU
  when the spawn returns, and with the default slice the spawner waited
  behind it while the other cores were busy.

The exit code follows `subprocess`: the exit status, or the negative signal
number when the process was killed by a signal. Stopping processes (cancel,
walltime, shutdown) is in process_stopping.py.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from qcg.pilotjob.agent.guard_keeper import GuardKeeper
from qcg.pilotjob.agent.run_lock import RunLock
from qcg.pilotjob.agent.process_setup import (
    ask_for_short_slices, keep_inherited_fds_from_tasks, raise_open_files_limit)
from qcg.pilotjob.agent.process_stopping import ProcessStopping
from qcg.pilotjob.agent.spawn_args import ProcessSpec, SpawnArgs, err_text

_log = logging.getLogger(__name__)

# Ignored dispositions survive exec, so the child gets the defaults back: Python ignores SIGPIPE and
# SIGXFSZ (subprocess's restore_signals resets those), and an agent forked by its manager ignores SIGINT
# and SIGTERM, which a task must not inherit: cancel and walltime begin with SIGTERM. Every signal, not
# only those: glibc's child (the parent waits in vfork meanwhile) then sets each once instead of reading
# and setting it, 64 system calls instead of 120, about 10 us of every spawn.
_SIGDEF = tuple(sorted(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}))


@dataclass(slots=True)
class ProcessExit:
    exit_code: int | None               # status, -signal, or None when never started / lost
    reason: str | None                  # why it failed or was killed; None on a plain exit
    started_at: float
    finished_at: float
    pid: int | None
    killed: str | None                  # None, "walltime" or "canceled"
    cpus: list[int] | None = None       # effective CPU binding (None = not bound)
    rusage: Any = None                  # os.wait4 resource usage, when reaped


class _Proc:
    __slots__ = ("key", "pid", "pidfd", "on_exit", "started_at", "killed", "reason",
                 "wt_handle", "kill_handle", "cpus", "term_signal")

    def __init__(self, key, pid, pidfd, on_exit, started_at, cpus):
        self.key = key
        self.pid = pid
        self.pidfd = pidfd
        self.on_exit = on_exit
        self.started_at = started_at
        self.killed: str | None = None
        self.reason: str | None = None
        self.wt_handle: asyncio.TimerHandle | None = None
        self.kill_handle: asyncio.TimerHandle | None = None
        self.cpus = cpus
        self.term_signal = signal.SIGTERM      # the polite signal before SIGKILL


def end_unwatched(pid: int) -> None:
    """End a child that leads its own process group and that nothing will watch, and reap it at once."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        os.waitpid(pid, 0)      # at once: SIGKILL cannot be ignored
    except ChildProcessError:
        pass


class ProcessSpawner(ProcessStopping):
    """Starts processes and reports their exits through callbacks on `loop`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, kill_grace: float = 3.0, orphan_guard: bool = False,
                 run_lock: RunLock | None = None) -> None:
        """`run_lock` (taken by the caller before the first task): held by this spawner and its orphan
        guards until the tasks have all ended, then released by `shutdown` (agent/run_lock.py)."""
        self._loop = loop
        self._run_lock = run_lock
        self._kill_grace = kill_grace
        raise_open_files_limit()
        inherited = keep_inherited_fds_from_tasks()
        if inherited:
            _log.debug("%d inherited descriptor(s) made close-on-exec: tasks do not get them", inherited)
        # spawn() runs in this thread: it must not wait behind the tasks it starts (process_setup)
        short_slices = ask_for_short_slices()
        _log.debug("short CPU time slices for the launcher: %s", short_slices)
        # tasks (not infrastructure) are guarded: a kill -9 of this process must not leave them running.
        # The guard starts with the first task: a launcher that is replaced before it runs any has none.
        self._procs: dict[Hashable, _Proc] = {}
        self._guard = GuardKeeper(loop, kill_grace, self._live_groups, describe=err_text,
                                  hold=run_lock.fileno if run_lock is not None else None) if orphan_guard else None
        # a task's processes end with it (process_stopping); infrastructure (agents, managers) is not a task
        self._ends_groups = orphan_guard
        self._lingering: dict[int, Any] = {}           # process_stopping._Lingering
        self._args = SpawnArgs()
        self._idle: asyncio.Future | None = None
        self.last_effective_cpus: list[int] | None = None
        self._epoll: select.epoll | None = None
        self._by_fd: dict[int, _Proc] = {}
        self._cwd = os.getcwd()
        # called before the exits of a loop turn are handled (whose callbacks may launch more):
        # the flat-mode service answers waiting client requests there first
        self.before_exits: Callable[[], None] | None = None

    def _live_groups(self) -> list[int]:
        return [p.pid for p in self._procs.values()] + list(self._lingering)

    # ------------------------------------------------------------------ api
    @property
    def running(self) -> int:
        return len(self._procs)

    @property
    def available_cpus(self) -> list[int] | None:
        """CPUs this process may use (what binding is clamped to)."""
        return sorted(self._args.base_cpus) if self._args.base_cpus is not None else None

    def spawn(self, key: Hashable, spec: ProcessSpec,
              on_exit: Callable[[Hashable, ProcessExit], None]) -> int | None:
        """Start `spec`; returns the pid, or None when it could not start.

        On failure `on_exit` is still called (soon, from the loop) with
        ``exit_code=None`` and a reason naming what failed.
        """
        if key in self._procs:
            raise ValueError(f"process key {key!r} is already running")
        started = time.time()
        argv = spec.argv
        self.last_effective_cpus = None
        if not argv:
            return self._fail(key, on_exit, started, "cannot start task: empty command line")
        try:
            fa = self._args.file_actions(spec)
        except OSError as exc:      # no descriptor left for /dev/null (EMFILE): this task fails, not the caller
            return self._fail(key, on_exit, started, f"cannot start {argv[0]!r}: {err_text(exc)}")

        name = argv[0]
        cwd = spec.cwd
        env = spec.env
        try:
            exe = self._args.resolve(name, env.get("PATH", os.defpath), cwd)
        except OSError as exc:
            return self._fail(key, on_exit, started, f"cannot start {name!r}: {err_text(exc)}")

        fa, argv, exe = self._args.fifo_opens(spec, fa, argv, exe)

        # --- affinity
        cpus = None
        if spec.cpus is not None:
            cpus = self._args.effective_cpus(spec.cpus)

        # --- cwd
        prev_cwd = self._cwd
        same_dir = cwd == prev_cwd
        try:
            if not same_dir:
                os.chdir(cwd)
        except FileNotFoundError:
            try:
                os.makedirs(cwd, exist_ok=True)
                os.chdir(cwd)
            except OSError as exc:
                return self._fail(key, on_exit, started,
                                  f"cannot create working directory {cwd!r}: {err_text(exc)}")
        except (OSError, ValueError) as exc:      # ValueError: a NUL character in the path
            return self._fail(key, on_exit, started,
                              f"cannot enter working directory {cwd!r}: {err_text(exc)}")
        try:
            bind = cpus is not None and cpus is not self._args.base_cpus
            if bind:
                os.sched_setaffinity(0, cpus)
            try:
                pid = os.posix_spawn(exe, argv, env, file_actions=fa, setpgroup=0,
                                     setsigdef=_SIGDEF, setsigmask=())
            finally:
                if bind:
                    os.sched_setaffinity(0, self._args.base_cpus)
        except OSError as exc:
            reason = self._args.diagnose(spec, exe, exc)
            if exc.errno == errno.ENOENT:
                self._args.forget(name)
            return self._fail(key, on_exit, started, reason)
        except ValueError as exc:   # a NUL character in an argument, a variable or a path: bad input, not a fault
            return self._fail(key, on_exit, started, f"cannot start {name!r}: {exc}")
        finally:
            if not same_dir:
                try:
                    os.chdir(prev_cwd)
                except OSError:  # pragma: no cover - our own cwd vanished
                    _log.warning("cannot return to directory %s", prev_cwd)

        eff = sorted(cpus) if cpus is not None else None
        self.last_effective_cpus = eff
        try:
            proc = self._watch(key, pid, on_exit, started, eff)
        except OSError as exc:
            # started but cannot be watched (no descriptor left for its pidfd): an unwatched task would hold
            # its cores for ever, so it is ended here and fails with the reason
            end_unwatched(pid)
            return self._fail(key, on_exit, started, f"cannot watch the started process {pid}: {err_text(exc)}")
        if self._lingering:
            self._group_reused(pid)
        if self._guard is not None:
            self._guard.started(pid)        # its own group: setpgroup=0
        if spec.walltime is not None and spec.walltime > 0:
            proc.wt_handle = self._loop.call_later(spec.walltime, self._walltime, proc, spec.walltime)
        return pid

    def adopt(self, key: Hashable, pid: int, on_exit: Callable[[Hashable, ProcessExit], None],
              started: float, term_signal: int = signal.SIGTERM) -> int:
        """Watch a child this process spawned by other means (its own process group), as if spawned here.

        `term_signal` is what asks it to stop (before SIGKILL), for a child that ignores SIGTERM.
        """
        if key in self._procs:
            raise ValueError(f"process key {key!r} is already running")
        self._watch(key, pid, on_exit, started, None).term_signal = term_signal
        return pid

    def _watch(self, key: Hashable, pid: int, on_exit: Callable[[Hashable, ProcessExit], None], started: float,
               cpus: list[int] | None) -> "_Proc":
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            _log.error("pidfd_open(%d) failed: %s", pid, exc)
            raise
        try:
            ep = self._epoll
            if ep is None:
                ep = self._epoll = select.epoll()
                self._loop.add_reader(ep.fileno(), self._on_exits)
            ep.register(pidfd, select.EPOLLIN)
        except OSError:
            os.close(pidfd)
            raise
        proc = _Proc(key, pid, pidfd, on_exit, started, cpus)
        self._procs[key] = proc
        self._by_fd[pidfd] = proc
        return proc

    async def shutdown(self, timeout: float = 5.0) -> None:
        """TERM then KILL everything still running; wait (bounded) for the exits.

        Also closes the spawner's own /dev/null descriptor (reopened if spawn()
        is called again).
        """
        try:
            await self._shutdown(timeout)
        finally:
            self._kill_all_lingering()
            if self._guard is not None and not self._procs:
                self._guard.stop()          # every task has ended: the guard leaves (not waited for)
            if self._run_lock is not None and not self._procs:
                self._run_lock.release()    # a guard that still runs keeps holding it
            self._args.close()
            if self._epoll is not None and not self._procs:
                self._loop.remove_reader(self._epoll.fileno())
                self._epoll.close()
                self._epoll = None

    # ------------------------------------------------------------ internals
    def _fail(self, key, on_exit, started, reason):
        _log.warning("spawn of %r failed: %s", key, reason)
        ev = ProcessExit(None, reason, started, time.time(), None, None)
        self._loop.call_soon(self._call, on_exit, key, ev)
        return None

    @staticmethod
    def _call(cb, key, ev):
        try:
            cb(key, ev)
        except Exception:  # a broken callback must not break the spawner
            _log.exception("on_exit callback for %r failed", key)

    def _on_exits(self) -> None:
        ep = self._epoll
        if ep is None:
            return
        if self.before_exits is not None:
            self.before_exits()
        by_fd = self._by_fd
        for fd, _ in ep.poll(0):
            proc = by_fd.get(fd)
            if proc is not None:
                self._reap(proc)

    def _reap(self, proc: _Proc) -> None:
        try:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status, ru = proc.pid, None, None
        if pid == 0:        # spurious wake-up
            return
        del self._by_fd[proc.pidfd]
        os.close(proc.pidfd)       # closing also removes it from the epoll set
        if proc.wt_handle is not None:
            proc.wt_handle.cancel()
        if proc.kill_handle is not None:
            proc.kill_handle.cancel()
        del self._procs[proc.key]
        self._leader_reaped(proc, status is not None)
        if status is None:
            code, reason = None, "exit status lost (reaped by someone else)"
        else:
            code = os.waitstatus_to_exitcode(status)
            reason = proc.reason
        ev = ProcessExit(code, reason, proc.started_at, time.time(), proc.pid, proc.killed,
                         proc.cpus, ru)
        self._call(proc.on_exit, proc.key, ev)
        if not self._procs and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
