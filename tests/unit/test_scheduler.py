"""Partition scheduler: FIFO with backfill, never-fits refusal, cost per pass.

Reference 7.2 "Queue & scheduler": jobs are processed FIFO; each feasible
job gets the maximum possible amount of its requested resources; a job whose
minimum exceeds the total resources fails; a job that does not fit now stays
QUEUED and the procedure continues with the next job.
"""

from __future__ import annotations

import random

import pytest

from qcg.pilotjob.partition.local_nodes import local_resources
from qcg.pilotjob.partition.scheduler import Scheduler
from qcg.pilotjob.partition.task import ResourceRequest as R, TaskSpec


def task(tid, req=R(), seq=0):
    return TaskSpec(task_id=tid, job_name=tid.split(":")[0], iteration=None, execution=None,
                    resources=req, seq=seq)


def scheduled(sched):
    return [(t.task_id, a.describe()) for t, a in sched.schedule()]


def test_fifo_order_and_backfill():
    """7.2: FIFO; a task that does not fit stays queued and later ones may start."""
    sched = Scheduler(local_resources("a:4"))
    assert sched.add(task("big", R(3, 3), seq=1)) is None
    assert sched.add(task("huge", R(4, 4), seq=2)) is None
    assert sched.add(task("s1", R(), seq=3)) is None
    assert sched.add(task("s2", R(), seq=4)) is None
    assert scheduled(sched) == [("big", "a[0:1:2]"), ("s1", "a[3]")]
    assert sched.queued_ids() == ["huge", "s2"]
    assert len(sched) == 2


def test_interleaves_shapes_by_seq_not_shape_by_shape():
    """FIFO across shapes: seq order decides, even when shapes alternate."""
    res = local_resources("3")
    sched = Scheduler(res)
    sched.add(task("t1", R(), seq=1))
    sched.add(task("t2", R(2, 2), seq=2))
    sched.add(task("t3", R(), seq=3))
    # naive FIFO: t1 (1 core), t2 (2 cores) -> full; t3 waits
    assert [t for t, _ in scheduled(sched)] == ["t1", "t2"]
    assert sched.queued_ids() == ["t3"]


def test_min_max_resolved_to_largest_possible():
    """7.2: the maximum possible amount of the requested range."""
    res = local_resources("a:4,b:4")
    sched = Scheduler(res)
    sched.add(task("one", R(), seq=1))
    sched.add(task("range", R(2, 16), seq=2))
    out = scheduled(sched)
    assert out == [("one", "a[0]"), ("range", "a[1:2:3],b[0:1:2:3]")]


def test_never_fits_is_refused_with_reason():
    """7.2: minimum above the total resources -> not queued, reason returned."""
    sched = Scheduler(local_resources("a:4,b:2"))
    assert sched.add(task("x", R(8, 8))) == "requires 8 cores but the partition has 6 in total"
    assert sched.add(task("y", R(3, 3, 2, 2))) == "requires 2 nodes with 3 cores each; only 1 node has that many"
    assert len(sched) == 0
    with pytest.raises(ValueError):
        sched.add(task("z")) or sched.add(task("z"))


def test_remove():
    sched = Scheduler(local_resources("1"))
    for i in range(5):
        sched.add(task(f"t{i}", seq=i))
    assert sched.remove("t0").task_id == "t0"
    assert sched.remove("t0") is None
    assert sched.remove("nope") is None
    assert scheduled(sched) == [("t1", "n0[0]")]
    assert sched.queued_ids() == ["t2", "t3", "t4"]
    for tid in ("t2", "t3", "t4"):
        sched.remove(tid)
    assert len(sched) == 0 and sched.schedule() == []
    # a removed id may be queued again
    assert sched.add(task("t3", seq=9)) is None
    assert sched.queued_ids() == ["t3"]


# -- equivalence with a naive full-scan FIFO scheduler --------------------------

