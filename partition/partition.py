"""One partition: queue tasks, give them cores, launch them, report what happened.

Flat mode wires it to the governor in-process; a partition manager process
wraps the same object behind a ZMQ connection. Scheduling passes are
coalesced: many submissions or exits in one loop turn cost one pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from qcg.pilotjob.api.placeholders import substitute_fields
from qcg.pilotjob.partition.environment import OMPI_SRUN_ARGS, resolve_schemas, task_environment
from qcg.pilotjob.partition.launcher import Launcher, LaunchRequest, LaunchResult, LocalLauncher, exit_description
from qcg.pilotjob.partition.models import ModelError, build_launch, helper_file, hostfile_lines
from qcg.pilotjob.partition.resources import Resources
from qcg.pilotjob.partition.scheduler import Scheduler
from qcg.pilotjob.partition.task import Allocation, ResourceRequest, TaskFinished, TaskSpec, TaskStarted

log = structlog.get_logger("partition")


class PartitionEvents(Protocol):
    def task_started(self, ev: TaskStarted) -> None: ...
    def task_finished(self, ev: TaskFinished) -> None: ...


@dataclass(slots=True)
class _Running:
    task: TaskSpec
    allocation: Allocation
    wd: str
    scheduled_at: float
    files: list[str] = field(default_factory=list)
    canceled: bool = False


@dataclass(slots=True)
class PartitionConfig:
    root_wd: str                      # the service's --wd, absolute
    scratch_dir: str                  # helper files (rankfiles ...), never the job's wd
    local: bool = True                # virtual local nodes (no binding, models run plainly)
    envschema: str = "auto"
    zmq_address: str | None = None
    queue_factor: int = 2             # tasks held per core, beyond running ones
    proc_stats_dir: str | None = None  # --enable-proc-stats in a local run: where the ptrace file goes


class Partition:
    def __init__(self, loop: asyncio.AbstractEventLoop, resources: Resources, config: PartitionConfig,
                 events: PartitionEvents, launcher: Launcher | None = None) -> None:
        self.loop = loop
        self.resources = resources
        self.config = config
        self.events = events
        self.scheduler = Scheduler(resources)
        self.running: dict[str, _Running] = {}
        self.launcher: Launcher = launcher or LocalLauncher(loop, self._launched, self._exited,
                                                            proc_stats_dir=config.proc_stats_dir,
                                                            run_dir=config.scratch_dir)
        self._pass_pending = False
        self._deferring = False          # inside an exit callback: run the pass at its end
        self._closing = False
        self._hold_until = 0.0           # loop time before which a requested pass does not launch
        self._env_cache: dict[tuple, dict[str, str]] = {}
        self._hostfiles: dict[tuple, str] = {}     # ((node, cores), ...) -> the SLURM_HOSTFILE written for it
        self._size_to_nodes()
        # task_environment looks at the base to detect a Slurm allocation (envschema auto) and for the
        # manager's own srun args of OpenMPI, which a task's come after
        self._base_env = {k: v for k, v in os.environ.items() if k.startswith("SLURM_") or k == OMPI_SRUN_ARGS}
        # a task's own srun (and mpirun's) keeps to its nodes only through a hostfile: real Slurm nodes only
        self._write_hostfiles = not config.local and "slurm" in resolve_schemas(config.envschema, self._base_env)

    # ------------------------------------------------------------ governor side
    def totals(self) -> tuple[int, int, int]:
        return self._totals

    def _size_to_nodes(self) -> None:
        """Totals (what iterations are sized by) and credit from the cores tasks can get: not those of a
        lost node, which will never run anything again, nor a core reserved by `--system-core` (sized
        with it, a `split-into` with one part asked for a core more than there is), nor a node that has no
        other core."""
        live = [n for n in self.resources.nodes if not self.resources.is_lost(n.name) and n.capacity > 0]
        cores = sum(n.capacity for n in live)
        self._totals = (cores, len(live), max((n.capacity for n in live), default=0))
        self.queue_limit = max(cores * (1 + self.config.queue_factor), 64)

    def never_fits(self, request: ResourceRequest) -> str | None:
        return self.resources.never_fits(request)

    def info(self) -> dict:
        return self.resources.info()

    def submit(self, tasks: list[TaskSpec]) -> None:
        unfit: list[tuple[TaskSpec, str]] = []
        for task in tasks:
            reason = self.scheduler.add(task)
            if reason:
                unfit.append((task, reason))
        if unfit:
            self._cannot_run(unfit, "")
        self._request_pass()

    def cancel(self, task_ids: list[str]) -> None:
        for tid in task_ids:
            if self.scheduler.remove(tid) is not None:
                self._report_later(TaskFinished(tid, "CANCELED", message="canceled by user"))
            elif (run := self.running.get(tid)) is not None and not run.canceled:
                run.canceled = True
                self.launcher.cancel(tid)

    def retract(self, task_ids: list[str]) -> list[str]:
        """Give back the tasks still waiting here (not started): the governor runs them elsewhere."""
        return [tid for tid in task_ids if self.scheduler.remove(tid) is not None]

    def attach_launcher(self, launcher: Launcher) -> None:
        """Use `launcher` (e.g. node agents) instead of launching locally; call before any task runs."""
        self.launcher = launcher

    def node_state(self, node: str, up: bool, lost: bool = False) -> None:
        """A node's agent became ready (up), is not ready yet (down) or was lost (down for good: the queued
        tasks that need its cores fail now instead of waiting for ever)."""
        if up:
            self.resources.set_node_up(node)
            self._request_pass()
        elif not lost:
            self.resources.set_node_down(node)
        else:
            self.resources.set_node_lost(node)
            self._size_to_nodes()
            # the governor (or a manager's parent) sizes and places work by what is left: told first, so
            # that the tasks given back below do not come here again
            changed = getattr(self.events, "capacity_changed", None)
            if changed is not None:
                changed()
            self._cannot_run(self.scheduler.drop_unfittable(), f"cannot run after node {node} was lost: ")

    def _cannot_run(self, tasks: list[tuple[TaskSpec, str]], why: str) -> None:
        """Tasks too big for this partition (it lost nodes): a manager gives them back to its parent, which
        runs them in another partition or fails them; in flat mode they fail here, with the reason."""
        give_back = getattr(self.events, "give_back", None)
        if give_back is not None:
            give_back([task.task_id for task, _ in tasks])
            return
        for task, reason in tasks:
            self._report_later(TaskFinished(task.task_id, "FAILED", message=why + reason))

    async def shutdown(self, timeout: float = 5.0) -> None:
        # nothing more starts: the ends of the tasks being killed would otherwise free cores for the queue
        self._closing = True
        await self.launcher.shutdown(timeout)
        for path in self._hostfiles.values():
            _remove(path)
        self._hostfiles.clear()

    # ------------------------------------------------------------- scheduling
    def _report_later(self, ev: TaskFinished) -> None:
        self.loop.call_soon(self.events.task_finished, ev)

    def hold_launches(self, seconds: float) -> None:
        """Let replies just handed to the network leave before tasks are launched.

        Launching (vfork, exec of the child) takes the CPU the reply needs on
        its way out: on a small machine the answer to a `submit` took twice as
        long when its task was launched at once. Passes that an ending task
        triggers are not held (its core would idle).
        """
        self._hold_until = max(self._hold_until, self.loop.time() + seconds)

    def _request_pass(self) -> None:
        if self._deferring or self._closing:
            return
        if not self._pass_pending and len(self.scheduler):
            self._pass_pending = True
            if self._hold_until > self.loop.time():
                self.loop.call_at(self._hold_until, self._pass)
            else:
                self.loop.call_soon(self._pass)

    def _pass(self) -> None:
        self._pass_pending = False
        if self._closing:
            return
        for task, allocation in self.scheduler.schedule():
            self._start(task, allocation)

    def _start(self, task: TaskSpec, allocation: Allocation) -> None:
        scheduled_at = time.time()
        cfg = self.config
        execution = task.execution
        if task.templated:
            execution = substitute_fields(execution, {
                "root_wd": cfg.root_wd, "ncores": allocation.ncores, "nnodes": allocation.nnodes,
                "nlist": ",".join(allocation.node_names)})
        wd = os.path.join(cfg.root_wd, execution.wd) if execution.wd else cfg.root_wd

        def in_wd(path: str | None) -> str | None:
            return None if path is None else os.path.join(wd, path)

        try:
            cmd = build_launch(execution, allocation, local=cfg.local, scratch_dir=cfg.scratch_dir,
                               name=task.task_id)
        except ModelError as exc:
            self._not_started(task, allocation, str(exc))
            return
        env = self._environment(execution.env, allocation)
        if cmd.env_extra:
            env.update(cmd.env_extra)
        self.running[task.task_id] = _Running(task, allocation, wd, scheduled_at, cmd.files)
        try:
            self.launcher.launch(LaunchRequest(
                task_id=task.task_id, node=allocation.nodes[0][0], argv=cmd.argv, env=env, cwd=wd,
                stdin=in_wd(execution.stdin), stdout=in_wd(execution.stdout), stderr=in_wd(execution.stderr),
                cpus=cmd.cpus, walltime=task.walltime))
        except Exception as exc:  # noqa: BLE001 - a launcher fault fails this task, not the scheduling pass
            log.exception("launch failed", task=task.task_id)
            del self.running[task.task_id]
            self._not_started(task, allocation, f"cannot start: {exc}")

    def _not_started(self, task: TaskSpec, allocation: Allocation, why: str) -> None:
        """The task FAILED before it started: its cores go to the queue at once (another pass)."""
        self.resources.release(allocation)
        self._report_later(TaskFinished(task.task_id, "FAILED", message=why, allocation=allocation))
        self._request_pass()

    def _environment(self, job_env: dict[str, str], allocation: Allocation) -> dict[str, str]:
        """Task variables; all but the step id depend only on the allocation and job env (cached)."""
        key = (allocation, tuple(job_env.items()) if job_env else None)
        env = self._env_cache.get(key)
        if env is None:
            if len(self._env_cache) >= 4096:
                self._env_cache.clear()
                self._drop_hostfiles()
            cfg = self.config
            hostfile = self._hostfile(allocation) if self._write_hostfiles else None
            # QCG_PM_CPU_SET names the allocated cores even where processes are not bound (local mode)
            env = task_environment(self._base_env, job_env, allocation, "", envschema=cfg.envschema,
                                   zmq_address=cfg.zmq_address, binding=True, hostfile=hostfile)
            for k in self._base_env:
                if env.get(k) == self._base_env[k]:
                    del env[k]
            self._env_cache[key] = env
        env = env.copy()
        env["QCG_PM_STEP_ID"] = os.urandom(16).hex()
        return env

    def _hostfile(self, allocation: Allocation) -> str:
        """The task's SLURM_HOSTFILE, written once per shape (nodes and their core counts) and shared by
        the tasks of that shape; removed at shutdown, or with the environment cache once no task has it."""
        shape = _shape(allocation)
        path = self._hostfiles.get(shape)
        if path is None:
            path = self._hostfiles[shape] = helper_file(self.config.scratch_dir, "task", ".hostfile",
                                                        hostfile_lines(allocation))
        return path

    def _drop_hostfiles(self) -> None:
        """Remove the hostfiles no running task has (the environments naming them were just dropped)."""
        used = {_shape(run.allocation) for run in self.running.values()}
        for shape in [s for s in self._hostfiles if s not in used]:
            _remove(self._hostfiles.pop(shape))

    # ---------------------------------------------------------- launcher side
    def _launched(self, task_id: str, pid: int | None, started_at: float) -> None:
        run = self.running.get(task_id)
        if run is not None:
            self.events.task_started(TaskStarted(task_id, run.allocation, run.wd, run.scheduled_at,
                                                 started_at, pid))

    def _exited(self, res: LaunchResult) -> None:
        run = self.running.pop(res.task_id, None)
        if run is None:
            return
        self._deferring = True
        try:
            self._report_exit(run, res)
        finally:
            self._deferring = False
        if len(self.scheduler):
            self._pass()

    def _report_exit(self, run: _Running, res: LaunchResult) -> None:
        self.resources.release(run.allocation)
        for path in run.files:
            _remove(path)
        if res.killed == "canceled" or run.canceled:
            state, message = "CANCELED", res.message or "canceled by user"
        elif res.exit_code == 0 and not res.killed:
            state, message = "SUCCEED", None
        else:
            state = "FAILED"
            message = res.message or exit_description(res.exit_code)
        self.events.task_finished(TaskFinished(
            res.task_id, state, exit_code=res.exit_code if res.exit_code is not None else -1, message=message,
            allocation=run.allocation, wd=run.wd, started_at=res.started_at, finished_at=res.finished_at,
            requeue=res.killed == "node lost"))


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _shape(allocation: Allocation) -> tuple[tuple[str, int], ...]:
    """What a hostfile says of an allocation: its nodes in order and their core counts."""
    return tuple((node, len(cores)) for node, cores in allocation.nodes)
