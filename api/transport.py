"""Client end of the service's network interface: one DEALER socket for requests, one SUB socket for events.

Used by `Manager` (reference 22.1.4) and the Executor API. The wire format
is `qcg.pilotjob.api.protocol`: every request is a msgpack map with `"v"`,
the reference's request fields and an `"id"` that the service echoes, so a
late answer to a request that timed out is recognised and dropped — the
socket stays usable (a REQ socket would be stuck).

Security (DESIGN.md principle 5): CURVE keys are found, and trusted only when
they are the user's own, by `qcg.pilotjob.api.client_keys`; without keys there
is no connection unless plain text was opted in (`insecure=True`).

Every call has a timeout: a service that is dead or unreachable raises
`ConnectionError` (of `qcg.pilotjob.api.errors`) once the timeout has passed.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq
import zmq.utils.monitor

from qcg.pilotjob.api import errors, protocol
# re-exported: callers (Manager, LocalManager, the Executor, tests) find keys and addresses here too
from qcg.pilotjob.api.client_keys import (
    AUX_DIR_PREFIX, CurveKeys, KeysRefused, NoKeysFound, find_aux_dir, find_keys, foreign_owner, insecure_opt_in,
    load_keys, locate_keys, read_aux_address, scan_aux_dirs)
from qcg.pilotjob.api.event_drain import EventDrain, connect_subscriber, decode_event, monitor
from qcg.pilotjob.api.parse_problems import unencodable_jobs

__all__ = [
    "CurveKeys", "find_keys", "locate_keys", "load_keys", "find_aux_dir", "scan_aux_dirs", "read_aux_address",
    "insecure_opt_in", "ServiceConnection", "RequestFailed", "ServiceUnreachable", "KeysRefused", "NoKeysFound",
    "DEFAULT_REQUEST_TIMEOUT", "AUX_DIR_PREFIX", "foreign_owner",
]

DEFAULT_REQUEST_TIMEOUT = 60.0
ADDRESS_FILE = protocol.ADDRESS_FILE
PUB_ADDRESS_FILE = protocol.PUB_ADDRESS_FILE

_CONNECTION_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                      | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                      | zmq.EVENT_CONNECT_RETRIED)


class ServiceUnreachable(errors.ConnectionError):
    """The service did not answer within the timeout, or its process is gone."""


class RequestFailed(errors.ConnectionError):
    """The service answered with an error (code != 0); the reference raises ConnectionError for it."""

    def __init__(self, message: str, response: dict | None = None) -> None:
        super().__init__(message)
        self.response = response


# ------------------------------------------------------------------ connection


_ids = itertools.count(1)


class ServiceConnection:
    """Request/response and event channel to one service (not thread-safe: one per thread or lock it).

    `alive` is an optional callable checked while waiting for an answer
    (e.g. "is the service process still running?"), so a local service that
    died is reported at once instead of after the whole timeout.

    `keys=None` (plain text) needs `insecure=True`, the caller's explicit
    opt-in (DESIGN.md principle 5); without it nothing is sent (`NoKeysFound`).
    """

    #: how often (seconds) `alive` is consulted while waiting for an answer
    ALIVE_CHECK = 0.25

    def __init__(self, address: str, keys: CurveKeys | None, *, timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 alive: Callable[[], bool] | None = None, context: zmq.Context | None = None,
                 insecure: bool = False) -> None:
        if keys is None and not insecure:
            raise NoKeysFound(f"no CURVE keys for {address}: a connection in plain text needs the explicit "
                              f"opt-in (insecure=True)")
        self.address = address
        self.keys = keys
        self.timeout = float(timeout)
        self._alive = alive
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._sock = self._socket(zmq.DEALER)
        # watched from before the connect, so a refused handshake (wrong mechanism, keys the service's ZAP
        # handler denies) is known however long before the first request it happened; libzmq retries
        # such connections only after a back-off, if at all
        self._events = monitor(self._sock, _CONNECTION_EVENTS)
        self._refusal: int | None = None     # last handshake failure since the last success
        self._refusals = 0
        self._link_up = False
        self._link_lost = False              # a connection that had completed its handshake went down
        self._down = False                   # the link went down since its last handshake
        self._retries = 0                    # reconnects scheduled since then
        self._gone = False                   # ... and the service's address refuses new ones: it has ended
        self._sock.connect(address)
        self._drain: EventDrain | None = None    # the SUB socket of the events, once subscribed
        self.pub_address: str | None = None
        self._closed = False
        self._pid = os.getpid()             # ZMQ sockets do not survive a fork: a child must connect anew
        self._lock = threading.RLock()
        self._wake: zmq.Socket | None = None      # while a request ends the service: its disconnect monitor

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if kind == zmq.DEALER:
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing on a connection that is not complete
        if self.keys is not None:
            sock.curve_secretkey = self.keys.client_secret
            sock.curve_publickey = self.keys.client_public
            sock.curve_serverkey = self.keys.server_public
        return sock

    # ---------------------------------------------------------------- requests

    def request(self, request: dict[str, Any], timeout: float | None = None, *,
                ends_service: bool = False) -> dict[str, Any]:
        """Send one request and return the decoded response map (any `code`).

        Raises ServiceUnreachable (a ConnectionError) when no answer came in
        `timeout` seconds (default: the connection's timeout) or `alive()`
        says the service is gone. With `ends_service` (`finish`), the service
        closing the connection after the request counts as its answer: the
        reply of a service that exits right away may not make it out.
        """
        if ends_service:
            return self._request_ending(request, timeout)
        with self._lock:
            if self._closed:
                raise errors.ConnectionError("Not connected")
            self._check_process()
            req_id = next(_ids)
            message = dict(request)
            message["v"] = protocol.PROTOCOL_VERSION
            message["id"] = req_id
            try:
                frame = msgpack.packb(message, use_bin_type=True)
            except (OverflowError, TypeError, ValueError):
                raise _unsendable(request) from None
            limit = self.timeout if timeout is None else float(timeout)
            deadline = time.monotonic() + limit
            sock = self._sock
            try:
                if self._events.poll(0, zmq.POLLIN):
                    self._drain_events()
                self._link_lost = False     # from here on a lost connection means no answer will come
                # the empty delimiter makes the envelope the same as a REQ socket's
                if not self._send(sock, frame, deadline):
                    raise self._unreachable(limit, "could not send the request to")
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._unreachable(limit)
                    wait = remaining if self._alive is None else min(remaining, self.ALIVE_CHECK)
                    if not self._wait_readable(sock, wait):
                        if self._alive is not None and not self._alive():
                            raise ServiceUnreachable(f"the service at {self.address} is not running any more")
                        if self._link_lost:
                            raise ServiceUnreachable(f"the service at {self.address} closed the connection "
                                                     f"before it answered (it ended?)")
                        continue
                    frames = sock.recv_multipart(copy=True)
                    response = self._decode(frames)
                    if response is None:
                        continue
                    rid = response.get("id")
                    if rid is not None and rid != req_id:
                        continue  # a late answer to an earlier request that timed out
                    return response
            except zmq.ZMQError as exc:
                raise errors.ConnectionError(f"communication with {self.address} failed: {exc}") from exc

    def _request_ending(self, request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise errors.ConnectionError("Not connected")
            self._drain_events()
            self._link_lost = False

            def gone() -> bool:
                # the connection events are polled together with the socket (`_wait_readable`): a service
                # that closed the connection wakes the wait at once, not after the next ALIVE_CHECK
                self._drain_events()
                return self._link_lost

            saved, self._alive = self._alive, (lambda: not gone() and (saved is None or saved()))
            self._wake = self._events
            try:
                return self.request(request, timeout)
            except ServiceUnreachable:
                if self._link_lost:
                    return {"code": 0, "message": "the service closed the connection after the request"}
                raise
            finally:
                self._alive = saved
                self._wake = None

    def _drain_events(self) -> None:
        """Take in the connection events that arrived (never blocks)."""
        events = self._events
        while events.poll(0, zmq.POLLIN):
            event = zmq.utils.monitor.recv_monitor_message(events)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._refusal, self._refusals, self._link_up = None, 0, True
                self._down = self._gone = False
                self._retries = 0
            elif event == zmq.EVENT_DISCONNECTED:
                self._link_lost = self._link_lost or self._link_up
                self._down = self._down or self._link_up
                self._link_up = False
            elif event == zmq.EVENT_CONNECT_RETRIED:
                # libzmq schedules one reconnect right after a disconnect; one more means a connect to
                # where a service answered before failed (refused): the service has ended
                self._retries += 1
                self._gone = self._down and self._retries >= 2
            else:
                self._refusal = event
                self._refusals += 1

    QUICK_ANSWER = 0.05     #: seconds an answer is waited for before the connection's events are watched too

    def _wait_readable(self, sock: zmq.Socket, seconds: float) -> bool:
        """Whether `sock` has input within `seconds`; returns early (False) when the wake socket has input
        (by default the connection's events: the connection went down, `_link_lost`)."""
        wake = self._wake
        if wake is None:
            # most answers come at once: only then the connection's events are polled with the socket
            if sock.poll(min(seconds, self.QUICK_ANSWER) * 1000.0, zmq.POLLIN):
                return True
            seconds -= self.QUICK_ANSWER
            if seconds <= 0:
                return False
            wake = self._events
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        ready = dict(poller.poll(seconds * 1000.0))
        if wake is self._events and wake in ready:
            self._drain_events()
        # an answer that came with the disconnection is still taken
        return sock in ready or bool(sock.poll(0, zmq.POLLIN))

    def _send(self, sock: zmq.Socket, frame: bytes, deadline: float) -> bool:
        try:
            sock.send_multipart([b"", frame], flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            pass
        # with IMMEDIATE the send waits until the connection (and CURVE handshake) is up; a handshake the
        # service refuses fails at once instead of after the whole timeout
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLOUT)
        poller.register(self._events, zmq.POLLIN)
        while True:
            self._drain_events()
            # a mismatch of mechanisms or a ZAP refusal is final; a dropped handshake (keys of another
            # run) is taken as final once it has happened on three connection attempts
            if self._refusal is not None and (self._refusal != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                              or self._refusals >= 3):
                raise self._handshake_refused(self._refusal)
            if self._gone:
                raise ServiceUnreachable(f"the service at {self.address} is not running any more: it closed "
                                         f"the connection and its address refuses new ones")
            try:
                sock.send_multipart([b"", frame], flags=zmq.NOBLOCK)
                return True
            except zmq.Again:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._alive is not None and not self._alive():
                raise ServiceUnreachable(f"the service at {self.address} is not running any more")
            poller.poll(min(remaining, self.ALIVE_CHECK) * 1000.0)

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise errors.ConnectionError(f"this connection to {self.address} was made by process {self._pid}: a "
                                         f"forked process cannot use it (ZMQ sockets do not survive a fork); make "
                                         f"a new Manager there")

    def _handshake_refused(self, event: int) -> ServiceUnreachable:
        where = f"the service at {self.address}"
        if self.keys is None:
            why = (f"{where} requires CURVE keys and none were found (this client talks plain text, as opted "
                   f"in): set {protocol.KEYS_ENV} to the service's aux dir or keys directory, or pass it "
                   f"(see qcg.pilotjob.api.transport)")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            why = (f"{where} does not use CURVE (started with --insecure-no-curve?): it is reached in plain "
                   f"text only without keys and with the explicit opt-in (cfg insecure_no_curve: True or "
                   f"{protocol.INSECURE_ENV}=1)")
        else:
            why = f"{where} refused this client's keys (keys of another run?)"
        return ServiceUnreachable(why)

    def _unreachable(self, limit: float, what: str = "no answer from") -> ServiceUnreachable:
        hint = "" if self.keys is not None else \
            f" (plain text, no CURVE keys: set {protocol.KEYS_ENV} or pass the aux dir if the service uses CURVE)"
        return ServiceUnreachable(f"{what} the service at {self.address} within {limit:g} s{hint}")

    @staticmethod
    def _decode(frames: list[bytes]) -> dict[str, Any] | None:
        payload = [f for f in frames if f]
        if not payload:
            return None
        frame = payload[-1]
        if frame[:1] == b"{":
            try:  # a JSON answer (a service that took our request for the original's JSON envelope)
                message = json.loads(frame.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise errors.InternalError(f"Invalid reply from the service: {exc}") from None
        else:
            try:
                message = msgpack.unpackb(frame, raw=False, strict_map_key=False)
            except Exception as exc:  # msgpack raises several unrelated types for garbage
                raise errors.InternalError(f"Invalid reply from the service: {type(exc).__name__}") from None
            if isinstance(message, dict) and message.get("v") != protocol.PROTOCOL_VERSION:
                raise errors.InternalError(f"Invalid reply from the service: protocol version "
                                           f"{message.get('v')!r}, this client speaks {protocol.PROTOCOL_VERSION}")
        if not isinstance(message, dict):
            raise errors.InternalError("Invalid reply from the service: not a map")
        return message

    # ------------------------------------------------------------------ events

    def subscribe(self, pub_address: str, topics: tuple[bytes, ...] = protocol.FINAL_EVENT_TOPICS) -> None:
        """Connect the SUB socket to the publisher (done once, early: a subscription takes a moment to work).

        The waits need final states only: the publisher does not even send the EXECUTING events to this
        socket, which halves what the client's I/O thread decrypts while many tasks start.
        """
        with self._lock:
            if self._drain is not None:
                return
            self._drain = connect_subscriber(self._socket(zmq.SUB), pub_address, topics, min(self.timeout, 10.0))
            self.pub_address = pub_address

    @property
    def has_events(self) -> bool:
        return self._drain is not None

    @property
    def context(self) -> zmq.Context:
        return self._ctx

    def next_event(self, timeout: float | None, wake: zmq.Socket | None = None) -> tuple[bytes, dict[str, Any]] | None:
        """One event `(topic, map)`, waiting up to `timeout` seconds (0: no wait); None if none came.

        With `wake` (a socket of this connection's context), the wait also
        ends, returning None, as soon as `wake` is readable (the caller reads it).
        """
        drain = self._drain
        self._check_process()
        ms = None if timeout is None else timeout * 1000.0
        if drain is None:
            if wake is not None:
                wake.poll(ms, zmq.POLLIN)
            elif timeout:
                time.sleep(timeout)
            return None
        try:
            frames = drain.next(ms, wake)
        except zmq.ZMQError as exc:
            if self._closed:
                raise errors.ConnectionError(f"the connection to {self.address} was closed during the wait "
                                             f"(finish or close in another thread)") from None
            raise errors.ConnectionError(f"event channel of {self.address} failed: {exc}") from exc
        return None if frames is None else decode_event(frames)

    # ------------------------------------------------------------------- close

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._events.close(linger=0)
            try:
                self._sock.close(linger=0)
            except zmq.ZMQError:
                pass
            if self._drain is not None:
                self._drain.close()
                self._drain = None
            if self._own_context:
                try:
                    self._ctx.term()
                except zmq.ZMQError:
                    pass

    @property
    def closed(self) -> bool:
        return self._closed


def _unsendable(request: dict[str, Any]) -> errors.QCGPJMAError:
    """What in `request` msgpack cannot carry, as a submit's refusal would name it."""
    jobs = request.get("jobs")
    if request.get("request") == "submit" and isinstance(jobs, list):
        return errors.InvalidJobDescriptionError(unencodable_jobs(jobs))
    where = "; ".join(f"field '{path}': {reason}" for path, reason in protocol.unencodable(request))
    return errors.WrongArgumentsError(f"request '{request.get('request')}' cannot be sent: {where or 'not packable'}")
