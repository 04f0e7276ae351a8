"""Starting the partition managers of `--slurm-partition-nodes N`.

The governor's nodes are split into groups of N (the last may be smaller);
each group gets one manager process, started with `srun` on the group's
first node (or `ssh`, or as a local process for `--nodes` runs), handed its
node group and the governor's address. A start is retried with exponential
backoff (tenacity) when the process ends before registering. The run starts
once `ready_threshold` of the managers registered; a manager that never
comes up is reported and its nodes stay out of the run.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any

import structlog

from qcg.pilotjob.agent import service_env
from qcg.pilotjob.agent.allocation_env import command_prefix
from qcg.pilotjob.agent.spawner import ProcessExit, ProcessSpawner, ProcessSpec
from qcg.pilotjob.governor.partition_server import PartitionServer
from qcg.pilotjob.partition.resources import Node, Resources
from qcg.pilotjob.partition.retries import attempt_state, exit_text, start_with_retries, stderr_tail
from qcg.pilotjob.partition.slurm_resources import write_resources_file

log = structlog.get_logger("partitions")


class PartitionStartError(Exception):
    """Too few partition managers registered; the message says which and why."""


@dataclass
class ManagerPlan:
    id: str
    nodes: list[Node]
    argv: list[str]
    attempts: int = 0
    registered: bool = False
    failed: str | None = None
    proc_key: str | None = None
    exited: asyncio.Event | None = None
    last_exit: ProcessExit | None = None     # how its last manager process ended


def split_nodes(resources: Resources, per_partition: int) -> list[list[Node]]:
    if per_partition < 1:
        raise ValueError(f"--slurm-partition-nodes must be at least 1, got {per_partition}")
    nodes = resources.nodes
    return [nodes[i:i + per_partition] for i in range(0, len(nodes), per_partition)]


class PartitionStarter:
    def __init__(self, loop: asyncio.AbstractEventLoop, server: PartitionServer, *, start_method: str,
                 ready_threshold: float = 1.0, init_timeout: float = 600.0,
                 ssh_command: list[str] | None = None) -> None:
        self.loop = loop
        self.server = server
        self.start_method = start_method
        self.ready_threshold = ready_threshold
        self.init_timeout = init_timeout
        self.ssh_command = ssh_command or ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"]
        self.plans: dict[str, ManagerPlan] = {}
        self._procs = ProcessSpawner(loop, kill_grace=5.0)
        self._starts: dict[str, asyncio.Task[None]] = {}     # plan id -> its start (ends when given up)
        self._t0 = time.monotonic()
        self._closing = False
        self._env_file: str | None = None     # this process's environment, for managers started by ssh

    def plan(self, groups: list[list[Node]], *, base_args: list[str], work_dir: str, slurm: bool) -> None:
        """One manager per node group; its resources go to a file (Slurm) or `--nodes` (local)."""
        os.makedirs(work_dir, mode=0o700, exist_ok=True)     # private whatever the umask: managers check it
        if self.start_method == "ssh":
            # an ssh login has none of this process's environment: the managers adopt it from this file
            self._env_file = os.path.join(work_dir, "service-env.json")
            service_env.write_file(self._env_file)
        for k, group in enumerate(groups):
            pid = f"part-{k}"
            args = [sys.executable, "-m", "qcg.pilotjob.governor.manager_boot", *base_args, "--id", pid,
                    "--aux-dir", os.path.join(work_dir, pid)]
            if slurm:
                file = os.path.join(work_dir, f"{pid}.resources.json")
                write_resources_file(file, Resources(Node(n.name, n.core_ids) for n in group))
                args += ["--resources", "slurm", "--slurm-resources-file", file]
            else:
                args += ["--nodes", ",".join(f"{n.name}:{n.total}" for n in group)]
            self.plans[pid] = ManagerPlan(pid, group, args)

    def _command(self, plan: ManagerPlan) -> list[str]:
        first = plan.nodes[0].name
        if self.start_method == "slurm":
            # the manager (and through it every task) gets the allocation's SLURM_* values, not its step's;
            # --whole: all of the job's CPUs on the node, for the agent it forks there (agent_command)
            return ["srun", "--overlap", "--whole", "-N", "1", "-n", "1", f"--nodelist={first}", "--cpu-bind=none",
                    "--mem-per-cpu=0", "--kill-on-bad-exit=0", "--export=ALL", *command_prefix(), *plan.argv]
        if self.start_method == "ssh":
            prefix = [*command_prefix(everything=True), f"{service_env.FILE_VAR}={self._env_file}"]
            return [*self.ssh_command, first, f"cd {shlex.quote(os.getcwd())} && {shlex.join([*prefix, *plan.argv])}"]
        return plan.argv

    async def start(self) -> list[str]:
        """Start every planned manager; returns the ids that registered. Raises PartitionStartError."""
        self.launch()
        return await self.wait_ready()

    def launch(self) -> None:
        """Spawn every planned manager (with retries in the background); returns at once.

        The service calls this as soon as its network interface listens, and
        builds the rest of the governor while the managers start up.
        """
        self._t0 = time.monotonic()
        for plan in self.plans.values():
            self.server.expect(plan.id)
            self._starts[plan.id] = self.loop.create_task(self._start_one(plan))

    async def wait_ready(self) -> list[str]:
        """Wait until the readiness threshold of managers registered; raises PartitionStartError."""
        total = len(self.plans)
        need = max(1, int(round(self.ready_threshold * total + 1e-9))) if total else 0
        deadline = self._t0 + self.init_timeout
        while True:
            for plan in self.plans.values():
                plan.registered = self.server.joined[plan.id].is_set() and plan.failed is None
                if not plan.registered and plan.failed is None and self._starts[plan.id].done():
                    plan.failed = "its start ended before it registered"
            ready = [p.id for p in self.plans.values() if p.registered]
            pending = [p for p in self.plans.values() if not p.registered and p.failed is None]
            if len(ready) >= need:
                break
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                not_ready = [f"{p.id} ({p.failed or self._not_registered(p)})"
                             for p in self.plans.values() if not p.registered]
                raise PartitionStartError(
                    f"only {len(ready)} of {total} partition managers registered (threshold "
                    f"{self.ready_threshold:g} needs {need}); not ready: {', '.join(not_ready)}")
            # wake on the next registration or given-up start, not on a poll
            joins = [self.loop.create_task(self.server.joined[p.id].wait()) for p in pending]
            try:
                await asyncio.wait([*joins, *(self._starts[p.id] for p in pending)], timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in joins:
                    t.cancel()
        for plan in self.plans.values():
            if not plan.registered:
                log.warning("partition manager not ready yet; its nodes join if it registers later",
                            partition=plan.id, nodes=[n.name for n in plan.nodes], error=plan.failed)
        log.info("partition managers ready", ready=len(ready), total=total,
                 seconds=round(time.monotonic() - self._t0, 3))
        return ready

    def _not_registered(self, plan: ManagerPlan) -> str:
        """Why a manager whose start is still going on is not ready, with what its stderr says so far."""
        attempt = attempt_state(plan.attempts, plan.exited is not None and not plan.exited.is_set(), plan.last_exit)
        return (f"not registered after {time.monotonic() - self._t0:.1f}s, {attempt}"
                f"{stderr_tail(self._stderr_path(plan))}")

    @staticmethod
    def _stderr_path(plan: ManagerPlan) -> str:
        return os.path.join(os.path.dirname(plan.argv[plan.argv.index("--aux-dir") + 1]), f"{plan.id}.err")

    async def _start_one(self, plan: ManagerPlan) -> None:
        error = await start_with_retries(lambda: self._run_once(plan), lambda: self._closing)
        if error is not None:
            plan.failed = error
            log.error("partition manager did not start", partition=plan.id, attempts=plan.attempts, error=error)

    async def _run_once(self, plan: ManagerPlan) -> None:
        plan.attempts += 1
        plan.exited = asyncio.Event()
        key = f"{plan.id}#{plan.attempts}"
        plan.proc_key = key
        plan.last_exit = None
        err = self._stderr_path(plan)
        spec = ProcessSpec(argv=self._command(plan), env=dict(os.environ), cwd=os.getcwd(), stderr=err,
                           own_streams=True)
        if self._procs.spawn(key, spec, self._ended) is None:
            await plan.exited.wait()        # the spawner reports why through the exit callback
            raise OSError(f"cannot start the manager of partition {plan.id}{exit_text(plan.last_exit)}")
        await plan.exited.wait()
        joined = self.server.joined[plan.id].is_set()
        if not joined and not self._closing:
            # quoted now: the next attempt truncates the file
            raise OSError(f"the manager of partition {plan.id} ended before registering"
                          f"{exit_text(plan.last_exit)}{stderr_tail(err)}")

    def _ended(self, key: Any, ex: ProcessExit) -> None:
        pid = str(key).split("#")[0]
        plan = self.plans[pid]
        if plan.proc_key != key or plan.exited is None:
            return
        plan.last_exit = ex
        plan.exited.set()
        if self.server.joined[pid].is_set() and not self._closing:
            self.server.lose(pid, f"manager process ended{exit_text(ex)}")

    async def shutdown(self, timeout: float = 10.0) -> None:
        """After the server said `exit`: wait for the managers to end, then kill what is left."""
        self._closing = True
        joined = self.server.joined
        # a manager that never registered was told nothing: waiting for it to end (a hung srun) only
        # delayed the stop of a signal during the start
        told = any(plan.id in joined and joined[plan.id].is_set() for plan in self.plans.values())
        await self._procs.wait_then_shutdown(timeout if told else 0.0)
        for t in self._starts.values():
            t.cancel()