class NaiveScheduler:
    """The reference rules literally: scan the whole queue in seq order each pass."""

    def __init__(self, resources):
        self.resources = resources
        self.queue = []          # (seq, insertion, task)
        self.n = 0

    def add(self, t):
        reason = self.resources.never_fits(t.resources)
        if reason is None:
            self.queue.append((t.seq, self.n, t))
            self.n += 1
        return reason

    def remove(self, tid):
        for i, e in enumerate(self.queue):
            if e[2].task_id == tid:
                return self.queue.pop(i)[2]
        return None

    def schedule(self):
        out, keep = [], []
        for e in sorted(self.queue, key=lambda e: (e[0], e[1])):
            alloc = self.resources.allocate(e[2].resources)
            if alloc is None:
                keep.append(e)
            else:
                out.append((e[2], alloc))
        self.queue = keep
        return out


REQUESTS = [R(), R(), R(), R(2, 2), R(3, 3), R(1, 4), R(2, None), R(None, None, 1, 1),
            R(2, 2, 2, 2), R(1, 2, 1, None), R(9, 9), R(5, 5, 1, 1)]


@pytest.mark.parametrize("seed", range(30))
def test_equivalent_to_naive_fifo_randomized(seed):
    rnd = random.Random(seed)
    spec = ",".join(str(rnd.randint(1, 5)) for _ in range(rnd.randint(1, 4)))
    fast, naive = Scheduler(local_resources(spec)), NaiveScheduler(local_resources(spec))
    running = []
    seq = 0
    for step in range(300):
        op = rnd.random()
        if op < 0.45:
            seq += 1
            # sometimes out of order (a re-dispatched older task)
            s = seq if rnd.random() < 0.9 else rnd.randint(0, seq)
            t = task(f"t{step}", rnd.choice(REQUESTS), seq=s)
            assert fast.add(t) == naive.add(t)
        elif op < 0.55 and len(fast):
            tid = rnd.choice(fast.queued_ids())
            assert fast.remove(tid) is naive.remove(tid)
        elif op < 0.8:
            a, b = fast.schedule(), naive.schedule()
            assert [(t.task_id, x) for t, x in a] == [(t.task_id, x) for t, x in b], step
            running += [x for _, x in a]
        elif running:
            alloc = running.pop(rnd.randrange(len(running)))
            fast.resources.release(alloc)
            naive.resources.release(alloc)
        assert len(fast) == len(naive.queue)
        assert fast.resources.info() == naive.resources.info()
    assert fast.queued_ids() == [e[2].task_id for e in sorted(naive.queue, key=lambda e: (e[0], e[1]))]


# -- cost per pass independent of the queue length ----------------------------

def test_pass_cost_independent_of_queue_length():
    """100 000 queued single-core tasks and 1 free core: a pass examines O(1) tasks."""
    res = local_resources("a:4")
    sched = Scheduler(res)
    for i in range(100_000):
        sched.add(task(f"t{i}", seq=i))
    first = sched.schedule()
    assert len(first) == 4 and sched.examined <= 5
    res.release(first[0][1])
    before = sched.examined
    again = sched.schedule()
    assert [t.task_id for t, _ in again] == ["t4"]
    assert sched.examined - before <= 2
    before = sched.examined
    assert sched.schedule() == []                  # no free core: nothing examined
    assert sched.examined == before


def test_pass_cost_bounded_by_allocated_plus_shapes():
    """Each shape is dropped at its first failure: examined <= allocated + shapes."""
    res = local_resources("a:8")
    sched = Scheduler(res)
    shapes = [R(c, c) for c in range(1, 9)]
    for i in range(40_000):
        sched.add(task(f"t{i}", shapes[i % 8], seq=i))
    for _ in range(20):
        before = sched.examined
        out = sched.schedule()
        assert sched.examined - before <= len(out) + len(shapes)
        for _, a in out[: len(out) // 2 + 1]:
            res.release(a)


def test_removal_tombstones_do_not_accumulate():
    sched = Scheduler(local_resources("1"))
    for i in range(10_000):
        sched.add(task(f"t{i}", seq=i))
    for i in range(9_999):
        sched.remove(f"t{i}")
    shape = next(iter(sched._shapes.values()))
    assert len(shape.heap) < 100
    assert scheduled(sched) == [("t9999", "n0[0]")]
