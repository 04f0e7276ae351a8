"""Moving queued tasks from a busy partition to an idle one: which tasks (`pick`), and how (`Rebalancing`).

A partition holds up to its credit of tasks, running or queued, so that it
never waits for the governor between two short tasks. The price: tasks
queued in one partition wait there even when another has idle cores, as when
a partition attaches after the work was handed out, or when one partition
drew the long tasks. The set then asks the busiest partition to give back
part of its queue (only tasks it has not started) and hands them to the idle
one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Callable, Iterable

import structlog

from qcg.pilotjob.partition.task import ResourceRequest, TaskFinished, TaskSpec

if TYPE_CHECKING:
    from qcg.pilotjob.governor.partition_set import Member

log = structlog.get_logger("dispatch")

STALE_AFTER = 1.0      # seconds a task may wait in a member's queue before it counts as stuck there
REBALANCE_DELAY = 0.05   # seconds between two looks for an idle member next to a busy one
REBALANCE_QUIET = 1.0    # seconds a member that gave nothing back is not asked again


def _least_cores(request: ResourceRequest, node_cores: int) -> int:
    """The cores a task needs at least; a whole node counts as the member's largest node (`node_cores`)."""
    if request.nodes_min is None:
        return request.cores_min or 1
    return (request.cores_min or node_cores) * request.nodes_min


def idle_cores(member: "Member", demand: Callable[[str, int], int]) -> int:
    """Free cores not already promised to tasks queued with it (its last reported numbers); below zero,
    the cores its queue lacks there."""
    node_cores = member.port.totals()[2]
    queued = sum(demand(t, node_cores) for t in member.inflight if t not in member.running)
    return int(member.port.info().get("free_cores", 0)) - queued


def _excess(member: "Member", demand: Callable[[str, int], int], now: float) -> int:
    """How many of its queued tasks cannot start there now, as far as the set can tell: those its free
    cores lack, or at least those waiting there longer than STALE_AFTER (the free cores may be on the wrong
    nodes, too few on any one node for the task)."""
    stale = sum(1 for t, since in member.inflight.items() if t not in member.running and now - since > STALE_AFTER)
    return max(-idle_cores(member, demand), stale)


def may_move_later(members: Iterable["Member"], demand: Callable[[str, int], int]) -> bool:
    """Some member has queued tasks and another idle cores: a task may turn out stuck after STALE_AFTER."""
    members = list(members)
    queued = [m for m in members if len(m.inflight) > len(m.running) and hasattr(m.port, "retract")]
    return bool(queued) and any(m.room > 0 and not m.draining and (len(queued) > 1 or m is not queued[0])
                                and idle_cores(m, demand) > 0 for m in members)


