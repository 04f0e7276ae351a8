"""The governor's view of many partitions: one `PartitionPort` that spreads tasks over its members.

Members are in-process partitions or proxies of remote partition managers;
both take `submit`/`cancel` and answer `never_fits`/`totals`/`info`. Each
member has a credit (how many tasks it may hold, running or queued); the set
never sends a member more than its credit, so a partition's backlog stays
short and no partition idles while another has tasks waiting. The governor
sees the sum of the credits as its own `queue_limit`, so tasks the set cannot
place yet stay in the governor's heap, not here.

Placement is round-robin over members with room that can fit the task. A
task no member can ever fit fails at once. A member with idle cores gets
part of the queue of the busiest member (tasks not started there, given
back on request: `governor/rebalance.py`). When a member is lost, every task
it held is dispatched again to the others: delivery is at-least-once (a task
that had started may run twice), up to `MAX_MOVES` times per task.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import structlog

from qcg.pilotjob.governor.rebalance import Rebalancing
from qcg.pilotjob.partition.task import ResourceRequest, TaskFinished, TaskSpec, TaskStarted

log = structlog.get_logger("dispatch")

MAX_MOVES = 3            # re-dispatches of one task after losing its partition, then FAILED


class MemberPort(Protocol):
    """One partition as the set drives it."""

    def submit(self, tasks: list[TaskSpec]) -> None: ...
    def cancel(self, task_ids: list[str]) -> None: ...
    def never_fits(self, request: ResourceRequest) -> str | None: ...
    def totals(self) -> tuple[int, int, int]: ...
    def info(self) -> dict: ...


class SetEvents(Protocol):
    def task_started(self, ev: TaskStarted) -> None: ...
    def task_finished(self, ev: TaskFinished) -> None: ...
    def task_redispatched(self, task_id: str, reason: str) -> None: ...
    def capacity_changed(self) -> None: ...


@dataclass(eq=False)
class Member:
    id: str
    port: MemberPort
    credit: int
    tags: list[str] = field(default_factory=list)
    inflight: dict[str, float] = field(default_factory=dict)    # task id -> when it was handed over (loop time)
    running: set[str] = field(default_factory=set)       # of `inflight`: started there
    retracting: set[str] = field(default_factory=set)    # the give-back request waiting for its answer
    quiet_until: float = 0.0           # gave nothing back last time: not asked again before this
    draining: bool = False
    sent: int = 0                      # tasks handed to it, for the status report
    on_drained: Callable[[], None] | None = None

    @property
    def room(self) -> int:
        return 0 if self.draining else self.credit - len(self.inflight)


class MemberEvents:
    """The events sink of one member: keeps the set's bookkeeping, then tells the governor."""

    __slots__ = ("_set", "_member")

    def __init__(self, pset: "PartitionSet", member: Member) -> None:
        self._set = pset
        self._member = member

    def task_started(self, ev: TaskStarted) -> None:
        if ev.task_id in self._member.inflight:
            self._member.running.add(ev.task_id)
            ev.partition = self._member.id
            self._set.events.task_started(ev)

    def task_finished(self, ev: TaskFinished) -> None:
        self._set._finished(self._member, ev)


