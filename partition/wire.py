"""Tasks and task events in wire form, for the governor <-> partition manager connection.

Plain lists (msgpack-friendly, positional, no key names repeated per task).
A dispatch batch sends each distinct `Execution` once: the iterations of a
sweep without placeholders share one object, so 1 000 of them cost one
execution plus 1 000 short task rows.
"""

from __future__ import annotations

from typing import Any

import msgpack

from qcg.pilotjob.api.jobdesc import EXECUTION_FIELDS, Execution, execution_from_values
from qcg.pilotjob.partition.task import Allocation, ResourceRequest, TaskFinished, TaskSpec, TaskStarted


# the link's timing, the same at both ends
LINK_HEARTBEAT = 1.0     # seconds between heartbeats, both directions
LINK_LOST_AFTER = 6.0    # seconds of silence before a manager (or the governor, seen from a manager) is lost


class WireError(ValueError):
    """A message field has the wrong shape; the message names it."""


def encode_tasks(tasks: list[TaskSpec]) -> dict[str, Any]:
    """`{"execs": [...], "tasks": [...]}` with every distinct execution once."""
    index: dict[int, int] = {}
    by_value: dict[bytes, int] = {}
    execs: list[list[Any]] = []
    rows: list[list[Any]] = []
    for t in tasks:
        ex = t.execution
        pos = index.get(id(ex))
        if pos is None:
            # separate jobs with the same execution (a hand-written sweep) still send it once
            values = _execution_values(ex)
            key = _value_key(values)
            pos = by_value.get(key)
            if pos is None:
                pos = by_value[key] = len(execs)
                execs.append(values)
            index[id(ex)] = pos
        r = t.resources
        rows.append([t.task_id, t.job_name, t.iteration, pos, [r.cores_min, r.cores_max, r.nodes_min, r.nodes_max],
                     t.walltime, t.seq, t.templated, t.attributes or None])
    return {"execs": execs, "tasks": rows}


def decode_tasks(msg: dict[str, Any]) -> list[TaskSpec]:
    try:
        execs = [execution_from_values(v) for v in msg["execs"]]
        requests: dict[tuple, ResourceRequest] = {}
        tasks = []
        for tid, job, it, pos, res, wt, seq, templated, attrs in msg["tasks"]:
            key = tuple(res)
            req = requests.get(key)
            if req is None:
                req = requests[key] = ResourceRequest(*key)
            tasks.append(TaskSpec(tid, job, it, execs[pos], req, wt, seq, templated, attrs or {}))
        return tasks
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise WireError(f"malformed dispatch: {exc!r}") from None


def _execution_values(ex: Execution) -> list[Any]:
    values = [getattr(ex, name) for name in EXECUTION_FIELDS]
    return [list(v) if isinstance(v, tuple) else v for v in values]


def _value_key(values: list[Any]) -> bytes:
    return msgpack.packb(values, use_bin_type=True)


def encode_allocation(a: Allocation | None) -> str | list | None:
    """The allocation as the reports show it (`node[0:1],node2[4]`): one short string per event.

    A node name that this text cannot carry (one with `[`, `]` or `,`) sends
    the allocation as a list of `[node, [cores]]` pairs instead.
    """
    if a is None:
        return None
    text = _TEXTS.get(a)
    if text is None:
        if any(_UNSAFE.intersection(n) for n, _ in a.nodes):
            return [[n, list(c)] for n, c in a.nodes]
        text = _remember(_TEXTS, a, a.describe())
    return text


_UNSAFE = frozenset("[],")
_CACHE_LIMIT = 65536
_TEXTS: dict[Allocation, str] = {}           # encoded allocations: a partition hands the same cores out again and again
_BY_TEXT: dict[str, Allocation] = {}         # decoded allocations, shared: equal ones recur task after task
_BY_PAIRS: dict[tuple, Allocation] = {}


def decode_allocation(v: str | list | None) -> Allocation | None:
    """The allocation of a wire event; equal allocations decode to one shared object.

    Sharing saves an object per event, and the governor's allocation-text
    cache (keyed by value) then compares keys by identity.
    """
    if v is None:
        return None
    if type(v) is str:
        hit = _BY_TEXT.get(v)
        if hit is None:
            hit = _remember(_BY_TEXT, v, _parse_text(v))
        return hit
    if len(v) == 1:      # most tasks run on one node
        n, c = v[0]
        key: tuple = ((n, tuple(c)),)
    else:
        key = tuple([(n, tuple(c)) for n, c in v])
    hit = _BY_PAIRS.get(key)
    if hit is None:
        # checked once per distinct allocation: a later equal key (1.0 == 1) gets this int-only object
        hit = _remember(_BY_PAIRS, key, _checked(key, v))
    return hit


def _parse_text(text: str) -> Allocation:
    if not text.endswith("]"):
        raise ValueError(f"allocation {text!r}: not of the form node[core:core],node[core]")
    pairs = []
    for part in text[:-1].split("],"):
        node, bracket, cores = part.partition("[")
        if not bracket or not node or _UNSAFE.intersection(node) or _UNSAFE.intersection(cores):
            raise ValueError(f"allocation {text!r}: not of the form node[core:core],node[core]")
        pairs.append((node, tuple(int(c) for c in cores.split(":"))))
    return _checked(tuple(pairs), text)


def _checked(key: tuple, v: Any) -> Allocation:
    for node, cores in key:
        if type(node) is not str or not cores or any(type(c) is not int or c < 0 for c in cores):
            raise ValueError(f"allocation {v!r}: node names must be strings and core ids non-negative integers")
    return Allocation(key)


def _remember(cache: dict, key: Any, value: Any) -> Any:
    """`cache[key] = value`, the cache emptied first when it is full (a long run sees few distinct allocations)."""
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def encode_started(ev: TaskStarted) -> list[Any]:
    return [ev.task_id, encode_allocation(ev.allocation), ev.wd, ev.scheduled_at, ev.started_at, ev.pid]


def decode_started(v: list[Any]) -> TaskStarted:
    try:
        tid, alloc, wd, scheduled, started, pid = v
        return TaskStarted(tid, decode_allocation(alloc), wd, scheduled, started, pid)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise WireError(f"malformed 'started' event: {exc!r}") from None


def encode_finished(ev: TaskFinished, start_sent: bool = False) -> list[Any]:
    """`start_sent`: the task's `started` event went out already, so its allocation, wd and start time are
    not sent again (the receiver keeps them from that event)."""
    if start_sent:
        return [ev.task_id, ev.state, ev.exit_code, ev.message, None, None, None, ev.finished_at, ev.requeue]
    return [ev.task_id, ev.state, ev.exit_code, ev.message, encode_allocation(ev.allocation), ev.wd,
            ev.started_at, ev.finished_at, ev.requeue]


def decode_finished(v: list[Any]) -> TaskFinished:
    try:
        tid, state, code, message, alloc, wd, started, finished, requeue = v
        if state not in ("SUCCEED", "FAILED", "CANCELED"):
            raise ValueError(f"state {state!r}")
        return TaskFinished(tid, state, code, message, decode_allocation(alloc), wd, started, finished,
                            bool(requeue))
    except (TypeError, ValueError) as exc:
        raise WireError(f"malformed 'finished' event: {exc!r}") from None