def pick(members: Iterable["Member"], seq_of: Callable[[str], int], fits: Callable[["Member", str], bool],
         demand: Callable[[str, int], int], now: float) -> tuple["Member", "Member", list[str]] | None:
    """(donor, target, task ids to take back), or None when nothing is worth moving.

    The donor is the member with the most queued tasks that cannot start there now (`_excess`; `demand`:
    the cores a task needs at least, given the member's largest node), with no give-back request
    unanswered and no empty answer lately: tasks just handed to a member with free cores for them are on
    their way to start there, and moving them would only cost round trips. The target is the member that
    can take tasks with the most idle cores. Half the donor's queue moves, at most as many tasks as the
    target has idle cores and the donor has in excess, only tasks the target can run, the newest first:
    the oldest stay where they will start next.
    """
    members = list(members)
    donor, most_excess, most_queued = None, 0, 0
    for m in members:
        queued = len(m.inflight) - len(m.running)
        if queued and not m.retracting and m.quiet_until <= now and hasattr(m.port, "retract"):
            excess = _excess(m, demand, now)
            if excess > most_excess:
                donor, most_excess, most_queued = m, excess, queued
    if donor is None:
        return None
    target, most_idle = None, 0
    for m in members:
        # a full member is no target: the common case costs no look at its numbers
        if m is not donor and not m.draining and m.room > 0:
            idle = idle_cores(m, demand)
            if idle > most_idle:
                target, most_idle = m, idle
    if target is None:
        return None
    count = min(most_idle, most_excess, max(1, most_queued // 2))
    queued_ids = sorted((t for t in donor.inflight if t not in donor.running and fits(target, t)), key=seq_of)
    if not queued_ids:
        return None
    return donor, target, queued_ids[-count:]


class Rebalancing:
    """The `PartitionSet`'s side of moving tasks: asking the donor `pick` chose, placing what it gave back.

    A mixin of `PartitionSet`, whose bookkeeping (members, the specs of the
    tasks it handed out, its backlog) both sides share; these are the
    attributes and methods of the set it uses.
    """

    loop: asyncio.AbstractEventLoop
    members: dict[str, "Member"]
    _where: dict[str, "Member"]
    _specs: dict[str, TaskSpec]
    _backlog: deque[TaskSpec]
    _canceling: set[str]
    _fits_member: Callable[["Member", ResourceRequest], bool]
    _place: Callable[["Member", TaskSpec, dict[str, list[TaskSpec]]], None]
    _report_later: Callable[[TaskFinished], None]
    _request_drain: Callable[[], None]
    _maybe_drained: Callable[["Member"], None]
    _fail_unplaceable: Callable[[], None]

    def _init_rebalancing(self) -> None:
        self._rebalance_pending = False
        self._relook_pending = False
        self._retract_to: dict[str, str] = {}  # donor id -> the member its given-back tasks are for

    def _request_rebalance(self) -> None:
        if not self._rebalance_pending and len(self.members) > 1:
            self._rebalance_pending = True
            # a look over every member, at most every REBALANCE_DELAY: runs of short dependent tasks empty
            # some queue at almost every end, and tasks worth moving last longer than that
            self.loop.call_later(REBALANCE_DELAY, self._rebalance)

    def _rebalance(self) -> None:
        """Ask the busiest member to give back part of its queue for a member with idle cores."""
        self._rebalance_pending = False
        if self._backlog:
            return              # placed first, by `_drain`
        demand = self._demand
        plan = pick(self.members.values(), lambda tid: self._specs[tid].seq,
                    lambda member, tid: self._fits_member(member, self._specs[tid].resources),
                    demand, self.loop.time())
        if plan is None:
            if not self._relook_pending and may_move_later(self.members.values(), demand):
                # queued tasks that may yet turn out stuck (STALE_AFTER) next to idle cores: look again then
                self._relook_pending = True
                self.loop.call_later(STALE_AFTER, self._relook)
            return
        donor, target, task_ids = plan
        donor.retracting.update(task_ids)
        self._retract_to[donor.id] = target.id
        log.info("queued tasks asked back", partition=donor.id, target=target.id, tasks=len(task_ids))
        donor.port.retract(task_ids)  # type: ignore[attr-defined]

    def _relook(self) -> None:
        self._relook_pending = False
        self._request_rebalance()

    def _demand(self, tid: str, node_cores: int) -> int:
        return _least_cores(self._specs[tid].resources, node_cores)

    def returned(self, member_id: str, task_ids: list[str]) -> None:
        """The member gave back queued tasks it can no longer run (it lost nodes; its `update` came first):
        they go to the other members, or fail when none can run them."""
        member = self.members.get(member_id)
        if member is None:
            return
        back = self._take_back(member, task_ids, None)
        log.warning("queued tasks given back", partition=member_id, tasks=len(back))
        self._backlog.extendleft(reversed(back))
        self._fail_unplaceable()
        self._request_drain()
        self._maybe_drained(member)

    def _take_back(self, member: "Member", task_ids: list[str], asked: set[str] | None) -> list[TaskSpec]:
        """Those of `task_ids` still queued with `member` (and `asked` for), out of its books, oldest first;
        one canceled meanwhile ends CANCELED instead."""
        back: list[TaskSpec] = []
        for tid in task_ids:
            if (asked is not None and tid not in asked) or tid not in member.inflight or tid in member.running:
                continue
            member.inflight.pop(tid, None)
            self._where.pop(tid, None)
            spec = self._specs.pop(tid)
            if tid in self._canceling:
                self._canceling.discard(tid)
                self._report_later(TaskFinished(tid, "CANCELED", message="canceled by user"))
            else:
                back.append(spec)
        back.sort(key=lambda spec: spec.seq)
        return back

    def retracted(self, member_id: str, task_ids: list[str]) -> None:
        """The member gave back these tasks (not started there); the others it was asked for have started."""
        donor = self.members.get(member_id)
        if donor is None:
            return
        target = self.members.get(self._retract_to.pop(member_id, ""))
        asked, donor.retracting = donor.retracting, set()
        back = self._take_back(donor, task_ids, asked)
        if not back:
            # nothing was still queued there (a nested governor keeps its queue with its own members)
            donor.quiet_until = self.loop.time() + REBALANCE_QUIET
        batch: dict[str, list[TaskSpec]] = {}
        rest: list[TaskSpec] = []
        for spec in back:
            if target is not None and target.room > 0 and self._fits_member(target, spec.resources):
                self._place(target, spec, batch)
            else:
                rest.append(spec)
        if batch and target is not None:
            target.port.submit(batch[target.id])
            self._request_rebalance()       # more may move on the next look; only after progress
        self._backlog.extendleft(reversed(rest))
        self._request_drain()
        self._maybe_drained(donor)