class PartitionSet(Rebalancing):
    def __init__(self, loop: asyncio.AbstractEventLoop, *, wait_for_members: bool = False) -> None:
        self.loop = loop
        self.events: SetEvents = None  # type: ignore[assignment]   # the governor, set by the service
        self.members: dict[str, Member] = {}
        self.wait_for_members = wait_for_members    # --governor: partitions may attach at any time
        self._where: dict[str, Member] = {}
        self._specs: dict[str, TaskSpec] = {}
        self._backlog: deque[TaskSpec] = deque()
        self._moves: dict[str, int] = {}
        self._canceling: set[str] = set()     # dispatched tasks asked to stop: never dispatched again
        self._drain_pending = False
        self._rr = 0
        self._init_rebalancing()
        self._fits: dict[tuple[str, ResourceRequest], bool] = {}
        self.lost: list[str] = []
        self.left: list[str] = []           # members that left in order (drained, told to exit)

    # ------------------------------------------------------------ membership
    def add_member(self, member_id: str, port: MemberPort, credit: int, tags: list[str] | None = None) -> Member:
        if member_id in self.members:
            raise ValueError(f"a partition with id '{member_id}' is already registered")
        member = Member(member_id, port, max(1, credit), list(tags or []))
        self.members[member_id] = member
        log.info("partition joined", partition=member_id, credit=member.credit, tags=member.tags,
                 resources=port.info())
        self._capacity_changed()
        return member

    def update_member(self, member_id: str, credit: int) -> None:
        member = self.members.get(member_id)
        if member is not None:
            member.credit = max(1, credit)
            self._fits = {k: v for k, v in self._fits.items() if k[0] != member_id}
            self._capacity_changed()

    def drain_member(self, member_id: str, on_drained: Callable[[], None]) -> None:
        """No more tasks for it; `on_drained` once its last task has ended."""
        member = self.members.get(member_id)
        if member is None:
            return
        member.draining = True
        member.on_drained = on_drained
        log.info("partition draining", partition=member_id, tasks=len(member.inflight))
        self._maybe_drained(member)

    def remove_member(self, member_id: str, reason: str, *, left: bool = False) -> None:
        """The member is gone: lost, its tasks dispatched again to the others; or `left` in order, drained
        (a graceful leave was listed among the lost partitions and logged as an error)."""
        member = self.members.pop(member_id, None)
        if member is None:
            return
        self._fits = {k: v for k, v in self._fits.items() if k[0] != member_id}
        (self.left if left else self.lost).append(member_id)
        moved: list[TaskSpec] = []
        for tid in sorted(member.inflight, key=lambda t: self._specs[t].seq):
            spec = self._specs.pop(tid)
            self._where.pop(tid, None)
            if tid in self._canceling:
                self._canceling.discard(tid)
                self._report_later(TaskFinished(tid, "CANCELED", message=f"canceled by user; partition "
                                                                         f"'{member_id}' lost ({reason})"))
                continue
            n = self._moves.get(tid, 0) + 1
            self._moves[tid] = n
            why = f"partition '{member_id}' lost ({reason})"
            if n > MAX_MOVES:
                self._report_later(TaskFinished(tid, "FAILED", message=f"{why}; dispatched {n} times, giving up"))
            else:
                self.events.task_redispatched(tid, f"{why}; dispatched again")
                moved.append(spec)
        member.inflight.clear()
        member.running.clear()
        member.retracting.clear()
        self._retract_to.pop(member_id, None)
        if left and not moved:
            log.info("partition left", partition=member_id)
        else:
            log.error("partition removed", partition=member_id, reason=reason, redispatched=len(moved))
        self._backlog.extendleft(reversed(moved))
        self._capacity_changed()

    # -------------------------------------------------------- PartitionPort
    @property
    def queue_limit(self) -> int:
        if not self.members and not self.wait_for_members:
            # every partition is gone for good: take all tasks, so that they fail here instead of waiting
            return 1 << 30
        return sum(m.credit for m in self.members.values() if not m.draining)

    def totals(self) -> tuple[int, int, int]:
        """The largest member's totals: one task always runs inside one partition (iteration sizing)."""
        best = (0, 0, 0)
        for m in self.members.values():
            t = m.port.totals()
            if t > best:
                best = t
        return best

    @property
    def resources(self) -> Any:
        """The largest member's resources: what a parent governor checks a task's fit against (nesting)."""
        best = max(self.members.values(), key=lambda m: m.port.totals(), default=None)
        return None if best is None else best.port.resources  # type: ignore[attr-defined]

    def info(self) -> dict:
        keys = ("total_nodes", "total_cores", "used_cores", "free_cores")
        total = dict.fromkeys(keys, 0)
        for m in self.members.values():
            part = m.port.info()
            for k in keys:
                total[k] += int(part.get(k, 0))
        return total

    def never_fits(self, request: ResourceRequest) -> str | None:
        if not self.members:
            return None if self.wait_for_members else "no partition is available"
        reasons = []
        for m in self.members.values():
            why = m.port.never_fits(request)
            if why is None:
                return None
            reasons.append(f"{m.id}: {why}")
        return "fits no partition (" + "; ".join(reasons) + ")"

    def submit(self, tasks: list[TaskSpec]) -> None:
        self._backlog.extend(tasks)
        self._drain()

    def cancel(self, task_ids: list[str]) -> None:
        per_member: dict[str, list[str]] = {}
        for tid in task_ids:
            member = self._where.get(tid)
            if member is not None:
                self._canceling.add(tid)
                per_member.setdefault(member.id, []).append(tid)
                continue
            for spec in self._backlog:
                if spec.task_id == tid:
                    self._backlog.remove(spec)
                    self._report_later(TaskFinished(tid, "CANCELED", message="canceled by user"))
                    break
        for mid, ids in per_member.items():
            self.members[mid].port.cancel(ids)

    def status(self) -> list[dict[str, Any]]:
        return [{"id": m.id, "tags": m.tags, "credit": m.credit, "tasks": len(m.inflight), "sent": m.sent,
                 "draining": m.draining, **m.port.info()} for m in self.members.values()]

    # ------------------------------------------------------------- dispatch
    def _request_drain(self) -> None:
        if not self._drain_pending and self._backlog:
            self._drain_pending = True
            self.loop.call_soon(self._drain_soon)

    def _drain_soon(self) -> None:
        self._drain_pending = False
        self._drain()

    def _drain(self) -> None:
        """Hand backlog tasks to members with room, round-robin; skip those that fit no free member."""
        backlog = self._backlog
        if not backlog:
            return
        members = [m for m in self.members.values() if m.room > 0]
        if not members:
            self._fail_unplaceable()
            return
        batches: dict[str, list[TaskSpec]] = {}
        skipped: list[TaskSpec] = []
        while backlog and members:
            spec = backlog.popleft()
            member = self._pick(members, spec.resources)
            if member is None:
                skipped.append(spec)
                continue
            self._place(member, spec, batches)
            if member.room <= 0:
                members.remove(member)
        backlog.extendleft(reversed(skipped))
        for mid, batch in batches.items():
            self.members[mid].port.submit(batch)
        self._fail_unplaceable()

    def _place(self, member: Member, spec: TaskSpec, batches: dict[str, list[TaskSpec]]) -> None:
        tid = spec.task_id
        member.inflight[tid] = self.loop.time()
        member.sent += 1
        self._where[tid] = member
        self._specs[tid] = spec
        batches.setdefault(member.id, []).append(spec)

    def retract(self, task_ids: list[str]) -> list[str]:
        """As a member of a parent governor (nesting): give back the tasks not handed to a partition yet."""
        wanted = set(task_ids)
        taken = [spec.task_id for spec in self._backlog if spec.task_id in wanted]
        if taken:
            self._backlog = deque(spec for spec in self._backlog if spec.task_id not in wanted)
        return taken

    def _fits_member(self, member: Member, request: ResourceRequest) -> bool:
        key = (member.id, request)
        fits = self._fits.get(key)
        if fits is None:
            fits = self._fits[key] = member.port.never_fits(request) is None
        return fits

    def _pick(self, members: list[Member], request: ResourceRequest) -> Member | None:
        n = len(members)
        for k in range(n):
            m = members[(self._rr + k) % n]
            if self._fits_member(m, request):
                self._rr = (self._rr + k + 1) % max(1, n)
                return m
        return None

    def _fail_unplaceable(self) -> None:
        """Backlog tasks that no remaining member can ever run fail (unless partitions may still attach)."""
        if self.wait_for_members or not self._backlog:
            return
        keep: deque[TaskSpec] = deque()
        for spec in self._backlog:
            why = self.never_fits(spec.resources)
            if why is None:
                keep.append(spec)
            else:
                self._report_later(TaskFinished(spec.task_id, "FAILED", message=why))
        self._backlog = keep

    # --------------------------------------------------------------- events
    def _finished(self, member: Member, ev: TaskFinished) -> None:
        tid = ev.task_id
        if tid not in member.inflight:
            return            # a late word from a task already moved elsewhere
        member.inflight.pop(tid, None)
        member.running.discard(tid)
        self._where.pop(tid, None)
        self._specs.pop(tid, None)
        if self._moves:                 # both almost always empty
            self._moves.pop(tid, None)
        if self._canceling:
            self._canceling.discard(tid)
        ev.partition = member.id
        self.events.task_finished(ev)
        if member.draining:
            self._maybe_drained(member)
        self._request_drain()
        if len(member.inflight) == len(member.running):
            # nothing queued there any more: its next free core may idle while others hold queues
            self._request_rebalance()

    def _maybe_drained(self, member: Member) -> None:
        if member.draining and not member.inflight and member.on_drained is not None:
            callback, member.on_drained = member.on_drained, None
            self.loop.call_soon(callback)

    def _report_later(self, ev: TaskFinished) -> None:
        self.loop.call_soon(self.events.task_finished, ev)

    def _capacity_changed(self) -> None:
        self._request_drain()
        self._request_rebalance()
        if self.events is not None:
            self.loop.call_soon(self.events.capacity_changed)
