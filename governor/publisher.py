"""The event publisher: task and job state changes on a PUB socket (issue 4, "Service side").

A `GovernorListener`: every state change the governor announces (EXECUTING
and the final states) leaves as two frames, topic and msgpack map
(`api/protocol.py`), at the end of the loop turn in which it happened, in
order, once the final states of that turn are on disk (the service's
`FinalsWriter.flush`; without `on_pending` set, at once):

* `job.<STATE>`  `{"v", "manager", "job", "state"}` -- a job (or an iterative job's parent);
* `task.<STATE>` `{"v", "manager", "job", "it", "state"}` -- one iteration of an iterative job;
* `nojobs` `{"v", "manager"}` -- right after the event that left no job unfinished.

The state is in the topic (`protocol.event_topic`) so that a subscriber gets only what it waits
for: the PUB socket filters by prefix before anything is queued or encrypted, and the client API
subscribes to the final states only -- as the original's client takes its `*_FINISHED` topics only.

Clients wait on these instead of polling (DESIGN.md principle 1); the
reference's publisher (facts section 17) is the model, `--disable-pub`
turns it off. The socket is a CURVE server like the request socket; sends
never block (a subscriber beyond its high-water mark loses events, counted).

Without CURVE (`--insecure-no-curve`, for clients that cannot do it -- the
original 0.14.2's client among them) the final states also leave in the
original's form, one string frame `<topic> <json>` under its topics `JFI`,
`IFI`, `NOJ`: that client finds this socket in the `status` answer and,
once subscribed, waits for those events only; without them its `wait4`
never returned. The prefixes differ, so each client gets only its own kind.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

import msgpack
import structlog
import zmq

from qcg.pilotjob.api import protocol
from qcg.pilotjob.governor.governor import GovernorListener
from qcg.pilotjob.governor.states import FINAL_STATES, JobState
from qcg.pilotjob.governor.zmq_interface import bind_tcp

if TYPE_CHECKING:
    from qcg.pilotjob.governor.keys import RunKeys
    from qcg.pilotjob.governor.registry import JobRecord

log = structlog.get_logger("publisher")

# events queued per subscriber before it loses them (it learns the states from its waits' re-checks): a
# million let each subscriber that stopped reading hold about 130 MB of the service (helper report)
PUB_HWM = 100_000
PUB_LINGER_MS = 300          # the last events (e.g. of jobs canceled by `finish`) may still leave at close
# the original's topics of final states, as its client subscribes to them
LEGACY_JOB_FINISHED, LEGACY_ITERATION_FINISHED, LEGACY_NO_JOBS = "JFI", "IFI", "NOJ"


class EventPublisher(GovernorListener):
    def __init__(self, context: zmq.Context, keys: "RunKeys | None", manager_id: str, *,
                 host: str = "127.0.0.1", port: int | None = None, port_min: int | None = None,
                 port_max: int | None = None) -> None:
        self.manager_id = manager_id
        self.keys = keys
        self.host = host
        self._want = (port, port_min, port_max)
        self.sock: zmq.Socket = zmq.Context.shadow(context.underlying).socket(zmq.PUB)
        self.address: str | None = None
        self.governor: Any = None            # set by the service; needed for TOPIC_NO_JOBS
        # set by the service: events wait in `_pending` until its FinalsWriter calls `flush`
        self.on_pending: Callable[[], object] | None = None
        self._pending: list[tuple[bytes | None, bytes]] = []     # topic None: a legacy one-frame event
        self._legacy = keys is None
        self.published = 0
        self.dropped = 0
        self._closed = False
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._v = protocol.PROTOCOL_VERSION
        self._topics = {(kind, state): protocol.event_topic(kind, state.value)
                        for kind in (protocol.TOPIC_JOB, protocol.TOPIC_TASK) for state in JobState}

    def bind(self) -> str:
        sock = self.sock
        sock.setsockopt(zmq.SNDHWM, PUB_HWM)
        sock.setsockopt(zmq.LINGER, PUB_LINGER_MS)
        if self.keys is not None:
            from qcg.pilotjob.governor.keys import make_server
            make_server(sock, self.keys)
        port, port_min, port_max = self._want
        try:
            self.address = bind_tcp(sock, self.host, port, port_min, port_max, "--net-pub-port")
        except Exception:
            sock.close(linger=0)
            self._closed = True
            raise
        return self.address

    def close(self) -> None:
        if self._closed:
            return
        # what is still held back announces states that could not be written (the service flushed the rest)
        held, self._pending = len(self._pending), []
        self._closed = True
        self.sock.close(linger=PUB_LINGER_MS)
        log.info("publisher closed", address=self.address, published=self.published, dropped=self.dropped,
                 held_back=held)
        self.address = None

    # ------------------------------------------------------------ listener
    def state_changed(self, job: "JobRecord", iteration: int | None, state: JobState) -> None:
        if self._closed:
            return
        if iteration is None:
            self._send(self._topics[protocol.TOPIC_JOB, state], {"v": self._v, "manager": self.manager_id,
                                                                 "job": job.name, "state": state.value})
            if self._legacy and state in FINAL_STATES:
                self._send_legacy(LEGACY_JOB_FINISHED, {"manager": self.manager_id, "job": job.name,
                                                        "state": state.value})
            if state in FINAL_STATES and self.governor is not None and self.governor.unfinished == 0:
                self._send(protocol.TOPIC_NO_JOBS, {"v": self._v, "manager": self.manager_id})
                if self._legacy:
                    self._send_legacy(LEGACY_NO_JOBS, {"manager": self.manager_id})
        else:
            self._send(self._topics[protocol.TOPIC_TASK, state], {"v": self._v, "manager": self.manager_id,
                                                                  "job": job.name, "it": iteration,
                                                                  "state": state.value})
            if self._legacy and state in FINAL_STATES:
                self._send_legacy(LEGACY_ITERATION_FINISHED, {"manager": self.manager_id, "job": job.name,
                                                              "state": state.value, "it": iteration})

    def _send_legacy(self, topic: str, body: dict[str, Any]) -> None:
        self._queue(None, f"{topic} {json.dumps(body)}".encode())

    def _send(self, topic: bytes, body: dict[str, Any]) -> None:
        self._queue(topic, self._pack(body))

    def _queue(self, topic: bytes | None, payload: bytes) -> None:
        """Sent now, or held back until the service's FinalsWriter calls `flush` (see `on_pending`)."""
        if self.on_pending is None:
            self._send_now(topic, payload)
            return
        self._pending.append((topic, payload))
        self.on_pending()

    def flush(self) -> None:
        """Send the events held back (their final states are on disk now)."""
        if not self._pending or self._closed:
            return
        pending, self._pending = self._pending, []
        for topic, payload in pending:
            self._send_now(topic, payload)

    def tend(self) -> None:
        """Let libzmq take in what it queued for the socket: the ends of subscribers that left. It does so
        only when the socket is used, and an idle service kept every departed client's pipes and CURVE
        state until the next event (helper report: 7000 clients that came and went, 190 MB)."""
        if not self._closed:
            self.sock.getsockopt(zmq.EVENTS)

    def _send_now(self, topic: bytes | None, payload: bytes) -> None:
        try:
            if topic is None:
                self.sock.send(payload, zmq.NOBLOCK)
            else:
                self.sock.send_multipart((topic, payload), zmq.NOBLOCK)
            self.published += 1
        except zmq.ZMQError as exc:
            self.dropped += 1
            if self.dropped <= 20 or self.dropped % 1000 == 0:
                log.warning("event dropped", error=str(exc), dropped=self.dropped)
