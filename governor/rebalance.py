"""Which queued tasks to take back from a partition so that an idle one runs them.

A partition holds up to its credit of tasks, running or queued, so that it
never waits for the governor between two short tasks. The price: tasks
queued in one partition wait there even when another has idle cores, as when
a partition attaches after the work was handed out, or when one partition
drew the long tasks. The set then asks the busiest partition to give back
part of its queue (only tasks it has not started) and hands them to the idle
one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from qcg.pilotjob.governor.partition_set import Member


STALE_AFTER = 1.0      # seconds a task may wait in a member's queue before it counts as stuck there


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
