"""The governor's end of its partition managers' connections.

Partition managers connect (DEALER, CURVE with the run's client key) to the
governor's network ROUTER -- the same address clients use, as `--parent`
takes in the original -- and speak the partition protocol there: messages
with a `type` instead of a `request`. Each registered manager becomes a
`RemotePartition` member of the governor's `PartitionSet`.

| manager -> governor | `register` (id, tags, resources, totals, credit, version), `events` (batched `started` and `finished`), `hb` (live resource info), `update` (credit, resources), `returned` (queued tasks it can no longer run), `leave` |
| governor -> manager | `registered` / `refused`, `dispatch` (tasks, executions sent once per batch), `cancel`, `hb`, `exit` |

Handlers only update state and queue sends (non-blocking ROUTER sends):
nothing here waits for a peer. A manager is lost when its messages stop for
`lost_after` seconds or, for managers this governor started, when their
process ends; its tasks go back to the set for re-dispatch.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import structlog

from qcg.pilotjob.api import protocol
from qcg.pilotjob.governor.partition_set import Member, MemberEvents, PartitionSet
from qcg.pilotjob.partition import wire
from qcg.pilotjob.partition.resources import Resources
from qcg.pilotjob.partition.slurm_resources import resources_from_dict
from qcg.pilotjob.partition.task import ResourceRequest, TaskSpec

log = structlog.get_logger("partitions")

DISPATCH_BATCH_DELAY = 0.002     # seconds dispatched tasks wait to travel with others

Send = Callable[[bytes, bytes], bool]


class RemotePartition:
    """A partition manager as a member of the set: sends are batched per loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Send, ident: bytes, resources: Resources,
                 totals: tuple[int, int, int], info: dict) -> None:
        self.loop = loop
        self._send = send
        self.ident = ident
        self.resources = resources
        self._totals = totals
        self.last_info = info
        self._pending: list[TaskSpec] = []

    def submit(self, tasks: list[TaskSpec]) -> None:
        if not self._pending:
            # a short wait gathers the refills of many task ends into one dispatch message
            self.loop.call_later(DISPATCH_BATCH_DELAY, self._flush)
        self._pending.extend(tasks)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._send(self.ident, protocol.encode({"type": "dispatch", **wire.encode_tasks(batch)}))

    def cancel(self, task_ids: list[str]) -> None:
        self._flush()       # a cancel must not overtake the dispatch of the same task
        self._send(self.ident, protocol.encode({"type": "cancel", "tasks": task_ids}))

    def retract(self, task_ids: list[str]) -> None:
        """Ask for these queued tasks back; the answer is a `retracted` message (those not started)."""
        self._flush()
        self._send(self.ident, protocol.encode({"type": "retract", "tasks": task_ids}))

    def never_fits(self, request: ResourceRequest) -> str | None:
        return self.resources.never_fits(request)

    def totals(self) -> tuple[int, int, int]:
        return self._totals

    def info(self) -> dict:
        return self.last_info


@dataclass(eq=False)
class _Peer:
    id: str
    ident: bytes
    member: Member
    events: MemberEvents
    port: RemotePartition
    last_seen: float
    host: str | None = None
    pid: int | None = None
    leaving: bool = False
    joined: asyncio.Event = field(default_factory=asyncio.Event)


def _who() -> dict[str, Any]:
    """Who the governor is: a manager on the same host watches this pid, so it stops within a heartbeat when
    the governor dies, not after the silence of LINK_LOST_AFTER, in which it would start tasks for nobody."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _running(pid: int) -> bool:
    """The process lives: not gone, nor a zombie its parent (maybe this governor) has yet to reap."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


