"""How a partition gets processes started: the launcher interface and its local form.

The partition hands a `LaunchRequest` to the launcher of the node that runs
the task. Locally that is an in-process `ProcessSpawner`; the node agents
(started by srun or ssh) implement the same interface behind a ZMQ
connection, so the partition does not know which one it talks to.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import structlog

from qcg.pilotjob.agent.run_lock import RunLock
from qcg.pilotjob.agent.spawner import ProcessExit, ProcessSpawner, ProcessSpec

if TYPE_CHECKING:
    from qcg.pilotjob.agent.process_stats import ProcessStats

_log = structlog.get_logger("launcher")


@dataclass(slots=True)
class LaunchRequest:
    task_id: str
    node: str
    argv: list[str]
    env: dict[str, str]          # overrides on top of the node's own environment
    cwd: str
    stdin: str | None
    stdout: str | None
    stderr: str | None
    cpus: list[int] | None
    walltime: float | None


@dataclass(slots=True)
class LaunchResult:
    task_id: str
    exit_code: int | None        # None: the process could not be started
    message: str | None
    started_at: float
    finished_at: float
    pid: int | None
    killed: str | None           # None, "walltime", "canceled" or "node lost"


StartedCallback = Callable[[str, int | None, float], None]   # task id, pid, start time
ExitCallback = Callable[[LaunchResult], None]


class Launcher(Protocol):
    def launch(self, req: LaunchRequest) -> None: ...
    def cancel(self, task_id: str) -> None: ...
    async def shutdown(self, timeout: float = 5.0) -> None: ...


def exit_description(code: int | None) -> str:
    """'exit code 3', or 'killed by signal 9 (SIGKILL)' for a negative code (subprocess's convention)."""
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"killed by signal {-code}"


def _waiting_for_the_interrupted() -> None:
    print("Waiting for the tasks of the interrupted run on this host to end (a killed launcher's guard is "
          "stopping them; or a manager with the same --id and --wd is running)", file=sys.stderr)
    _log.warning("waiting for the tasks of the interrupted run on this host to end (run lock held)")


class LocalLauncher:
    """Runs every task as a child of this process (flat local mode).

    With `proc_stats_dir` (`--enable-proc-stats`) a `ProcessStats` thread
    records the tasks' process trees and writes its ptrace file there at
    `shutdown`; the spawn path is the same with or without it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_started: StartedCallback, on_exit: ExitCallback,
                 kill_grace: float = 3.0, proc_stats_dir: str | None = None, run_dir: str | None = None) -> None:
        """`run_dir`: a directory of the run's own (the same for a resume): with it, `wait_for_the_interrupted`
        lets the tasks a killed launcher of the run left on this host end before ours start."""
        self._run_lock = RunLock(run_dir, os.uname().nodename) if run_dir is not None else None
        self._spawner = ProcessSpawner(loop, kill_grace=kill_grace, orphan_guard=True, run_lock=self._run_lock)
        self._on_started = on_started
        self._on_exit = on_exit
        self._base_env = dict(os.environ)
        self._stats: ProcessStats | None = None
        if proc_stats_dir is not None:
            from qcg.pilotjob.agent.process_stats import start_collector

            # every task of a local run is on this host: the file is named after it
            self._stats = start_collector(proc_stats_dir, os.uname().nodename)

    async def wait_for_the_interrupted(self) -> None:
        """Before the first task: take the run lock (agent/run_lock.py), waiting while the tasks of a killed
        launcher of this run still live here; after `run_lock.WAIT` s the run goes on, with a warning."""
        if self._run_lock is not None and not await self._run_lock.acquire(waiting=_waiting_for_the_interrupted):
            _log.warning("run lock not taken: tasks of an interrupted launcher may still run",
                         path=self._run_lock.path)

    @property
    def running(self) -> int:
        return self._spawner.running

    def before_exits(self, callback: Callable[[], None] | None) -> None:
        """Run `callback` each time before task exits are handled (and their cores refilled)."""
        self._spawner.before_exits = callback

    def launch(self, req: LaunchRequest) -> None:
        env = self._base_env.copy()
        env.update(req.env)
        spec = ProcessSpec(argv=req.argv, env=env, cwd=req.cwd, stdin=req.stdin, stdout=req.stdout,
                           stderr=req.stderr, cpus=req.cpus, walltime=req.walltime)
        started = time.time()
        pid = self._spawner.spawn(req.task_id, spec, self._exited)
        if pid is not None:
            self._on_started(req.task_id, pid, started)

    def _exited(self, task_id: object, ex: ProcessExit) -> None:
        self._on_exit(LaunchResult(task_id=str(task_id), exit_code=ex.exit_code, message=ex.reason,
                                   started_at=ex.started_at, finished_at=ex.finished_at, pid=ex.pid,
                                   killed=ex.killed))

    def cancel(self, task_id: str) -> None:
        self._spawner.cancel(task_id)

    async def shutdown(self, timeout: float = 5.0) -> None:
        if self._stats is not None:
            # before the tasks still running are ended: its last poll sees them as they were
            self._stats.stop()
        await self._spawner.shutdown(timeout)


class SrunLauncher(LocalLauncher):
    """`--disable-nl`: every task is started from here as its own `srun` step on its node.

    Commands that already go through Slurm (`srun ...` of the srunmpi and
    threads models, `mpirun` which starts its daemons through Slurm) run as
    they are.
    """

    def launch(self, req: LaunchRequest) -> None:
        prog = os.path.basename(req.argv[0]) if req.argv else ""
        if prog not in ("srun", "mpirun", "mpiexec"):
            bind = ["--cpu-bind=verbose,mask_cpu:" + hex(sum(1 << c for c in req.cpus))] if req.cpus else \
                ["--cpu-bind=none"]
            argv = ["srun", "--overlap", "--whole", "-N", "1", "-n", "1", f"--nodelist={req.node}", "--mem-per-cpu=0",
                    "--kill-on-bad-exit=1", *bind, *req.argv]
            req = LaunchRequest(req.task_id, req.node, argv, req.env, req.cwd, req.stdin, req.stdout,
                                req.stderr, None, req.walltime)
        else:
            req = LaunchRequest(req.task_id, req.node, req.argv, req.env, req.cwd, req.stdin, req.stdout,
                                req.stderr, None, req.walltime)
        super().launch(req)
