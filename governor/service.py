"""The service: logs, governor + partition, interfaces, the run's life until shutdown.

`run(config)` is the whole life of one `qcg-gov` / `qcg-pm-service` run and
returns its exit code: 0 when every request was served, 2 when some request of
the request file was refused (bad input; network clients get their errors in
the replies), 1 when the service could not start, 128+N on signal N. What it
is told is `service_config`; where it works (working and aux dirs,
resources), checked before anything starts, is `service_setup`; who runs its
tasks (its own partition, node agents, partition managers) is `service_workers`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from qcg.pilotjob.api import protocol
from qcg.pilotjob.api.unless_stopped import unless_stopped
from qcg.pilotjob.governor import aux_dir as aux_dirs
from qcg.pilotjob.governor import logs
from qcg.pilotjob.governor.file_interface import serve_requests
from qcg.pilotjob.governor.finals_writer import FinalsWriter
from qcg.pilotjob.governor.lossy_stream import LossyStream, standard_streams_lost
from qcg.pilotjob.governor.service_config import (
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    EXIT_RECORD_LOST,
    EXIT_REFUSED,
    EXIT_START_FAILED,
    NothingToResume,
    ServiceConfig,
    StartError,
)
from qcg.pilotjob.governor.service_setup import prepare_run, run_options
from qcg.pilotjob.governor.service_workers import Workers
from qcg.pilotjob.governor.stop_causes import internal_error_line, stop_signals

if TYPE_CHECKING:
    from qcg.pilotjob.governor.governor import Governor
    from qcg.pilotjob.governor.journal import Journal
    from qcg.pilotjob.governor.progress import Progress
    from qcg.pilotjob.governor.reports import JobReport
    from qcg.pilotjob.governor.requests import RequestHandler
    from qcg.pilotjob.governor.service_network import ServiceNetwork

log = structlog.get_logger("service")


class Service(Workers):
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.started = datetime.now()
        self.instance_id = config.id or aux_dirs.new_instance_id()     # a new run's: see aux_dirs.make_new
        self.requests: list[Any] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._finish_after_all = False
        self._finish_requested = False
        self._signal: int | None = None
        self._closers: list[Any] = []
        self._file_refused = 0
        self.replay: Any = None           # with --resume: the interrupted run's journal (journal.Replay)
        self._record_lost = False          # jobs.report, track.states or final_status.json not all written
        self._internal_error = ""         # the line said when an exception escaped into the loop (a bug)
        self._keep_status = False         # a resume refused or stopped before its replay: keep final_status.json
        self.network: ServiceNetwork | None = None    # with --net or as a governor
        self.zmq: Any = None              # its ZmqInterface
        self.publisher: Any = None        # its EventPublisher, without --disable-pub
        self.zmq_address: str | None = None
        self.keys: Any = None
        self.partitions: Any = None       # PartitionServer in governor mode
        self.starter: Any = None          # PartitionStarter with --slurm-partition-nodes
        self._launch_error: ValueError | None = None     # the allocation could not be split

    # ------------------------------------------------------------------ start
    def prepare(self) -> None:
        """Everything that can fail on bad input, before any process starts (StartError)."""
        place = prepare_run(self.config, self.instance_id)
        self.requests, self.wd, self.aux_dir = place.requests, place.wd, place.aux_dir
        self.instance_id, self.resources, self.slurm_mode = place.instance_id, place.resources, place.slurm_mode
        self.replay = place.replay

    async def run(self) -> int:
        cfg = self.config
        self.loop = loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # tasks run in the working directory by default; being there spares a chdir per spawn
        os.chdir(self.wd)
        if not self._open_log():
            return EXIT_START_FAILED
        log.info("service starting", id=self.instance_id, wd=self.wd, resources=self.resources.info(),
                 tags=cfg.tags, resume=cfg.resume)
        if cfg.wrapper_rt_stats:
            # the original's C wrapper timed each process; our launchers time the spawn and the exit themselves
            log.info("--wrapper-rt-stats not used: start and end times are taken by the launchers",
                     wrapper=cfg.wrapper_rt_stats, rt_stats=cfg.enable_rt_stats)
        if cfg.net or cfg.governor_mode:
            try:
                self._open_network()
            except StartError as exc:
                return self._start_failed(str(exc), "network interface not started", exc)
        self.partition = self._make_partition()
        if cfg.governor_mode and cfg.slurm_partition_nodes is not None:
            # the managers start up (srun, interpreter, imports) while the governor builds the rest
            try:
                self._launch_partitions()
            except ValueError as exc:
                self._launch_error = exc
        Governor, Journal, Progress, JobReport, RequestHandler = governor_parts()

        gc.freeze()             # as tune_gc: the modules just loaded are never collected
        try:
            # the journal first: it checks the aux dir (own_opener) before anything else is written there
            journal = Journal(self.aux_dir)
            report_path = os.path.join(self.aux_dir, cfg.report_file)
            self.report = JobReport(report_path, cfg.report_format, rt_stats=cfg.enable_rt_stats,
                                    opener=aux_dirs.opener_for(report_path, self.aux_dir))
        except OSError as exc:          # e.g. the aux dir swapped for somebody else's since it was checked
            await self._stop_workers()
            return self._start_failed(f"the run's files in {self.aux_dir} cannot be opened: {exc}",
                                      "run files not opened", exc)
        self.finals = FinalsWriter(loop, self.report, self.publisher)
        self.journal = self.finals.journal = journal
        journal.set_on_pending(self.finals.due)
        listeners: list[Any] = [self.journal, self.report]
        self.progress = Progress(loop) if cfg.show_progress else None
        if self.progress:
            listeners.append(self.progress)
        if self.publisher is not None:
            listeners.append(self.publisher)
        self.governor = Governor(loop, self.partition, listeners)
        self.journal.canceled_by_stop = self.governor.canceled_by_stop
        if self.publisher is not None:
            self.publisher.governor = self.governor
            self.publisher.on_pending = self.finals.due
        self.partition.events = self.governor
        self.governor.requeue_limit = cfg.nl_task_retries
        self.governor.eager_dispatch = not cfg.governor_mode
        self.handler = RequestHandler(self.governor, self)
        for sig in stop_signals():
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.set_exception_handler(self._on_loop_error)
        flusher = loop.create_task(self.finals.flush_periodically())
        start_failed = False
        # until the journal is replayed, the interrupted run's final_status.json is the truth about it
        self._keep_status = bool(cfg.resume)
        try:
            # a signal ends the start at once (what it started is ended by the shutdown): waiting out the
            # start's own timeout (up to 600 s of a hung srun) ignored Ctrl-C and left scancel's grace to run
            # out (helper report)
            started = await unless_stopped(self._start_workers(), self._stop)
            if started is None:         # a signal while agents or managers were starting
                return 128 + self._signal if self._signal is not None else EXIT_OK
            if not started:
                start_failed = True
                return EXIT_START_FAILED
            if cfg.resume and not self._replay():
                start_failed = True
                return EXIT_START_FAILED
            self.journal.run_started(run_options(cfg, self.wd, self.instance_id, self.aux_dir))
            self._serve_file()
            # only the request file decides exit code 2; network clients get their errors in the replies
            self._file_refused = self.handler.refused + self.handler.failed_at_submit
            if self.zmq is not None and not self._stop.is_set():
                # the file (if any) is done; network clients are served until `finish`, a signal, or the end
                # of the last task after `control finishAfterAllTasksDone` -- also one the file sent: its tasks
                # may be clients (reference 8.2, an application controller), as in the original
                self.zmq.start(loop, self.handle_request, self._replied)
                self._serve_requests_first()
                self._publish_address()
            if not cfg.net and not self._finish_requested:
                # with only the file interface, nothing more can arrive: finish when all is done
                self._finish_after_all = True
            self._check_done()
            await self._stop.wait()
        finally:
            flusher.cancel()
            await self._shutdown()
        if start_failed:
            return EXIT_START_FAILED
        if self._signal is not None:
            return 128 + self._signal
        if self._internal_error:
            return EXIT_INTERNAL_ERROR
        if self._record_lost:
            return EXIT_RECORD_LOST
        return EXIT_REFUSED if self._file_refused else EXIT_OK

    def _open_log(self) -> bool:
        """service.log in the aux dir; False (one `Error:` line said) when it cannot be opened: a link
        planted there, a read-only file, no inode left."""
        path = os.path.join(self.aux_dir, "service.log")
        try:
            self._closers.append(logs.setup(path, self.config.log_level))
        except OSError as exc:
            print(f"Error: the service log '{path}' cannot be opened: {exc.strerror or exc}", file=sys.stderr)
            for c in self._closers:
                c.close()
            return False
        return True

    def _start_failed(self, message: str, event: str, exc: Exception) -> int:
        """A start refused before any task ran: one `Error:` line, the log's, and what was opened closed."""
        print(f"Error: {message}", file=sys.stderr)
        log.error(event, error=str(exc))
        self._close_network()
        for c in self._closers:
            c.close()
        return EXIT_START_FAILED

    def _replay(self) -> bool:
        """The interrupted run's journal, replayed (governor/resume.py); False when the resume is refused,
        and then the run's final_status.json stays as it was."""
        from qcg.pilotjob.governor.resume import replay_journal

        assert self.replay is not None
        if not replay_journal(self.governor, self.journal, self.aux_dir, self.replay):
            return False
        self._keep_status = False
        if self.replay.finish_after_all:
            self._finish_after_all = True
        return True

    def _serve_file(self) -> None:
        assert self._stop is not None
        serve_requests(self.requests, self.handle_request, self._stop.is_set)

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
        if self.zmq is not None:
            # the reply to this `finish` still goes out (it is sent right after this returns)
            self.zmq.stop_accepting()
        # what this cancels is interrupted, not decided: `--resume` runs it again (Governor.canceled_by_stop);
        # what ended before is on disk before the stop begins
        self.finals.flush()
        self.governor.cancel_everything()
        assert self._stop is not None
        self._stop.set()
        return None

    def resources_info(self) -> dict[str, int]:
        return self.partition.info()

    def status_data(self) -> dict[str, Any]:
        from qcg.pilotjob.governor.views import status_report

        data = status_report(list(self.governor.registry), self.partition.info(), instance_id=self.instance_id,
                             started=self.started, zmq_address=self.zmq_address, interfaces=self._interfaces(),
                             publisher=self.publisher.address if self.publisher is not None else None)
        if self.partitions is not None:
            data["Partitions"] = self.partition.status()
            data["LostPartitions"] = list(self.partition.lost)
            data["LeftPartitions"] = list(self.partition.left)
        return data

    def _interfaces(self) -> list[str]:
        ifaces = []
        if self.config.file_path is not None or self.zmq is None:
            ifaces.append("FILE")
        if self.zmq is not None:
            ifaces.append("ZMQ")
        return ifaces

    # --------------------------------------------------------------- network
    def _open_network(self) -> None:
        """The network endpoints (service_network); StartError when they cannot be opened."""
        from qcg.pilotjob.governor.service_network import NetworkError, ServiceNetwork

        cfg = self.config
        self.network = net = ServiceNetwork(self.aux_dir, self.instance_id)
        try:
            net.open(host=cfg.net_interface or self._default_host(), port=cfg.net_port,
                     port_min=cfg.net_port_min, port_max=cfg.net_port_max,
                     publish=cfg.net and not cfg.disable_pub, pub_port=cfg.net_pub_port,
                     insecure=cfg.insecure_no_curve)
        except NetworkError as exc:
            raise StartError(str(exc)) from None
        self.keys, self.zmq, self.publisher, self.zmq_address = net.keys, net.interface, net.publisher, net.address
        if net.keys is not None:
            # tasks inherit the service's environment (LocalLauncher copies it when created)
            os.environ[protocol.KEYS_ENV] = net.keys.directory

    def _default_host(self) -> str:
        """Loopback, unless partition managers started here run on other nodes (srun, ssh)."""
        cfg = self.config
        remote = cfg.slurm_partition_nodes is not None and self.slurm_mode
        return "0.0.0.0" if remote else "127.0.0.1"

    def _publish_address(self) -> None:
        if self.network is not None:
            self.network.publish_address(self.zmq_address)

    def _close_network(self) -> None:
        if self.network is not None:
            self.network.close()

    # --------------------------------------------------------------- running
    def _check_done(self) -> None:
        if self._finish_after_all:
            self.loop.create_task(self._wait_all_then_stop())  # type: ignore[union-attr]

    async def _wait_all_then_stop(self) -> None:
        await self.governor.wait_all_finished()
        assert self._stop is not None
        self._stop.set()

    def handle_request(self, request: Any) -> dict[str, Any]:
        """A request of a client or the request file, answered with what is on disk: ends handled earlier
        in this loop turn are written before, ends the request itself made (`cancelJob`) before its answer."""
        self.finals.flush_if_due()
        response = self.handler.handle(request)
        self.finals.flush_if_due()
        return response

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An exception nothing caught, in a callback of the loop: a bug. Going on could leave tasks that
        never start in a run that never ends (helper report: a scheduling pass that raised did exactly
        that), so the service stops as on SIGTERM, and `--resume` finishes the run."""
        loop.default_exception_handler(context)          # the traceback, into service.log
        if self._internal_error or self._stop is None or self._stop.is_set():
            return
        self._internal_error = internal_error_line(context, self.aux_dir)
        print(self._internal_error, file=sys.stderr)
        self.finish_now()

    def _on_signal(self, sig: int) -> None:
        log.warning("signal received, finishing", signal=sig)
        self._signal = sig
        self.finish_now()

    async def _shutdown(self) -> None:
        if not self.governor.all_finished:
            self.finals.flush()
            self.governor.cancel_everything()
        if self.partitions is not None and not self.governor.all_finished and self.partition.members:
            # let canceled tasks report their ends from the partitions (bounded)
            try:
                await asyncio.wait_for(self.governor.wait_all_finished(), 5.0)
            except asyncio.TimeoutError:
                log.warning("partitions did not confirm every cancel in time", unfinished=self.governor.unfinished)
        await self._stop_workers()
        # tasks killed at shutdown report their ends through the loop; let them land
        await asyncio.sleep(0)
        # the last ends on disk before their events leave; the publisher is stopped before the final
        # status is written (StatusPublisher null in it)
        self.finals.flush()
        self._close_network()
        if self.progress:
            self.progress.close()
        status = self.status_data()
        failed = self.finals.close(self.config.report_file, None if self._keep_status else status,
                                   os.path.join(self.aux_dir, self.config.final_status_file))
        if failed:
            self._record_lost = True
            print(f"Error: the run's files in {self.aux_dir} could not be written ({'; '.join(failed)})",
                  file=sys.stderr)
            log.error("run files not written", failed=failed)
        log.info("service finished", uptime=status["System"]["Uptime"], refused=self.handler.refused)
        lost = standard_streams_lost()
        if lost:
            log.warning("writes to the standard streams were lost", **lost)
        for c in self._closers:
            c.close()
            if isinstance(c, LossyStream) and c.lost:
                print(f"Warning: {c.lost} writes to the service log in {self.aux_dir} were lost (a full disk?)",
                      file=sys.stderr)


def tune_gc() -> None:
    """Fewer, larger collections: the service allocates many small, acyclic objects per task and
    request, and the default gen-0 threshold (700) made collection a quarter of a 1000-job submit.
    Objects alive after start-up (modules, config) are frozen out of every collection."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def governor_parts() -> tuple[type[Governor], type[Journal], type[Progress], type[JobReport],
                              type[RequestHandler]]:
    """The governor's own classes, imported on first use: a partition manager (a Service subclass)
    never loads them.

    `run` loads them before the service's clock starts: `started`, the origin of `Uptime`, is stamped
    once its code is loaded, as the original stamps it (about 25 ms that Uptime counted before; the
    whole run is as long). Not when it starts partition managers: Service.run loads them while those
    start up."""
    from qcg.pilotjob.governor.governor import Governor
    from qcg.pilotjob.governor.journal import Journal
    from qcg.pilotjob.governor.progress import Progress
    from qcg.pilotjob.governor.reports import JobReport
    from qcg.pilotjob.governor.requests import RequestHandler

    return Governor, Journal, Progress, JobReport, RequestHandler


def run(config: ServiceConfig) -> int:
    tune_gc()
    if config.parent:
        from qcg.pilotjob.governor.manager_service import ManagerService
        service: Service = ManagerService(config)
    else:
        if config.slurm_partition_nodes is None:
            governor_parts()
        service = Service(config)
    try:
        service.prepare()
    except StartError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    except NothingToResume as exc:
        print(exc, file=sys.stderr)
        return EXIT_OK
    return asyncio.run(service.run())