class PartitionServer:
    def __init__(self, loop: asyncio.AbstractEventLoop, pset: PartitionSet, send: Send, *,
                 lost_after: float = wire.LINK_LOST_AFTER) -> None:
        self.loop = loop
        self.pset = pset
        self._send = send
        self.lost_after = lost_after
        self.peers: dict[bytes, _Peer] = {}
        self.by_id: dict[str, _Peer] = {}
        self.joined: dict[str, asyncio.Event] = {}
        self._closing = False
        self._hb_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._hb_task = self.loop.create_task(self._heartbeats())

    def expect(self, member_id: str) -> asyncio.Event:
        """An event set when the manager `member_id` registers (for the start-up threshold)."""
        return self.joined.setdefault(member_id, asyncio.Event())

    # -------------------------------------------------------------- messages
    def handle(self, ident: bytes, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        peer = self.peers.get(ident)
        if peer is not None:
            peer.last_seen = time.monotonic()
        try:
            if kind == "register":
                self._register(ident, msg)
            elif peer is None:
                # after shutdown() forgot every manager, their last heartbeats and events still arrive
                (log.debug if self._closing else log.warning)(
                    "partition message from an unregistered peer dropped", type=kind)
            elif kind == "events":
                self._events(peer, msg)
            elif kind == "hb":
                if isinstance(msg.get("info"), dict):
                    peer.port.last_info = msg["info"]
            elif kind == "update":
                self._update(peer, msg)
            elif kind == "leave":
                self._leave(peer)
            elif kind == "retracted":
                self.pset.retracted(peer.id, [str(t) for t in msg.get("tasks") or ()])
            elif kind == "returned":
                self.pset.returned(peer.id, [str(t) for t in msg.get("tasks") or ()])
            elif kind == "gone":
                # stopped at once: its unfinished tasks run elsewhere now, not after the heartbeat timeout
                self.lose(peer.id, f"the partition manager stopped ({str(msg.get('reason'))[:200]})")
            else:
                log.warning("unknown partition message dropped", type=kind, partition=peer.id)
        except (wire.WireError, ValueError, TypeError, KeyError) as exc:
            log.warning("malformed partition message dropped", type=kind, error=str(exc))

    def _register(self, ident: bytes, msg: dict[str, Any]) -> None:
        pid = msg.get("id")
        version = msg.get("v")
        if version != protocol.PROTOCOL_VERSION:
            return self._refuse(ident, f"protocol version {version!r} not supported "
                                       f"(this governor speaks {protocol.PROTOCOL_VERSION})")
        if not isinstance(pid, str) or not pid:
            return self._refuse(ident, "register without an id")
        if self._closing:
            return self._refuse(ident, "the governor is finishing")
        old = self.by_id.get(pid)
        if old is not None:
            if old.ident == ident:
                self._send(ident, protocol.encode({"type": "registered", "id": pid, **_who()}))
                return None
            live = self._live_holder(old)
            if live:
                return self._refuse(ident, f"partition manager id '{pid}' is in use by a running manager "
                                           f"({live}): give each manager its own --id")
            # the same manager again on a new connection (it restarted): the old one is gone
            self.lose(pid, "registered again from a new connection")
        try:
            resources = resources_from_dict(msg["resources"])
            totals = tuple(int(x) for x in msg["totals"])
            credit = int(msg["credit"])
        except (KeyError, TypeError, ValueError) as exc:
            return self._refuse(ident, f"register of '{pid}': bad resources: {exc}")
        info = msg.get("info") if isinstance(msg.get("info"), dict) else resources.info()
        port = RemotePartition(self.loop, self._send, ident, resources, totals, info)  # type: ignore[arg-type]
        tags = [str(t) for t in msg.get("tags") or []]
        try:
            member = self.pset.add_member(pid, port, credit, tags)
        except ValueError as exc:
            return self._refuse(ident, str(exc))
        peer = _Peer(pid, ident, member, MemberEvents(self.pset, member), port, time.monotonic(),
                     host=msg.get("host"), pid=msg.get("pid"))
        self.peers[ident] = peer
        self.by_id[pid] = peer
        self._send(ident, protocol.encode({"type": "registered", "id": pid, **_who()}))
        log.info("partition manager registered", partition=pid, host=peer.host, pid=peer.pid, credit=credit,
                 totals=totals, tags=tags)
        self.expect(pid).set()
        return None

    def _live_holder(self, old: _Peer) -> str:
        """Who holds the id, when it is alive ('' when it may have ended): a second manager under a live one's
        id would make the governor drop the first, whose tasks then ran twice, in the same aux dir. A restart
        must still be taken: a holder on this host is alive while its process is; a remote one while it was
        heard within half the silence that loses it (heartbeats come every second)."""
        if old.host == socket.gethostname() and isinstance(old.pid, int) and old.pid > 0:
            return f"pid {old.pid} on this host" if _running(old.pid) else ""
        silent = time.monotonic() - old.last_seen
        if silent < self.lost_after / 2:
            return f"host {old.host}, pid {old.pid}, heard {silent:.1f} s ago"
        return ""

    def _refuse(self, ident: bytes, reason: str) -> None:
        log.warning("partition manager refused", reason=reason)
        self._send(ident, protocol.encode({"type": "refused", "reason": reason}))

    def _events(self, peer: _Peer, msg: dict[str, Any]) -> None:
        if isinstance(msg.get("info"), dict):
            peer.port.last_info = msg["info"]
        sink = peer.events
        for raw in msg.get("started") or ():
            sink.task_started(wire.decode_started(raw))
        for raw in msg.get("finished") or ():
            sink.task_finished(wire.decode_finished(raw))

    def _update(self, peer: _Peer, msg: dict[str, Any]) -> None:
        if "resources" in msg:
            peer.port.resources = resources_from_dict(msg["resources"])
            peer.port._totals = tuple(int(x) for x in msg["totals"])  # type: ignore[assignment]
        self.pset.update_member(peer.id, int(msg.get("credit", peer.member.credit)))

    def _leave(self, peer: _Peer) -> None:
        if peer.leaving:
            return
        peer.leaving = True
        log.info("partition manager leaving", partition=peer.id, tasks=len(peer.member.inflight))

        def drained() -> None:
            self._forget(peer)
            self.pset.remove_member(peer.id, "left", left=True)
            self._send(peer.ident, protocol.encode({"type": "exit"}))

        self.pset.drain_member(peer.id, drained)

    # ---------------------------------------------------------------- losses
    def lose(self, member_id: str, reason: str) -> None:
        peer = self.by_id.get(member_id)
        if peer is None:
            return
        self._forget(peer)
        log.error("partition manager lost", partition=member_id, reason=reason)
        self.pset.remove_member(member_id, reason)
        # if it is still alive somewhere, it must stop running tasks that now run elsewhere
        self._send(peer.ident, protocol.encode({"type": "exit"}))

    def _forget(self, peer: _Peer) -> None:
        self.peers.pop(peer.ident, None)
        if self.by_id.get(peer.id) is peer:
            del self.by_id[peer.id]

    async def _heartbeats(self) -> None:
        hb = protocol.encode({"type": "hb"})
        while True:
            await asyncio.sleep(wire.LINK_HEARTBEAT)
            now = time.monotonic()
            for peer in list(self.peers.values()):
                silent = now - peer.last_seen
                if silent > self.lost_after:
                    self.lose(peer.id, f"no heartbeat for {silent:.1f}s")
                else:
                    self._send(peer.ident, hb)

    # -------------------------------------------------------------- shutdown
    async def shutdown(self) -> None:
        """Tell every manager to exit (the starter waits for the processes it started)."""
        self._closing = True
        if self._hb_task is not None:
            self._hb_task.cancel()
        bye = protocol.encode({"type": "exit"})
        for peer in list(self.peers.values()):
            self._send(peer.ident, bye)
        self.peers.clear()
        self.by_id.clear()
