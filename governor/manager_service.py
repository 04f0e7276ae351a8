"""A run with `--parent`: a partition manager (or a nested governor) working for a parent governor.

The parent keeps the registry, the dependencies, the journal and the
reports; this process owns a node group (a `Partition` with its own
scheduler and node agents) -- or, as a nested governor, partition managers
of its own (a `PartitionSet`) -- and serves it to the parent through one
`ParentLink`. It ends when the parent says `exit`, when the parent falls
silent (its tasks are then re-dispatched by the parent or by a resumed run),
or on a signal: the first SIGINT, SIGTERM or SIGHUP (`stop_causes`) leaves
gracefully (no new tasks, running ones finish), a second one stops at once.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import structlog

from qcg.pilotjob.api import protocol
from qcg.pilotjob.governor.keys import KeysError, load_keys
from qcg.pilotjob.governor.parent_link import ParentError, ParentLink
from qcg.pilotjob.governor.service import Service
from qcg.pilotjob.governor.service_config import EXIT_INTERNAL_ERROR, EXIT_OK, EXIT_START_FAILED, StartError
from qcg.pilotjob.governor.stop_causes import internal_error_line, stop_signals

log = structlog.get_logger("manager")

EXIT_PARENT_LOST = 3               # README "Exit codes": a manager whose governor is gone


class ManagerService(Service):
    async def run(self) -> int:
        cfg = self.config
        self.loop = loop = asyncio.get_running_loop()
        os.chdir(self.wd)
        if not self._open_log():
            return EXIT_START_FAILED
        log.info("partition manager starting", id=self.instance_id, parent=cfg.parent, wd=self.wd,
                 resources=self.resources.info(), tags=cfg.tags, nested=cfg.governor_mode)
        try:
            parent_keys = self._parent_keys()
            if cfg.governor_mode:
                self._open_network()
        except (StartError, KeysError) as exc:
            self._close_network()       # what a half-way open left (context, ZAP handler)
            return self._fail(str(exc))
        if parent_keys is not None:
            # tasks talk to the front door with its keys, not to this manager
            os.environ[protocol.KEYS_ENV] = parent_keys.directory
        if not cfg.governor_mode:
            self.zmq_address = cfg.parent
        self.partition = self._make_partition()
        if cfg.governor_mode:
            self.partition.events = None       # the link below
            self.zmq.start(loop, _no_requests)
        started = await self._start_workers()
        if not started:
            await self._stop_everything()
            return EXIT_START_FAILED
        if cfg.governor_mode and not self.partition.members:
            if cfg.slurm_partition_nodes is None:
                # `--governor`: its managers attach with --parent to it, as to any governor (its address file
                # is written); it joins its parent with the first one, whose size it then offers
                print(f"waiting for a partition manager to attach (its address: {self.zmq_address}) before "
                      f"joining the parent", file=sys.stderr)
                await self._first_member(cfg.partition_init_timeout)
            if not self.partition.members:
                await self._stop_everything()
                return self._fail("a nested governor needs partitions of its own before it can join its parent: "
                                  "none attached" if cfg.slurm_partition_nodes is None else "none started")
        link = ParentLink(loop, self.partition, address=cfg.parent or "", member_id=self.instance_id,
                          keys=parent_keys, tags=cfg.tags)
        self.partition.events = link
        try:
            await link.connect()
        except ParentError as exc:
            await self._stop_everything()
            return self._fail(str(exc))
        signals: list[int] = []

        def on_signal(sig: int) -> None:
            signals.append(sig)
            if len(signals) == 1:
                log.warning("signal received: leaving the parent once our tasks end", signal=sig)
                link.leave()
            else:
                log.warning("second signal: stopping now, the parent runs our tasks elsewhere", signal=sig)
                link.abandon(f"signal {sig}")

        for sig in stop_signals():
            loop.add_signal_handler(sig, on_signal, sig)
        internal_error: list[str] = []

        def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            # a bug (stop_causes): the parent runs our tasks elsewhere, as when this manager is killed
            loop.default_exception_handler(context)
            if not internal_error and not link.ended:
                internal_error.append(internal_error_line(context, self.aux_dir))
                print(internal_error[0], file=sys.stderr)
                link.abandon("internal error")

        loop.set_exception_handler(on_loop_error)
        why = await link.wait()
        log.info("partition manager finishing", reason=why, tasks_received=link.received)
        await self._stop_everything()
        await link.close()
        for c in self._closers:
            c.close()
        if internal_error:
            return EXIT_INTERNAL_ERROR
        if len(signals) > 1:
            return 128 + signals[-1]
        return EXIT_PARENT_LOST if why.startswith("parent lost") else EXIT_OK

    async def _first_member(self, timeout: float) -> None:
        """Until a partition manager has attached, `timeout` s have passed, or a stop signal came."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = stop_signals()
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            deadline = loop.time() + timeout
            while not self.partition.members and not stop.is_set() and loop.time() < deadline:
                try:
                    await asyncio.wait_for(stop.wait(), 0.1)
                except asyncio.TimeoutError:
                    pass
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    def _parent_keys(self) -> Any:
        cfg = self.config
        if cfg.insecure_no_curve:
            return None
        path = cfg.keys or os.environ.get(protocol.KEYS_ENV)
        if not path:
            raise StartError(f"--parent needs the keys of the parent's run: give --keys DIR (the parent's "
                             f"aux dir or its keys/ directory) or set {protocol.KEYS_ENV}")
        return load_keys(path)

    async def _stop_everything(self) -> None:
        await self._stop_workers()
        self._close_network()

    def _fail(self, message: str) -> int:
        print(f"Error: {message}", file=sys.stderr)
        log.error("partition manager not started", error=message)
        for c in self._closers:
            c.close()
        return EXIT_START_FAILED


def _no_requests(_request: Any) -> dict[str, Any]:
    return {"code": 1, "message": "a nested governor takes work from its parent only; send requests there"}
