"""The partition's queue of runnable tasks and the scheduling pass.

Rules (reference 7.2 "Queue & scheduler"): tasks are considered in FIFO
order (``TaskSpec.seq``); each task that fits gets the largest allocation its
min/max allows and leaves the queue; a task that does not fit stays queued
and a later task may start in its place (no reservation, as the original);
a task whose minimum exceeds the partition's whole resources is refused at
``add`` with the reason (the caller marks it FAILED).

Cost: the queue is split by ``ResourceRequest`` ("shape"); each shape is a
FIFO (min-heap by seq). Whether a request fits depends only on its shape and
on the free resources, and during a pass resources only shrink, so once a
shape's head fails, every later task of that shape would fail too in this
pass. A pass therefore merges the shapes in seq order (a heap keyed by each
shape's head seq), allocates heads while they fit and drops a shape at its
first failure. This is exactly the naive full FIFO scan (same tasks, same
order, same allocations) but examines at most
``allocated + number of shapes`` tasks, whatever the queue length.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from qcg.pilotjob.partition.resources import Resources
from qcg.pilotjob.partition.task import Allocation, ResourceRequest, TaskSpec

__all__ = ["Scheduler"]


class _Shape:
    """FIFO of queued tasks with the same ResourceRequest (lazy deletion)."""

    __slots__ = ("request", "heap", "live")

    def __init__(self, request: ResourceRequest):
        self.request = request
        self.heap: list[tuple[int, int, TaskSpec]] = []   # (seq, tie, task)
        self.live = 0


class Scheduler:
    """Queue + scheduling pass over one :class:`Resources`."""

    def __init__(self, resources: Resources):
        self.resources = resources
        self._tasks: dict[str, TaskSpec] = {}
        self._shape_of: dict[str, _Shape] = {}
        self._shapes: dict[ResourceRequest, _Shape] = {}
        self._tie = itertools.count()
        self.examined = 0   # tasks looked at by schedule() since creation (operation counter for tests)

    # -- queue -----------------------------------------------------------------
    def add(self, task: TaskSpec) -> str | None:
        """Queue ``task``; return the reason instead if it can never fit here."""
        if task.task_id in self._tasks:
            raise ValueError(f"task {task.task_id!r} is already queued")
        reason = self.resources.never_fits(task.resources)
        if reason is not None:
            return reason
        shape = self._shapes.get(task.resources)
        if shape is None:
            shape = self._shapes[task.resources] = _Shape(task.resources)
        heapq.heappush(shape.heap, (task.seq, next(self._tie), task))
        shape.live += 1
        self._tasks[task.task_id] = task
        self._shape_of[task.task_id] = shape
        return None

    def drop_unfittable(self) -> list[tuple[TaskSpec, str]]:
        """Take out the queued tasks that can no longer fit (the resources shrank): each with the reason."""
        dropped: dict[str, tuple[TaskSpec, str]] = {}
        for shape in list(self._shapes.values()):
            reason = self.resources.never_fits(shape.request)
            if reason is not None:
                for _, _, task in shape.heap:
                    if self._tasks.get(task.task_id) is task:      # not a tombstone
                        dropped[task.task_id] = (task, reason)
        for tid in dropped:
            self.remove(tid)
        return sorted(dropped.values(), key=lambda d: d[0].seq)

    def remove(self, task_id: str) -> TaskSpec | None:
        """Take a queued task out (cancel, drain); None if it is not queued."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            return None
        shape = self._shape_of.pop(task_id)
        shape.live -= 1
        if shape.live == 0:
            del self._shapes[shape.request]
        elif len(shape.heap) > 2 * shape.live + 16:
            # too many tombstones: compact (amortised O(1) per removal)
            shape.heap = [e for e in shape.heap if self._tasks.get(e[2].task_id) is e[2]]
            heapq.heapify(shape.heap)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._tasks

    def queued_ids(self) -> list[str]:
        """Ids of queued tasks in FIFO (seq) order."""
        return [t.task_id for t in sorted(self._tasks.values(), key=lambda t: t.seq)]

    def _head(self, shape: _Shape) -> tuple[int, int, TaskSpec] | None:
        heap = shape.heap
        while heap:
            entry = heap[0]
            if self._tasks.get(entry[2].task_id) is entry[2]:
                return entry
            heapq.heappop(heap)        # tombstone of a removed task
        return None

    # -- scheduling pass -------------------------------------------------------
    def schedule(self) -> list[tuple[TaskSpec, Allocation]]:
        """Allocate every queued task that fits now, in FIFO order; return them."""
        return list(self._pass())

    def _pass(self) -> Iterator[tuple[TaskSpec, Allocation]]:
        res = self.resources
        if res.free_cores == 0 or not self._tasks:
            return
        order: list[tuple[int, int, _Shape]] = []
        for shape in self._shapes.values():
            head = self._head(shape)
            if head is not None:
                order.append((head[0], head[1], shape))
        heapq.heapify(order)
        while order and res.free_cores:
            _, _, shape = heapq.heappop(order)
            entry = self._head(shape)
            if entry is None:          # cannot happen: shapes are visited once per head
                continue
            task = entry[2]
            self.examined += 1
            alloc = res.allocate(shape.request)
            if alloc is None:
                continue               # shape dropped for the rest of this pass
            heapq.heappop(shape.heap)
            del self._tasks[task.task_id]
            del self._shape_of[task.task_id]
            shape.live -= 1
            yield task, alloc
            if shape.live == 0:
                del self._shapes[shape.request]
                continue
            nxt = self._head(shape)
            heapq.heappush(order, (nxt[0], nxt[1], shape))
