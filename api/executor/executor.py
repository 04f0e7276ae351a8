"""`QCGPJExecutor`: a `concurrent.futures.Executor` running tasks in a pilot-job service (reference 11, 23.2.1).

    with QCGPJExecutor() as e:
        f = e.submit(BasicTemplate.template, name='tj', exec='date')
        f.result()          # {'tj': 'SUCCEED'}

The executor starts a `LocalManager` (service subprocess) with `--wd wd`,
`--nodes resources`, `--system-core` (reserve_core), `--enable-rt-stats`,
`--wrapper-rt-stats`, `--log log_level` and `other_args`. `submit` renders
the template (`templates.render_template`), adds the environment variable
`QCG_PM_EXEC_API_JOB_ID=${jname}` to the task, submits it and returns a
`QCGPJFuture`.

Futures are completed by one watcher thread per executor: it has its own
connection to the service (ZMQ sockets belong to one thread), reacts to the
service's job events, and re-checks the pending jobs with a status request
at growing intervals (50 ms doubling up to `poll_delay`) in case an event
was missed. When the service dies, every pending future gets a
`ConnectionError`.

`shutdown(wait=True, cancel_futures=False)` behaves like
`concurrent.futures`: with `wait` it waits for the pending futures, then
finishes the service; `cancel_futures` cancels what is still pending first.
A second `shutdown` does nothing (reference 23.2.1; the original raised).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

import zmq

from qcg.pilotjob.api import errors, protocol, transport
from qcg.pilotjob.api.executor.future import QCGPJFuture
from qcg.pilotjob.api.executor.templates import TemplateResult, render_template
from qcg.pilotjob.api.job import Jobs
from qcg.pilotjob.api.local_manager import LocalManager
from qcg.pilotjob.api.job_waits import FINAL_STATES, event_name

__all__ = ["QCGPJExecutor", "ServiceLogLevel", "ClientLogLevel"]

_logger = logging.getLogger("qcg.pilotjob.api.executor")


class ServiceLogLevel(Enum):
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"


class ClientLogLevel(Enum):
    INFO = "info"
    DEBUG = "debug"


class _Watcher(threading.Thread):
    """Completes the executor's futures from the service's events (see the module documentation)."""

    FIRST_RECHECK = 0.05

    def __init__(self, manager: LocalManager, poll_delay: float) -> None:
        super().__init__(name="qcgpj-executor-watcher", daemon=True)
        self._manager = manager
        self._poll_delay = max(poll_delay, self.FIRST_RECHECK)
        self._lock = threading.Lock()
        self._waiting: dict[str, list[QCGPJFuture]] = {}   # job name -> futures waiting for it
        self._states: dict[QCGPJFuture, dict[str, str]] = {}  # future -> finished states so far
        self._finished: dict[str, str] = {}   # every finish seen (a job may end before its future registers)
        self._stopping = False
        self._reset_recheck = False
        self._error: BaseException | None = None
        self._conn = transport.ServiceConnection(manager.address, manager._keys, timeout=manager.request_timeout,
                                                 alive=manager._alive, insecure=manager._insecure)
        if manager._publisher_address:
            self._conn.subscribe(manager._publisher_address)
        ctx = self._conn.context
        endpoint = f"inproc://qcgpj-executor-wake-{id(self)}"
        self._wake_recv = ctx.socket(zmq.PAIR)
        self._wake_recv.bind(endpoint)
        self._wake_send = ctx.socket(zmq.PAIR)
        self._wake_send.connect(endpoint)
        self._wake_lock = threading.Lock()

    # ------------------------------------------------------------ other threads

    def register(self, future: QCGPJFuture) -> None:
        with self._lock:
            if self._error is not None:
                future._set_exception_once(self._error)
                return
            states: dict[str, str] = {}
            for name in future.ids:
                if name in self._finished:
                    states[name] = self._finished[name]
                else:
                    self._waiting.setdefault(name, []).append(future)
            self._states[future] = states
            self._complete_if_done(future)
            self._reset_recheck = True
        self._wake()

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self.join(timeout=10)
        self._conn.close()

    def pending(self) -> list[QCGPJFuture]:
        with self._lock:
            return [f for f in self._states if not f.done()]

    def _wake(self) -> None:
        with self._wake_lock:
            try:
                self._wake_send.send(b"", flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    # ---------------------------------------------------------------- thread

    def _complete_if_done(self, future: QCGPJFuture) -> None:
        states = self._states.get(future)
        if states is not None and len(states) == len(set(future.ids)):
            del self._states[future]
            future._set_result_once({name: states[name] for name in future.ids})

    def _finished_job(self, name: str, state: str) -> None:
        self._finished[name] = state
        for future in self._waiting.pop(name, ()):
            states = self._states.get(future)
            if states is not None:
                states[name] = state
                self._complete_if_done(future)

    def _recheck(self) -> None:
        with self._lock:
            names = sorted(self._waiting)
        if not names:
            return
        try:
            data = self._conn.request({"request": "jobStatus", "jobNames": names})
        except errors.ConnectionError:
            raise
        if data.get("code") != 0:
            # e.g. a job removed meanwhile: ask one by one to keep the others going
            for name in names:
                one = self._conn.request({"request": "jobStatus", "jobNames": [name]})
                if one.get("code") != 0:
                    with self._lock:
                        for future in self._waiting.pop(name, ()):
                            self._states.pop(future, None)
                            future._set_exception_once(errors.JobNotDefinedError(one.get("message", name)))
                    continue
                self._apply_status(one)
            return
        self._apply_status(data)

    def _apply_status(self, data: dict[str, Any]) -> None:
        jobs = (data.get("data") or {}).get("jobs") or {}
        with self._lock:
            for name, entry in jobs.items():
                state = (entry.get("data") or {}).get("status") if isinstance(entry, dict) else None
                if state in FINAL_STATES:
                    self._finished_job(name, state)

    def run(self) -> None:
        interval = self.FIRST_RECHECK
        next_check = time.monotonic() + interval
        try:
            while not self._stopping:
                if self._reset_recheck:
                    self._reset_recheck = False
                    interval = self.FIRST_RECHECK
                    next_check = min(next_check, time.monotonic() + interval)
                wait = max(0.0, next_check - time.monotonic())
                event = self._conn.next_event(wait, wake=self._wake_recv)
                while True:
                    try:
                        self._wake_recv.recv(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                while event is not None:
                    topic, data = event
                    if protocol.is_state_event(topic) and data.get("state") in FINAL_STATES:
                        name = event_name(data)
                        if name is not None:
                            with self._lock:
                                self._finished_job(name, data["state"])
                    event = self._conn.next_event(0)
                if time.monotonic() >= next_check:
                    self._recheck()
                    interval = min(interval * 2, self._poll_delay)
                    next_check = time.monotonic() + interval
        except BaseException as exc:  # the service is gone: fail what is pending, never hang the user
            error = exc if isinstance(exc, errors.QCGPJMAError) else errors.ConnectionError(str(exc))
            if not self._stopping:
                _logger.warning("executor watcher stopped: %s", exc)
            with self._lock:
                self._error = error
                futures = list(self._states)
                self._states.clear()
                self._waiting.clear()
            for future in futures:
                future._set_exception_once(error)
        finally:
            for sock in (self._wake_recv, self._wake_send):
                sock.close(linger=0)


class QCGPJExecutor(concurrent.futures.Executor):
    """Executor running QCG-PilotJob tasks from templates (reference 23.2.1)."""

    def __init__(self, *other_args: Any, wd: str = ".", resources: str | None = None, reserve_core: bool = False,
                 enable_rt_stats: bool = False, wrapper_rt_stats: str | None = None,
                 log_level: str = "info") -> None:
        """Positional arguments are extra service options (`other_args`), the rest keywords only, as the
        reference's signature (23.2.1) has them: `QCGPJExecutor("--system-core", wd=..., resources="4")`."""
        self.finished = False
        self._shutdown_lock = threading.Lock()
        service_log_level, client_log_level = self._setup_qcgpj_logging(log_level)
        args = ["--log", service_log_level, "--wd", str(wd)]
        if resources:
            args += ["--nodes", str(resources)]
        if reserve_core:
            args.append("--system-core")
        if enable_rt_stats:
            args.append("--enable-rt-stats")
        if wrapper_rt_stats:
            args += ["--wrapper-rt-stats", str(wrapper_rt_stats)]
        for extra in other_args:
            if isinstance(extra, (list, tuple)):
                args.extend(str(a) for a in extra)
            elif extra is not None:
                args.append(str(extra))
        client_conf = {"log_file": os.path.join(str(wd), "api.log"), "log_level": client_log_level}
        _logger.info("starting QCG-PilotJob service with arguments %s", args)
        self._qcgpjm = LocalManager(args, client_conf)
        try:
            self._watcher = _Watcher(self._qcgpjm, self._qcgpjm.default_poll_delay)
            self._watcher.start()
        except BaseException:
            self._qcgpjm.finish()
            raise

    def __enter__(self) -> "QCGPJExecutor":
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.shutdown(wait=exc_type is None)

    def submit(self, fn: Callable[..., TemplateResult], *args: Any, **kwargs: Any) -> QCGPJFuture:  # type: ignore[override]
        """Render the template `fn` with `args` (dicts) and `kwargs`, submit the task, return its future.

        Raises KeyError when a placeholder has no value, InvalidJobDescriptionError
        for a bad description, RuntimeError after shutdown.
        """
        if self.finished:
            raise RuntimeError("cannot schedule new futures after shutdown")
        description = render_template(fn, *args, **kwargs)
        items = description if isinstance(description, list) else [description]
        jobs = Jobs()
        for item in items:
            if not isinstance(item, dict):
                raise errors.InvalidJobDescriptionError(
                    f"a template must describe a job (dict), got {type(item).__name__}")
            execution = item.get("execution")
            if isinstance(execution, dict):
                env = execution.get("env")
                env = dict(env) if isinstance(env, dict) else {}
                env.setdefault("QCG_PM_EXEC_API_JOB_ID", "${jname}")
                execution["env"] = env
            jobs.add_std(item)
        ids = self._qcgpjm.submit(jobs)
        future = QCGPJFuture(ids, self._qcgpjm)
        future._watcher = self._watcher
        self._watcher.register(future)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Finish the service (see the module documentation); a second call does nothing."""
        with self._shutdown_lock:
            if self.finished:
                return
            self.finished = True
        pending = self._watcher.pending()
        try:
            if cancel_futures:
                for future in pending:
                    try:
                        future.cancel()
                    except errors.QCGPJMAError as exc:
                        _logger.warning("cancel of %s failed: %s", future.ids, exc)
            if wait and pending:
                concurrent.futures.wait(pending)
        finally:
            self._watcher.stop()
            try:
                self._qcgpjm.finish()
            finally:
                for future in pending:
                    if not future.done():
                        future._set_exception_once(
                            errors.ServiceError("the executor was shut down before the task finished"))

    @property
    def qcgpj_manager(self) -> LocalManager:
        """The `LocalManager` behind this executor."""
        return self._qcgpjm

    @staticmethod
    def _setup_qcgpj_logging(log_level: str) -> tuple[str, str]:
        level = str(log_level).upper()
        service = ServiceLogLevel[level].value if level in ServiceLogLevel.__members__ else "debug"
        client = ClientLogLevel[level].value if level in ClientLogLevel.__members__ else "debug"
        return service, client
