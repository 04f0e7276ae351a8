"""The waits of `Manager` (`wait4`, `wait4all`, `wait4_any_job_finish`), driven by the service's events.

Issue 4 asks for waits driven by PUB events, not polling, and bounded by
timeouts; DESIGN.md principle 1. The event subscription is made when the
Manager connects, so it is active long before any wait; each wait first takes
the current state with one request, then reacts to events, and re-checks with
a request after a `nojobs` event and at growing intervals (`_Recheck`: 50 ms
doubling up to `poll_delay`) in case an event was dropped. Without a
publisher (`--disable-pub`) the waits fall back to those re-checks only.

`JobWaits` is a part of `Manager` (its base class): it uses the Manager's
connection (`_conn`, `_assure_connected`), its requests
(`_send_and_validate_result`), its locks and settings (`_event_lock`,
`_finished_events`, `default_poll_delay`, `default_pub_timeout`,
`request_timeout`, `FIRST_RECHECK`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qcg.pilotjob.api import errors, protocol, transport
from qcg.pilotjob.api.job import as_job_names

if TYPE_CHECKING:
    import threading

    from qcg.pilotjob.api.manager import Manager

_logger = logging.getLogger("qcg.pilotjob.api")

FINAL_STATES = frozenset(protocol.FINAL_STATE_NAMES)


def event_name(data: dict[str, Any]) -> str | None:
    job = data.get("job")
    if job is None:
        return None
    it = data.get("it")
    return f"{job}:{it}" if it is not None else str(job)


class TimeStamp:
    """Tracks the timeout of one wait (reference 22.1.4 `TimeStamp`)."""

    #: the least a request gets even when the wait is almost over (a last look at the jobs' states)
    MIN_REQUEST_TIME = 0.1

    def __init__(self, manager: "Manager | JobWaits", timeout_secs: float | None = None) -> None:
        self.started = datetime.now()
        self._start = time.monotonic()
        self.manager = manager
        self.timeout_secs = timeout_secs

    @property
    def secs_from_start(self) -> float:
        return time.monotonic() - self._start

    def remaining(self) -> float | None:
        if self.timeout_secs is None:
            return None
        return self.timeout_secs - self.secs_from_start

    def check_timeout(self) -> bool:
        """Raise TimeoutElapsed once the timeout has passed; False otherwise."""
        rest = self.remaining()
        if rest is not None and rest <= 0:
            raise errors.TimeoutElapsed(f"timeout of {self.timeout_secs} s elapsed")
        return False

    def request_timeout(self) -> float | None:
        """How long one request of this wait may take: what is left of it (None: the connection's own)."""
        rest = self.remaining()
        if rest is None:
            return None
        return min(self.manager.request_timeout, max(rest, self.MIN_REQUEST_TIME))

    @contextmanager
    def bounded(self) -> Iterator[None]:
        """A request cut short by this wait's end (`request_timeout`) is the wait's timeout elapsing."""
        try:
            yield
        except transport.ServiceUnreachable:
            self.check_timeout()
            raise

    def get_poll_time(self) -> float:
        """The poll delay, cut to what is left of the timeout (TimeoutElapsed if nothing is)."""
        self.check_timeout()
        rest = self.remaining()
        return self.manager.default_poll_delay if rest is None else min(self.manager.default_poll_delay, rest)

    def get_events_timeout(self) -> float:
        """The event wait timeout, cut to what is left of the timeout (TimeoutElapsed if nothing is)."""
        self.check_timeout()
        rest = self.remaining()
        return self.manager.default_pub_timeout if rest is None else min(self.manager.default_pub_timeout, rest)


class JobWaits:
    """Waiting for jobs to finish, by events with safety re-checks (see the module documentation)."""

    FIRST_RECHECK = 0.05         #: first interval of the safety re-checks (doubles up to poll_delay)
    EVENT_LOG = 100_000          #: final-state events kept for the waits of every thread (older: re-checks)
    _conn: "transport.ServiceConnection | None"
    _event_lock: "threading.RLock"
    _finished_events: "deque[tuple[str, str]]"
    _log_lock: "threading.Lock"
    _event_log: "deque[tuple[int, str | None, str]]"
    _event_seq: int
    default_poll_delay: float
    default_pub_timeout: float
    request_timeout: float

    if TYPE_CHECKING:        # given by Manager
        def _assure_connected(self) -> transport.ServiceConnection: ...

        def _send_and_validate_result(self, data: dict[str, Any], valid_method: Any = None,
                                      timeout: float | None = None) -> Any: ...

    def _pump_events(self, timeout: float | None, limit: int = 10_000) -> int:
        """Take in the events received within `timeout` (the first waited for, the rest already queued) and
        return how many. What ends a job goes to the event log that the waits of every thread read
        (`_events_since`): one thread takes the events in at a time, and another thread's wait for its
        turn is bounded by its own `timeout` -- the events it waits for reach the log either way."""
        conn = self._assure_connected()
        rest = timeout
        if not self._event_lock.acquire(blocking=False):
            # another thread takes the events in: once it has some (or its time is up) the caller looks at
            # the log, then waits again
            if not self._event_lock.acquire(timeout=-1 if timeout is None else timeout):
                return 0
            rest = 0
        try:
            taken = 0
            event = conn.next_event(rest)
            while event is not None:
                taken += 1
                self._log_event(*event)
                if taken >= limit:
                    break
                event = conn.next_event(0)
            return taken
        finally:
            self._event_lock.release()

    def _log_event(self, topic: bytes, data: dict) -> None:
        if topic == protocol.TOPIC_NO_JOBS:
            entry: tuple[str | None, str] = (None, "nojobs")
        elif protocol.is_state_event(topic) and data.get("state") in FINAL_STATES:
            name = event_name(data)
            if name is None:
                return
            entry = (name, data["state"])
            self._finished_events.append(entry)       # type: ignore[arg-type]
        else:
            return
        with self._log_lock:
            self._event_seq += 1
            self._event_log.append((self._event_seq, *entry))

    def _log_position(self) -> int:
        with self._log_lock:
            return self._event_seq

    def _events_since(self, seen: int) -> tuple[list[tuple[str | None, str]], int, bool]:
        """The logged events after position `seen` (name None: `nojobs`), the new position, and whether some
        fell out of the log meanwhile (the wait re-checks then)."""
        out: list[tuple[str | None, str]] = []
        with self._log_lock:
            last = self._event_seq
            for seq, name, state in reversed(self._event_log):
                if seq <= seen:
                    break
                out.append((name, state))
            lost = last - seen > len(out)
        out.reverse()
        return out, last, lost

    def _drain_events(self) -> None:
        """Take in every event already delivered (they are older than what follows)."""
        if self._conn is not None and self._conn.has_events:
            while self._pump_events(0):
                pass

    def _recheck_schedule(self) -> "_Recheck":
        return _Recheck(self.FIRST_RECHECK, max(self.FIRST_RECHECK, self.default_poll_delay))

    # ------------------------------------------------------------------ waits

    def wait4(self, names: Any, timeout: float | None = None) -> dict[str, str]:
        """Wait until every job in `names` is finished; return name -> final state.

        Raises TimeoutElapsed after `timeout` seconds; UnknownJobError (a
        JobNotDefinedError and a ConnectionError) for a name the service does
        not know; ConnectionError when the service is gone or refuses the
        request.
        """
        job_names = as_job_names(names)
        stamp = TimeStamp(self, timeout)
        result: dict[str, str] = {}
        self._drain_events()
        seen = self._log_position()
        not_finished = set(job_names)
        self._update_from_status(not_finished, result, stamp)
        by_event: set[str] = set()
        recheck = self._recheck_schedule()
        while not_finished or by_event:
            if not not_finished:
                # confirm what the events said with one request (a stale event must not end the wait)
                confirm, by_event = by_event, set()
                for name in confirm:
                    result.pop(name, None)
                self._update_from_status(confirm, result, stamp)
                not_finished |= confirm
                continue
            stamp.check_timeout()
            self._pump_events(recheck.until_next(stamp))
            events, seen, lost = self._events_since(seen)
            if lost:
                recheck.now()
            for name, state in events:
                if name is None:                # nojobs
                    recheck.now()
                elif name in not_finished:
                    not_finished.discard(name)
                    result[name] = state
                    by_event.add(name)
            if recheck.due():
                self._update_from_status(not_finished, result, stamp)
                recheck.done()
        _logger.info("all %d awaited jobs finished", len(job_names))
        return {name: result[name] for name in job_names if name in result}

    def _update_from_status(self, not_finished: set[str], result: dict[str, str], stamp: TimeStamp) -> None:
        if not not_finished:
            return
        with stamp.bounded():
            data = self._send_and_validate_result({"request": "jobStatus", "jobNames": sorted(not_finished)},
                                                  timeout=stamp.request_timeout())
        jobs = data.get("jobs") if isinstance(data, dict) else None
        if not isinstance(jobs, dict):
            raise errors.InternalError("Invalid reply from the service: missing jobs")
        for name, entry in jobs.items():
            if not isinstance(entry, dict):
                raise errors.InternalError(f"Missing job's {name} data")
            if entry.get("status") != 0:
                raise errors.UnknownJobError(entry.get("message") or f"job '{name}' does not exist")
            if not isinstance(entry.get("data"), dict):
                raise errors.InternalError(f"Missing job's {name} data")
            state = entry["data"].get("status")
            if state in FINAL_STATES and name in not_finished:
                not_finished.discard(name)
                result[name] = state

    def _all_finished(self, stamp: TimeStamp) -> bool:
        with stamp.bounded():
            data = self._send_and_validate_result({"request": "status", "options": {"allJobsFinished": True}},
                                                  timeout=stamp.request_timeout())
        return bool(isinstance(data, dict) and data.get("AllJobsFinished", False))

    def wait4all(self, timeout_secs: float | None = None) -> None:
        """Wait until every job of the service is finished; TimeoutElapsed after `timeout_secs`."""
        stamp = TimeStamp(self, timeout_secs)
        self._drain_events()
        seen = self._log_position()
        if self._all_finished(stamp):
            return
        recheck = self._recheck_schedule()
        while True:
            stamp.check_timeout()
            self._pump_events(recheck.until_next(stamp))
            events, seen, lost = self._events_since(seen)
            if lost or any(name is None for name, _ in events):
                recheck.now()
            if recheck.due():
                if self._all_finished(stamp):
                    _logger.info("all jobs finished in the service")
                    return
                recheck.done()

    def wait4_any_job_finish(self, timeout_secs: float | None = None) -> tuple[str, str]:
        """Return `(name, state)` of the next job or iteration (`job:N`) that finished.

        Each finish the Manager has seen since it connected is returned once,
        in order. Raises TimeoutElapsed after `timeout_secs` seconds and
        ServiceError when the service publishes no events (`--disable-pub`).
        """
        if not self._assure_connected().has_events:
            raise errors.ServiceError("Service not support publishing status events")
        stamp = TimeStamp(self, timeout_secs)
        quiet_since = time.monotonic()
        while True:
            with self._log_lock:
                if self._finished_events:
                    return self._finished_events.popleft()
            stamp.check_timeout()
            rest = stamp.remaining()
            if self._pump_events(self.default_poll_delay if rest is None else min(self.default_poll_delay,
                                                                                 max(rest, 0.0))):
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= self.default_poll_delay:
                # nothing for a while: is the service still there? (a killed one sends nothing, ever)
                with stamp.bounded():
                    self._send_and_validate_result({"request": "resourcesInfo"}, timeout=stamp.request_timeout())
                quiet_since = time.monotonic()

    @staticmethod
    def is_status_finished(status: str) -> bool:
        """True for the final states SUCCEED, FAILED, CANCELED, OMITTED."""
        return status in FINAL_STATES


class _Recheck:
    """Safety re-check schedule of a wait: `first` seconds, doubling up to `longest`."""

    def __init__(self, first: float, longest: float) -> None:
        self.interval = first
        self.longest = longest
        self.next = time.monotonic() + first

    def until_next(self, stamp: TimeStamp) -> float:
        """Seconds to wait for events before the next re-check, never past the wait's timeout."""
        wait = max(0.0, self.next - time.monotonic())
        rest = stamp.remaining()
        return wait if rest is None else min(wait, max(rest, 0.0))

    def due(self) -> bool:
        return time.monotonic() >= self.next

    def now(self) -> None:
        self.next = time.monotonic()

    def done(self) -> None:
        self.interval = min(self.interval * 2, self.longest)
        self.next = time.monotonic() + self.interval
