"""The service: working and aux dirs, logs, resources, governor + partition, interfaces, shutdown.

`run(config)` is the whole life of one `qcg-gov` / `qcg-pm-service` run and
returns its exit code: 0 when every request was served, 2 when some request
was refused (bad input), 1 when the service could not start, 128+N on signal N.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from qcg.pilotjob.governor import journal as journal_mod
from qcg.pilotjob.governor import logs
from qcg.pilotjob.governor.file_interface import RequestFileError, load_requests
from qcg.pilotjob.governor.governor import Governor
from qcg.pilotjob.governor.journal import Journal
from qcg.pilotjob.governor.progress import Progress
from qcg.pilotjob.governor.reports import JobReport
from qcg.pilotjob.governor.requests import RequestHandler
from qcg.pilotjob.governor.views import status_report
from qcg.pilotjob.partition.partition import Partition, PartitionConfig
from qcg.pilotjob.partition.resources import local_resources

log = structlog.get_logger("service")

EXIT_OK, EXIT_START_FAILED, EXIT_REFUSED = 0, 1, 2
FLUSH_INTERVAL = 1.0


class StartError(Exception):
    """The service cannot start; the message is shown to the user as `Error: ...`."""


@dataclass
class ServiceConfig:
    wd: str = "."
    file_path: str | None = None
    envschema: str = "auto"
    resources: str = "auto"
    report_format: str = "json"
    report_file: str = "jobs.report"
    nodes: str | None = None
    log_level: str = "info"
    system_core: bool = False
    show_progress: bool = False
    id: str | None = None
    tags: list[str] = field(default_factory=list)
    resume: str | None = None
    final_status_file: str = "final_status.json"


class Service:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.started = datetime.now()
        self.instance_id = config.id or f"{socket.gethostname()}.{random.randint(0, 9999)}"
        self.requests: list[Any] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._finish_after_all = False
        self._finish_requested = False
        self._signal: int | None = None
        self._closers: list[Any] = []

    # ------------------------------------------------------------------ start
    def prepare(self) -> None:
        """Everything that can fail on bad input, before any process starts."""
        cfg = self.config
        if cfg.file_path is not None:
            try:
                self.requests = load_requests(cfg.file_path)
            except RequestFileError as exc:
                raise StartError(str(exc)) from None
        self.wd = os.path.abspath(cfg.wd or ".")
        try:
            os.makedirs(self.wd, exist_ok=True)
        except OSError as exc:
            raise StartError(f"working directory '{self.wd}' cannot be created: {exc.strerror}") from None
        if not os.access(self.wd, os.W_OK | os.X_OK):
            raise StartError(f"working directory '{self.wd}' is not writable")
        try:
            self.resources = local_resources(cfg.nodes, cfg.system_core)
        except ValueError as exc:
            raise StartError(f"--nodes: {exc}") from None
        if cfg.resume:
            try:
                self.aux_dir = journal_mod.find_aux_dir(cfg.resume)
            except FileNotFoundError as exc:
                raise StartError(str(exc)) from None
            self.instance_id = os.path.basename(self.aux_dir)[len(".qcgpjm-service-"):]
        else:
            self.aux_dir = os.path.join(self.wd, f".qcgpjm-service-{self.instance_id}")
        try:
            os.makedirs(os.path.join(self.aux_dir, "tmp"), exist_ok=True)
        except OSError as exc:
            raise StartError(f"aux directory '{self.aux_dir}' cannot be created: {exc.strerror}") from None

    async def run(self) -> int:
        cfg = self.config
        self.loop = loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # tasks run in the working directory by default; being there spares a chdir per spawn
        os.chdir(self.wd)
        self._closers.append(logs.setup(os.path.join(self.aux_dir, "service.log"), cfg.log_level))
        log.info("service starting", id=self.instance_id, wd=self.wd, resources=self.resources.info(),
                 tags=cfg.tags, resume=cfg.resume)
        self.partition = Partition(loop, self.resources, PartitionConfig(
            root_wd=self.wd, scratch_dir=os.path.join(self.aux_dir, "tmp"), local=True, envschema=cfg.envschema),
            events=None)  # type: ignore[arg-type]
        self.journal = Journal(self.aux_dir)
        self.report = JobReport(os.path.join(self.aux_dir, cfg.report_file), cfg.report_format)
        listeners: list[Any] = [self.journal, self.report]
        self.progress = Progress(loop) if cfg.show_progress else None
        if self.progress:
            listeners.append(self.progress)
        self.governor = Governor(loop, self.partition, listeners)
        self.partition.events = self.governor
        self.handler = RequestHandler(self.governor, self)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        flusher = loop.create_task(self._flush_periodically())
        try:
            if cfg.resume:
                self._replay()
            self._serve_file()
            if not self._finish_requested:
                # with only the file interface, nothing more can arrive: finish when all is done
                self._finish_after_all = True
            self._check_done()
            await self._stop.wait()
        finally:
            flusher.cancel()
            await self._shutdown()
        if self._signal is not None:
            return 128 + self._signal
        return EXIT_REFUSED if self.handler.refused else EXIT_OK

    def _replay(self) -> None:
        replay = journal_mod.load(self.aux_dir)
        for sub in replay.submissions:
            self.governor.submit(sub.descs, rcnt=sub.rcnt, when=sub.when, done=sub.done)
        if replay.finish_after_all:
            self._finish_after_all = True
        log.info("resumed", submissions=len(replay.submissions), unfinished_jobs=self.governor.unfinished,
                 skipped_lines=replay.skipped_lines)

    def _serve_file(self) -> None:
        for i, request in enumerate(self.requests, 1):
            response = self.handler.handle(request)
            if response["code"] != 0:
                name = request.get("request") if isinstance(request, dict) else None
                print(f"Error: request #{i} ({name or 'invalid'}): {response.get('message')}", file=sys.stderr)
                log.error("request refused", index=i, request=name, message=response.get("message"))
            else:
                log.info("request served", index=i, request=request.get("request"))
            if self._finish_requested:
                break

    # ------------------------------------------------------- ServiceControl
    def finish_after_all_done(self) -> str | None:
        if self._finish_after_all and self._finish_requested:
            return "finish already requested"
        self._finish_after_all = True
        self._finish_requested = True
        self.journal.control("finishAfterAllTasksDone")
        self._check_done()
        return None

    def finish_now(self) -> str | None:
        self._finish_requested = True
        self.governor.cancel_everything()
        assert self._stop is not None
        self._stop.set()
        return None

    def resources_info(self) -> dict[str, int]:
        return self.partition.info()

    def status_data(self) -> dict[str, Any]:
        return status_report(list(self.governor.registry), self.partition.info(), instance_id=self.instance_id,
                             started=self.started, zmq_address=None, interfaces=["FILE"], publisher=None)

    # --------------------------------------------------------------- running
    def _check_done(self) -> None:
        if self._finish_after_all:
            self.loop.create_task(self._wait_all_then_stop())  # type: ignore[union-attr]

    async def _wait_all_then_stop(self) -> None:
        await self.governor.wait_all_finished()
        assert self._stop is not None
        self._stop.set()

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.journal.flush()
            self.report.flush()

    def _on_signal(self, sig: int) -> None:
        log.warning("signal received, finishing", signal=sig)
        self._signal = sig
        self.finish_now()

    async def _shutdown(self) -> None:
        if not self.governor.all_finished:
            self.governor.cancel_everything()
        await self.partition.shutdown(timeout=10.0)
        # tasks killed at shutdown report their ends through the loop; let them land
        await asyncio.sleep(0)
        if self.progress:
            self.progress.close()
        self.report.close()
        self.journal.close()
        status = self.status_data()
        status["System"]["Ifaces"] = ["FILE"]
        with open(os.path.join(self.aux_dir, self.config.final_status_file), "w") as f:
            json.dump(status, f, indent=2)
        log.info("service finished", uptime=status["System"]["Uptime"], refused=self.handler.refused)
        for c in self._closers:
            c.close()


def run(config: ServiceConfig) -> int:
    service = Service(config)
    try:
        service.prepare()
    except StartError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    return asyncio.run(service.run())
