"""A partition manager's (or nested governor's) connection to its parent governor.

One DEALER socket, CURVE with the run's client key, kept for the whole run.
The link registers the wrapped port (a `Partition`, or a `PartitionSet` for a
nested governor), turns `dispatch`/`cancel` from the parent into calls on it,
and sends its task events back batched: everything that happened in one loop
turn goes out as one `events` message. Registration is retried with backoff
(tenacity); a parent silent for `lost_after` seconds is gone, and the
manager stops (its tasks are re-dispatched by the parent, or by a resumed
run).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any, Protocol

import structlog
import tenacity
import zmq
import zmq.asyncio

from qcg.pilotjob.api import curve, protocol
from qcg.pilotjob.api.socket_batches import receive_frames
from qcg.pilotjob.governor.keys import RunKeys
from qcg.pilotjob.partition import wire
from qcg.pilotjob.partition.agent_launcher import sent_now
from qcg.pilotjob.partition.resources import Resources
from qcg.pilotjob.partition.slurm_resources import resources_to_dict
from qcg.pilotjob.partition.task import ResourceRequest, TaskFinished, TaskSpec, TaskStarted

log = structlog.get_logger("parent")

REGISTER_ATTEMPTS = 5
REGISTER_TIMEOUT = 5.0        # seconds to wait for `registered` per attempt
EVENT_BATCH_DELAY = 0.002     # seconds events wait to travel with others


class ParentError(Exception):
    """The parent refused us or could not be reached; the message says why."""


class LinkedPort(Protocol):
    queue_limit: int
    resources: Resources

    def submit(self, tasks: list[TaskSpec]) -> None: ...
    def cancel(self, task_ids: list[str]) -> None: ...
    def retract(self, task_ids: list[str]) -> list[str]: ...
    def never_fits(self, request: ResourceRequest) -> str | None: ...
    def totals(self) -> tuple[int, int, int]: ...
    def info(self) -> dict: ...


class ParentLink:
    def __init__(self, loop: asyncio.AbstractEventLoop, port: LinkedPort, *, address: str, member_id: str,
                 keys: RunKeys | None, tags: list[str] | None = None,
                 lost_after: float = wire.LINK_LOST_AFTER) -> None:
        self.loop = loop
        self.port = port
        self.address = address
        self.member_id = member_id
        self.keys = keys
        self.tags = list(tags or [])
        self.lost_after = lost_after
        self._parent_pid: int | None = None     # the parent's process, when it runs on this host
        self._parent_pidfd: int | None = None   # ... watched by the loop
        self._ppid = os.getppid()                # the process that started this one (the governor, locally)
        self._started: list[list[Any]] = []
        self._finished: list[list[Any]] = []
        self._announced: set[str] = set()      # started tasks whose end is not reported yet
        self._flush_pending = False
        self._flush_timer: asyncio.TimerHandle | None = None
        self._abandoned = False
        self._last_seen = time.monotonic()
        self._done: asyncio.Future[str] | None = None
        self._registered: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.received = 0

    # ------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        """Open the socket and register; raises ParentError when refused or after every retry failed."""
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        if self.keys is not None:
            curve.make_client(self.sock, self.keys.client_public, self.keys.client_secret, self.keys.server_public)
        try:
            self.sock.connect(self.address)
        except zmq.ZMQError as exc:
            self.sock.close(linger=0)
            self.ctx.term()
            raise ParentError(f"--parent '{self.address}': not an address ZMQ can connect to ({exc.errno}); "
                              f"give it as tcp://HOST:PORT") from None
        self._done = self.loop.create_future()
        self._tasks.append(self.loop.create_task(self._receive()))
        try:
            async for attempt in tenacity.AsyncRetrying(
                    stop=tenacity.stop_after_attempt(REGISTER_ATTEMPTS),
                    wait=tenacity.wait_exponential(multiplier=0.5, max=4),
                    retry=tenacity.retry_if_exception_type(asyncio.TimeoutError), reraise=True):
                with attempt:
                    self._registered = self.loop.create_future()
                    # a DEALER whose CURVE handshake was refused has no pipe to send on: unbounded, the send
                    # would wait for ever
                    await asyncio.wait_for(self._send(self._register_message()), REGISTER_TIMEOUT)
                    await asyncio.wait_for(asyncio.shield(self._registered), REGISTER_TIMEOUT)
        except asyncio.TimeoutError:
            await self.close()
            raise ParentError(f"no answer from the parent at {self.address} after {REGISTER_ATTEMPTS} "
                              f"attempts (wrong address, or keys that do not match the parent's run?)") from None
        except ParentError:
            await self.close()
            raise
        self._last_seen = time.monotonic()
        self._tasks.append(self.loop.create_task(self._heartbeats()))
        log.info("registered with the parent", address=self.address, id=self.member_id)

    def _register_message(self) -> dict[str, Any]:
        port = self.port
        return {"type": "register", "v": protocol.PROTOCOL_VERSION, "id": self.member_id, "tags": self.tags,
                "resources": resources_to_dict(port.resources, rtype="LOCAL", with_reserved=True), "totals": list(port.totals()),
                "credit": port.queue_limit, "info": port.info(), "host": socket.gethostname(), "pid": os.getpid()}

    async def wait(self) -> str:
        """Until the parent says `exit` or is lost; returns why."""
        assert self._done is not None
        return await self._done

    @property
    def ended(self) -> bool:
        """The link has ended (`exit`, parent lost, abandoned): the manager is finishing."""
        return self._done is not None and self._done.done()

    def abandon(self, why: str) -> None:
        """Stop at once: what ended so far is reported, then the parent hears this manager is gone, so it
        runs the rest elsewhere at once (as after a lost heartbeat); the ends of the tasks killed next
        are not its business."""
        self._flush()
        self._send_now({"type": "gone", "reason": why})
        self._abandoned = True
        self._started, self._finished = [], []
        self._end(why)

    def give_back(self, task_ids: list[str]) -> None:
        """Queued tasks this partition can no longer run (it lost nodes): the parent places them elsewhere."""
        if task_ids:
            log.warning("tasks given back to the parent", count=len(task_ids))
            self._send_now({"type": "returned", "tasks": task_ids})

    def leave(self) -> None:
        """Ask to leave gracefully: no new tasks; the parent says `exit` when ours have ended."""
        self._send_now({"type": "leave"})

    def resources_changed(self) -> None:
        """Credit or resources changed (a nested governor gained or lost partitions, a node was lost)."""
        port = self.port
        if getattr(port.resources, "usable_nodes", 1) == 0:
            log.error("every node of this manager is lost: leaving the parent")
            self.leave()
            return
        self._send_now({"type": "update", "credit": port.queue_limit, "totals": list(port.totals()),
                        "resources": resources_to_dict(port.resources, rtype="LOCAL", with_reserved=True)})

    async def close(self) -> None:
        self._unwatch_parent()
        self._flush()
        if self._flush_timer is not None:
            self._flush_timer.cancel()      # it would fire after the socket (and the log) closed
        self._abandoned = True              # nothing is sent from now on
        for t in self._tasks:
            t.cancel()
        self.sock.close(linger=1000)
        self.ctx.term()

    # ------------------------------------------------------- port events
    def task_started(self, ev: TaskStarted) -> None:
        self._started.append(wire.encode_started(ev))
        self._announced.add(ev.task_id)
        self._request_flush()

    def task_finished(self, ev: TaskFinished) -> None:
        # the parent has the allocation, wd and start time from the start event already; only a task that
        # never started (could not be spawned) sends them here
        announced = ev.task_id in self._announced
        if announced:
            self._announced.discard(ev.task_id)
        self._finished.append(wire.encode_finished(ev, start_sent=announced))
        self._request_flush()

    def task_redispatched(self, task_id: str, reason: str) -> None:
        log.warning("task moved between our partitions", task=task_id, reason=reason)

    def capacity_changed(self) -> None:
        if self._registered is not None and self._registered.done():
            self.resources_changed()

    def _request_flush(self) -> None:
        if not self._flush_pending and not self._abandoned:
            self._flush_pending = True
            # a short wait gathers the exits of many tasks into one message (agents report one by one)
            self._flush_timer = self.loop.call_later(EVENT_BATCH_DELAY, self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self._abandoned or (not self._started and not self._finished):
            return
        # the partition's resource numbers travel with its events, so the governor's are never stale
        msg = {"type": "events", "started": self._started, "finished": self._finished, "info": self.port.info()}
        self._started, self._finished = [], []
        self._send_now(msg)

    # ----------------------------------------------------------- transport
    async def _send(self, msg: dict[str, Any]) -> None:
        await self.sock.send(protocol.encode(msg))

    def _send_now(self, msg: dict[str, Any]) -> None:
        exc = sent_now(self.sock.send(protocol.encode(msg), zmq.NOBLOCK))
        if exc is not None:
            log.error("message to the parent dropped", type=msg.get("type"), error=str(exc))

    async def _receive(self) -> None:
        while True:
            for frame in await receive_frames(self.sock):
                self._last_seen = time.monotonic()
                try:
                    msg, _ = protocol.decode(frame)
                    self._handle(msg)
                except (protocol.ProtocolError, wire.WireError, KeyError, TypeError, ValueError) as exc:
                    log.warning("malformed message from the parent dropped", error=str(exc))

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "dispatch":
            tasks = wire.decode_tasks(msg)
            self.received += len(tasks)
            self.port.submit(tasks)
        elif kind == "cancel":
            self.port.cancel([str(t) for t in msg["tasks"]])
        elif kind == "retract":
            # the tasks still queued here go back (the parent gives them to an idle partition)
            self._send_now({"type": "retracted", "tasks": self.port.retract([str(t) for t in msg["tasks"]])})
        elif kind == "hb":
            pass
        elif kind == "registered":
            if msg.get("host") == socket.gethostname() and isinstance(msg.get("pid"), int):
                self._watch_parent(msg["pid"])
            if self._registered is not None and not self._registered.done():
                self._registered.set_result(None)
        elif kind == "refused":
            reason = str(msg.get("reason"))
            if self._registered is not None and not self._registered.done():
                self._registered.set_exception(ParentError(f"the parent refused this manager: {reason}"))
            self._end(f"refused: {reason}")
        elif kind == "exit":
            self._end("the parent asked to exit")
        else:
            log.warning("unknown message from the parent dropped", type=kind)

    def _watch_parent(self, pid: int) -> None:
        """Its end wakes the loop through a pidfd: a governor killed and not yet reaped (a zombie) has
        ended too, which a signal 0 does not tell (the managers ran on for the heartbeats' 7 s). A second
        `registered` (the register was sent again) keeps the watch it has."""
        if self._parent_pidfd is not None or self._parent_pid is not None:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._parent_pid = pid
            self._parent_ended()
            return
        except OSError:     # no pidfd here: the heartbeats' check
            self._parent_pid = pid
            return
        self._parent_pidfd = fd
        self.loop.add_reader(fd, self._parent_ended)

    def _parent_ended(self) -> None:
        self._unwatch_parent()
        log.error("parent lost: its process ended", address=self.address, pid=self._parent_pid)
        self._end(f"parent lost (its process {self._parent_pid} ended)")

    def _unwatch_parent(self) -> None:
        fd, self._parent_pidfd = self._parent_pidfd, None
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)

    def _end(self, why: str) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(why)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(wire.LINK_HEARTBEAT)
            silent = time.monotonic() - self._last_seen
            if self._parent_pidfd is None and self._parent_pid is not None and not _alive(self._parent_pid,
                                                                                          self._ppid):
                self._parent_ended()
                return
            if silent > self.lost_after:
                log.error("parent lost", address=self.address, silent=round(silent, 1))
                self._end(f"parent lost (no heartbeat for {silent:.1f}s)")
                return
            self._send_now({"type": "hb", "info": self.port.info()})


def _alive(pid: int, started_by: int) -> bool:
    """Whether the parent's process lives; when it started this one, its end shows at once as a new ppid
    (a killed governor stays a zombie until whoever started it reaps it)."""
    if pid == started_by:
        return os.getppid() == pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
