"""Who runs the tasks of a service: its own in-process partition, node agents, or partition managers.

`Workers` is a part of `Service` (its base class), as `Cancellation` is of
`Governor`: it builds the governor's partition (one `Partition` in this
process, or in governor mode the `PartitionSet` of managers), starts what that
partition launches through (node agents in a Slurm allocation, srun steps with
--disable-nl, partition managers with --slurm-partition-nodes), and stops them.
It uses the service's settings and places (`config`, `loop`, `wd`, `aux_dir`,
`resources`, `slurm_mode`) and its network (`zmq`, `zmq_address`, `keys`).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import structlog

from qcg.pilotjob.partition.launcher import LocalLauncher
from qcg.pilotjob.partition.partition import Partition, PartitionConfig

if TYPE_CHECKING:
    import asyncio

    from qcg.pilotjob.governor.service_config import ServiceConfig
    from qcg.pilotjob.partition.resources import Resources

# Slurm and node-agent modules (tenacity, zmq.asyncio, python-hostlist) are imported only in a
# Slurm allocation: a local file run should not pay for them at start-up.

log = structlog.get_logger("service")

REPLY_HEADSTART = 0.001       # seconds a request-triggered launch waits for the replies to leave


class Workers:
    config: "ServiceConfig"
    loop: "asyncio.AbstractEventLoop | None"
    wd: str
    aux_dir: str
    resources: "Resources"
    slurm_mode: bool
    zmq: Any
    zmq_address: str | None
    keys: Any
    partition: Any                # Partition, or PartitionSet in governor mode
    partitions: Any               # PartitionServer in governor mode
    starter: Any                  # PartitionStarter with --slurm-partition-nodes
    _launch_error: ValueError | None

    if TYPE_CHECKING:        # given by Service
        def _publish_address(self) -> None: ...

    def _make_partition(self) -> Any:
        """The governor's partition: one in-process partition, or the set of partition managers."""
        cfg = self.config
        if not cfg.governor_mode:
            return Partition(self.loop, self.resources, PartitionConfig(  # type: ignore[arg-type]
                root_wd=self.wd, scratch_dir=os.path.join(self.aux_dir, "tmp"), local=not self.slurm_mode,
                envschema=cfg.envschema, zmq_address=self.zmq_address,
                # in a Slurm allocation the launcher is replaced (_start_launcher) and gathers them itself
                proc_stats_dir=self.wd if cfg.enable_proc_stats and not self.slurm_mode else None),
                events=None)  # type: ignore[arg-type]
        from qcg.pilotjob.governor.partition_server import PartitionServer
        from qcg.pilotjob.governor.partition_set import PartitionSet

        pset = PartitionSet(self.loop, wait_for_members=cfg.slurm_partition_nodes is None)  # type: ignore[arg-type]
        self.partitions = PartitionServer(self.loop, pset, self.zmq.send_peer)  # type: ignore[arg-type]
        self.zmq.serve_peers(self.loop, self.partitions.handle)
        self.partitions.start()
        return pset

    async def _start_workers(self) -> bool:
        """Node agents (Slurm) or partition managers (governor mode); False when too few came up."""
        if self.config.governor_mode:
            from qcg.pilotjob.governor.partition_starter import PartitionStartError

            try:
                if self._launch_error is not None:
                    raise self._launch_error
                if self.starter is None and self.config.slurm_partition_nodes is not None:
                    self._launch_partitions()       # a nested governor (its own run) launches here
                if self.starter is not None:
                    await self.starter.wait_ready()
            except (PartitionStartError, ValueError) as exc:
                print(f"Error: {exc}", file=sys.stderr)
                log.error("partition managers not started", error=str(exc))
                return False
            # attaching managers (--parent) find the governor here
            self._publish_address()
            return True
        if not self.slurm_mode:
            await self._wait_for_the_interrupted()
            return True
        from qcg.pilotjob.partition.agent_launcher import AgentStartError

        try:
            await self._start_launcher()
        except AgentStartError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            log.error("node agents not started", error=str(exc))
            return False
        return True

    async def _wait_for_the_interrupted(self) -> None:
        """Tasks launched from this process: those a killed run left here end first (agent/run_lock.py)."""
        launcher = getattr(self.partition, "launcher", None)
        if isinstance(launcher, LocalLauncher):
            await launcher.wait_for_the_interrupted()

    def _launch_partitions(self) -> None:
        """Split the allocation and spawn one manager per group (`_start_workers` waits for them)."""
        from qcg.pilotjob.governor.partition_starter import PartitionStarter, split_nodes

        cfg = self.config
        groups = split_nodes(self.resources, cfg.slurm_partition_nodes)  # type: ignore[arg-type]
        method = cfg.nl_start_method if self.slurm_mode else "local"
        self.starter = PartitionStarter(self.loop, self.partitions, start_method=method,  # type: ignore[arg-type]
                                        ready_threshold=cfg.partition_ready_threshold,
                                        init_timeout=cfg.partition_init_timeout)
        base = ["--parent", self.zmq_address or "", "--wd", self.wd, "--log", cfg.log_level,
                "--envschema", cfg.envschema, "--nl-start-method", cfg.nl_start_method,
                "--nl-init-timeout", str(cfg.nl_init_timeout), "--nl-ready-threshold", str(cfg.nl_ready_threshold),
                "--nl-task-retries", str(cfg.nl_task_retries)]
        base += ["--keys", self.keys.directory] if self.keys is not None else ["--insecure-no-curve"]
        if cfg.disable_nl:
            base.append("--disable-nl")
        if cfg.system_core:
            base.append("--system-core")
        if cfg.enable_proc_stats:
            base.append("--enable-proc-stats")
        self.starter.plan(groups, base_args=base, work_dir=os.path.join(self.aux_dir, "partitions"),
                          slurm=self.slurm_mode)
        log.info("starting partition managers", partitions=len(groups), nodes_per_partition=cfg.slurm_partition_nodes,
                 method=method)
        self.starter.launch()

    async def _start_launcher(self) -> None:
        """Slurm allocation: node agents (srun or ssh), or one srun step per task with --disable-nl."""
        from qcg.pilotjob.partition.agent_launcher import AgentLauncher
        from qcg.pilotjob.partition.launcher import SrunLauncher

        cfg = self.config
        part = self.partition
        stats_dir = self.wd if cfg.enable_proc_stats else None     # ptrace_*.log files (reference 16)
        if cfg.disable_nl:
            part.attach_launcher(SrunLauncher(self.loop, part._launched, part._exited,  # type: ignore[arg-type]
                                              proc_stats_dir=stats_dir, run_dir=part.config.scratch_dir))
            await self._wait_for_the_interrupted()
            return
        launcher = AgentLauncher(
            self.loop, [n.name for n in self.resources.nodes], part._launched, part._exited,  # type: ignore[arg-type]
            keys_dir=os.path.join(self.aux_dir, "agent-keys"), start_method=cfg.nl_start_method,
            init_timeout=cfg.nl_init_timeout, ready_threshold=cfg.nl_ready_threshold,
            on_node_state=part.node_state, proc_stats_dir=stats_dir)
        part.attach_launcher(launcher)
        from qcg.pilotjob.partition import early_agents

        early = early_agents.take()
        await launcher.start(early if early is not None and early.start_method == cfg.nl_start_method else None)

    async def _stop_workers(self) -> None:
        """Tell the partition managers to exit and wait for those we started; or stop our own partition."""
        if self.partitions is not None:
            await self.partitions.shutdown()
            if self.starter is not None:
                await self.starter.shutdown(timeout=10.0)
        else:
            await self.partition.shutdown(timeout=10.0)

    def _serve_requests_first(self) -> None:
        # flat mode: a loop turn that handles task exits launches the next tasks at once (vfork, ~0.5 ms
        # each); requests that came meanwhile are answered before that, not after
        part = self.partition
        if isinstance(part, Partition) and isinstance(part.launcher, LocalLauncher):
            part.launcher.before_exits(self.zmq.serve_pending)  # type: ignore[union-attr]

    def _replied(self) -> None:
        # flat mode launches in this process: give the replies a head start (Partition.hold_launches)
        if isinstance(self.partition, Partition):
            self.partition.hold_launches(REPLY_HEADSTART)

