"""Governor core against a fake partition port (issue 3 "Governor layer").

The fake partition records what the governor dispatches; the tests play the
partition's part by reporting starts and ends, so every state transition is
driven explicitly and nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from qcg.pilotjob.api.errors import InvalidJobDescriptionError
from qcg.pilotjob.api.jobparse import parse_jobs
from qcg.pilotjob.governor.governor import INTERRUPTIONS, Governor, GovernorListener
from qcg.pilotjob.governor.states import JobState
from qcg.pilotjob.partition.local_nodes import local_resources
from qcg.pilotjob.partition.task import Allocation, TaskFinished, TaskStarted

S = JobState


class FakePartition:
    """PartitionPort: records dispatched tasks and cancels; sizes from real Resources."""

    def __init__(self, nodes: str = "4", queue_limit: int = 8) -> None:
        self.resources = local_resources(nodes)
        self.queue_limit = queue_limit
        self.tasks: list[Any] = []          # every TaskSpec ever dispatched, in order
        self.canceled: list[str] = []

    def submit(self, tasks):
        self.tasks.extend(tasks)

    def cancel(self, task_ids):
        self.canceled.extend(task_ids)

    def never_fits(self, request):
        return self.resources.never_fits(request)

    def totals(self):
        per_node = max(n.total for n in self.resources.nodes)
        return self.resources.total_cores, self.resources.total_nodes, per_node

    @property
    def ids(self) -> list[str]:
        return [t.task_id for t in self.tasks]


class Recorder(GovernorListener):
    def __init__(self) -> None:
        self.finals: list[tuple[str, int | None, str]] = []
        self.jobs: list[tuple[str, str]] = []

    def task_final(self, job, iteration, record):
        self.finals.append((job.name, iteration, record.state.value))

    def job_final(self, job):
        self.jobs.append((job.name, job.state.value))


class Harness:
    def __init__(self, nodes: str = "4", queue_limit: int = 8) -> None:
        self.loop = asyncio.new_event_loop()
        self.part = FakePartition(nodes, queue_limit)
        self.rec = Recorder()
        self.gov = Governor(self.loop, self.part, [self.rec])
        self._done = 0   # index in part.tasks of handled tasks (for helpers)

    def close(self) -> None:
        self.loop.close()

    def drain(self, rounds: int = 5) -> None:
        for _ in range(rounds):
            self.loop.run_until_complete(asyncio.sleep(0))

    def submit(self, *jobs: dict) -> list[str]:
        names = self.gov.submit(parse_jobs(list(jobs)))
        self.drain()
        return names

    def start(self, task_id: str) -> None:
        now = time.time()
        alloc = Allocation((("n0", (0,)),))
        self.gov.task_started(TaskStarted(task_id, alloc, "/tmp", now, now, 1))

    def finish(self, task_id: str, state: str = "SUCCEED", code: int = 0, message: str | None = None,
               requeue: bool = False) -> None:
        self.start(task_id)
        now = time.time()
        self.gov.task_finished(TaskFinished(task_id, state, exit_code=code, message=message,
                                            started_at=now, finished_at=now, requeue=requeue))
        self.drain()

    def job(self, name: str):
        return self.gov.registry.get(name)

    def state(self, name: str) -> JobState:
        return self.gov.registry.get(name).state


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def J(name: str, **kw) -> dict:
    d = {"name": name, "execution": {"exec": "/bin/true"}}
    d.update(kw)
    return d


# --------------------------------------------------------------------- lazy


def test_million_iterations_are_expanded_lazily():
    """Issue 3 "Iterations are expanded lazily (1 000 000 iterations must not create 1 000 000 objects)"."""
    h = Harness(queue_limit=4)
    try:
        h.submit(J("big", iteration={"stop": 1_000_000}))
        job = h.job("big")
        assert job.total == 1_000_000
        assert len(job.its) <= 4
        assert len(h.part.tasks) == 4
        assert h.part.ids == ["big:0", "big:1", "big:2", "big:3"]
        for tid in ("big:0", "big:2", "big:1"):
            h.finish(tid)
        # a few dispatched, a few finished: records only for those, never the whole range
        assert len(h.part.tasks) == 7
        assert len(job.its) <= 8
        assert job.finished_count == 3
        assert job.state in (S.QUEUED, S.EXECUTING)
    finally:
        h.close()


def test_lazy_iterations_dispatch_in_order_and_respect_queue_limit(h):
    """Reference 7.2 (FIFO) + issue 3 "cost linear in work": iterations handed out in index order."""
    h.submit(J("it", iteration={"start": 5, "stop": 30}))
    assert h.part.ids == [f"it:{i}" for i in range(5, 13)]
    h.finish("it:5")
    assert h.part.ids[-1] == "it:13"


# ---------------------------------------------------------- FIFO / states


def test_fifo_dispatch_order_across_jobs(h):
    """Reference 7.2 "Jobs being in the queue are processed in the FIFO manner"."""
    h.submit(J("a"), J("b"), J("c"))
    h.submit(J("d"))
    assert h.part.ids == ["a", "b", "c", "d"]
    assert [t.seq for t in h.part.tasks] == sorted(t.seq for t in h.part.tasks)


def test_plain_job_state_sequence(h):
    """Reference 10.3.3 states: QUEUED -> SCHEDULED -> EXECUTING -> SUCCEED, history kept."""
    h.submit(J("a"))
    assert h.state("a") is S.QUEUED
    h.start("a")
    assert h.state("a") is S.EXECUTING
    h.finish("a")
    assert h.state("a") is S.SUCCEED
    hist = [st for _, st in h.job("a").record.history]
    assert hist[0] is S.QUEUED and hist[-1] is S.SUCCEED
    assert S.SCHEDULED in hist and S.EXECUTING in hist
    assert h.gov.all_finished


def test_failed_job_keeps_exit_code_and_message(h):
    """Reference 10.3.3 FAILED: non-zero exit code; runtime exit_code recorded as a string."""
    h.submit(J("a"))
    h.finish("a", "FAILED", code=3, message="exit code 3")
    rec = h.job("a").record
    assert rec.state is S.FAILED
    assert rec.runtime["exit_code"] == "3"
    assert "exit code 3" in rec.messages


def test_iterative_job_succeeds_when_all_iterations_succeed(h):
    """Issue 3 "job-level state of iterative jobs derived as the reference says": all SUCCEED -> SUCCEED."""
    h.submit(J("it", iteration={"stop": 3}))
    h.finish("it:0")
    h.finish("it:2")
    assert not h.job("it").is_final
    h.finish("it:1")
    assert h.state("it") is S.SUCCEED
    assert ("it", "SUCCEED") in h.rec.jobs


def test_iterative_job_fails_when_one_iteration_fails(h):
    """Facts 5: the parent ends FAILED if any iteration FAILED; the other iterations still run."""
    h.submit(J("it", iteration={"stop": 3}))
    h.finish("it:0", "FAILED", code=1)
    assert not h.job("it").is_final
    h.finish("it:1")
    h.finish("it:2")
    assert h.state("it") is S.FAILED
    assert h.job("it").iteration_state(1) is S.SUCCEED
    assert h.job("it").iteration_state(0) is S.FAILED


def test_iteration_states_from_values(h):
    """Reference 10.3.1 iteration `values`: one task per value, indices 0..len-1."""
    h.submit(J("v", iteration={"values": ["x", "y"]}))
    assert h.part.ids == ["v:0", "v:1"]


# ---------------------------------------------------------- submit checks


def test_duplicate_name_rejected_atomically(h):
    """Issue 3 "Bad input: duplicate names": the whole submit is refused, no job registered."""
    h.submit(J("a"))
    with pytest.raises(InvalidJobDescriptionError) as ei:
        h.gov.submit(parse_jobs([J("b"), J("a")]))
    assert "'a'" in str(ei.value)
    assert "b" not in h.gov.registry


def test_never_fitting_job_fails_at_once_and_the_batch_runs(h):
    """Reference 7.2 "If the minimal resource requirements are greater than total available resources the
    job is removed from the queue with the FAILED status" (and 10.3.3): the job is registered FAILED with
    the reason (job, field, why), its dependants are OMITTED, the rest of its batch runs."""
    names = h.submit(J("ok"), J("huge", resources={"numCores": {"exact": 5}}),
                     J("after_huge", dependencies={"after": ["huge"]}))
    assert names == ["ok", "huge", "after_huge"]
    huge = h.gov.registry.get("huge")
    assert huge.state is JobState.FAILED
    assert huge.record.messages and "resources" in huge.record.messages and "5" in huge.record.messages
    assert h.gov.unfittable == {"huge": "requires 5 cores but the partition has 4 in total"}
    assert h.gov.registry.get("after_huge").state is JobState.OMITTED
    assert h.part.ids == ["ok"]
    h.submit(J("later"))
    assert h.gov.unfittable == {}


def test_never_fitting_iterative_job_fails_without_iterations(h):
    """Reference 7.2: more nodes than exist can never fit; an iterative job hands out no iteration, its
    iterations read FAILED (so what waits for one of them is OMITTED, not left waiting) and count as
    failed in the final status."""
    from qcg.pilotjob.governor.views import job_stats

    h.submit(J("n3", resources={"numNodes": {"exact": 3}}, iteration={"stop": 4}),
             J("after_one", dependencies={"after": ["n3:1"]}),
             J("each", iteration={"stop": 4}, dependencies={"after": ["n3:${it}"]}))
    h.submit(J("later", dependencies={"after": ["n3:2"]}))
    n3 = h.gov.registry.get("n3")
    assert n3.state is JobState.FAILED and n3.iteration_state(1) is JobState.FAILED
    assert h.gov.registry.get("after_one").state is JobState.OMITTED
    assert h.gov.registry.get("later").state is JobState.OMITTED
    h.drain()
    assert h.gov.registry.get("each").state is JobState.FAILED      # every iteration OMITTED
    assert h.part.ids == []
    assert h.gov.all_finished
    jstats, istats = job_stats(list(h.gov.registry))
    assert istats["scheduling"] == 0 and istats["executing"] == 0


def test_min_fits_is_accepted(h):
    """Reference 7.2 min/max: a job whose minimum fits is accepted even if its max exceeds the total."""
    h.submit(J("r", resources={"numCores": {"min": 2, "max": 64}}))
    assert h.part.ids == ["r"]
    req = h.part.tasks[0].resources
    assert (req.cores_min, req.cores_max) == (2, 64)


# ---------------------------------------------------------- dependencies


def test_dependency_waits_for_success(h):
    """Reference 10.3.1 dependencies.after: the job runs only when all listed jobs SUCCEED."""
    h.submit(J("a"), J("b", dependencies={"after": ["a"]}))
    assert h.part.ids == ["a"]
    h.finish("a")
    assert h.part.ids == ["a", "b"]


def test_dependency_on_already_finished_job(h):
    """Reference 10.3.1: a dependency on a job that already SUCCEEDED is met at once."""
    h.submit(J("a"))
    h.finish("a")
    h.submit(J("b", dependencies={"after": ["a"]}))
    assert h.part.ids == ["a", "b"]


def test_dependency_on_failed_job_omits(h):
    """Reference 7.2 "dependency constraints can not be met ... marked as OMITTED"."""
    h.submit(J("a"), J("b", dependencies={"after": ["a"]}))
    h.finish("a", "FAILED", code=1)
    assert h.state("b") is S.OMITTED
    assert "a" in (h.job("b").record.messages or "")
    assert "b" not in h.part.ids
    assert h.gov.all_finished


def test_dependency_on_canceled_job_omits(h):
    """Reference 7.2: dependants of a CANCELED job become OMITTED."""
    h.submit(J("a", dependencies={"after": []}), J("x"), J("b", dependencies={"after": ["a"]}))
    h.gov.cancel(["a"])
    h.drain()
    # 'a' was dispatched: the partition is asked to cancel, then reports it
    assert "a" in h.part.canceled
    h.finish("a", "CANCELED", code=-15)
    assert h.state("a") is S.CANCELED
    assert h.state("b") is S.OMITTED


def test_a_task_its_partition_ended_on_its_own_runs_again(h):
    """README "Faults: at-least-once" (helper report): a partition manager that lost its governor kills its
    tasks and reports them CANCELED ("shutdown"); a governor that stalled read those ends before it declared
    the manager lost, and the tasks stayed CANCELED, never run. A CANCELED nobody asked for is an
    interruption: the task runs again (up to INTERRUPTIONS times, then the end stands)."""
    h.submit(J("a"), J("s", iteration={"stop": 2}))
    assert sorted(h.part.ids) == ["a", "s:0", "s:1"]
    h.finish("a", "CANCELED", code=-15, message="shutdown")
    h.finish("s:1", "CANCELED", code=-15, message="shutdown")
    assert h.state("a") is S.QUEUED and h.state("s") is not S.CANCELED
    assert h.part.ids.count("a") == 2 and h.part.ids.count("s:1") == 2      # handed out again
    h.finish("a")
    h.finish("s:0")
    h.finish("s:1")
    assert h.state("a") is S.SUCCEED and h.state("s") is S.SUCCEED
    h.submit(J("b"))
    for _ in range(INTERRUPTIONS):
        h.finish("b", "CANCELED", code=-15, message="shutdown")
    assert h.part.ids.count("b") == INTERRUPTIONS + 1
    h.finish("b", "CANCELED", code=-15, message="shutdown")
    assert h.state("b") is S.CANCELED


def test_a_running_iteration_a_user_canceled_stays_canceled(h):
    """Reference 10.3.6 `cancelJob` with `job:N` names (audit helper): the CANCELED end of an iteration the
    user canceled was taken for an interruption -- the iteration ran again and the job ended SUCCEED. The
    original ends it CANCELED, and the job FAILED."""
    h.submit(J("it", iteration={"stop": 4}))
    assert sorted(h.part.ids) == ["it:0", "it:1", "it:2", "it:3"]
    assert h.gov.cancel(["it:1", "it:3"]) == (2, {})
    h.drain()
    assert sorted(h.part.canceled) == ["it:1", "it:3"]
    h.finish("it:1", "CANCELED", code=-15)
    h.finish("it:3", "CANCELED", code=-15)
    assert h.part.ids.count("it:1") == 1 and h.part.ids.count("it:3") == 1       # not handed out again
    h.finish("it:0")
    h.finish("it:2")
    job = h.gov.registry.get("it")
    assert job.iteration_state(1) is S.CANCELED and job.iteration_state(3) is S.CANCELED
    assert h.state("it") is S.FAILED


def test_an_iteration_the_user_canceled_is_not_requeued_when_its_node_is_lost(h):
    """Review: a partition reports a canceled task whose node was lost before the cancel landed as CANCELED
    with `requeue`; for a `job:N` cancel (the job itself not canceled) it ran again."""
    h.gov.requeue_limit = 2
    h.submit(J("it", iteration={"stop": 2}))
    h.gov.cancel(["it:1"])
    h.drain()
    h.finish("it:1", "CANCELED", code=-15, message="node lost", requeue=True)
    assert h.part.ids.count("it:1") == 1
    assert h.gov.registry.get("it").iteration_state(1) is S.CANCELED


def test_a_name_freed_by_remove_does_not_inherit_the_old_jobs_cancel(h):
    """Review: the user's cancel of a job was remembered by name after its end; a job submitted under the
    name again (after removeJob) had its interruptions taken for the user's cancel, and was not run again."""
    h.submit(J("a"), J("s", iteration={"stop": 2}))
    h.gov.cancel(["a", "s:1", "s"])
    h.drain()
    for tid in ("a", "s:0", "s:1"):
        h.finish(tid, "CANCELED", code=-15)
    assert h.gov.remove(["a", "s"]) == (2, {})
    assert not h.gov.canceled_by_user
    h.submit(J("a"), J("s", iteration={"stop": 2}))
    h.finish("a", "CANCELED", code=-15, message="shutdown")
    h.finish("s:1", "CANCELED", code=-15, message="shutdown")
    assert h.part.ids.count("a") == 3 and h.part.ids.count("s:1") == 3     # handed out again
    assert h.state("a") is S.QUEUED


def test_omitted_propagates_through_3000_job_chain_without_recursion(h):
    """Issue 3 "dependants of a FAILED/CANCELED/OMITTED job become OMITTED" over a long chain
    (3000 jobs: no RecursionError, every job OMITTED)."""
    n = 3000
    jobs = [J("c0")] + [J(f"c{i}", dependencies={"after": [f"c{i-1}"]}) for i in range(1, n)]
    h.submit(*jobs)
    assert h.part.ids == ["c0"]
    h.finish("c0", "FAILED", code=1)
    states = {h.state(f"c{i}") for i in range(1, n)}
    assert states == {S.OMITTED}
    assert h.gov.all_finished
    assert len(h.part.tasks) == 1


def test_successful_3000_job_chain_runs_in_order(h):
    """Issue 3 "dependency index so each finished task costs O(its dependants)": a chain runs one by one."""
    n = 3000
    jobs = [J("c0")] + [J(f"c{i}", dependencies={"after": [f"c{i-1}"]}) for i in range(1, n)]
    h.submit(*jobs)
    for i in range(n):
        assert h.part.ids[-1] == f"c{i}"
        h.finish(f"c{i}")
    assert h.gov.all_finished
    assert h.part.ids == [f"c{i}" for i in range(n)]


def test_unknown_dependency_rejected_at_submit(h):
    """Issue 3 "a dependency on an unknown job ... is rejected at submit with a clear error"."""
    with pytest.raises(InvalidJobDescriptionError) as ei:
        h.gov.submit(parse_jobs([J("b", dependencies={"after": ["ghost"]})]))
    msg = str(ei.value)
    assert "'b'" in msg and "ghost" in msg and "dependencies" in msg
    assert "b" not in h.gov.registry


def test_cycle_rejected_at_submit(h):
    """Issue 3 "a cycle is rejected at submit with a clear error"."""
    with pytest.raises(InvalidJobDescriptionError) as ei:
        h.gov.submit(parse_jobs([J("x", dependencies={"after": ["z"]}), J("y", dependencies={"after": ["x"]}),
                                 J("z", dependencies={"after": ["y"]})]))
    msg = str(ei.value)
    assert "cycle" in msg
    assert all(n in msg for n in ("x", "y", "z"))
    assert len(h.gov.registry) == 0


def test_self_dependency_rejected(h):
    """Issue 3 cycle rejection: a job after itself is a cycle of one."""
    with pytest.raises(InvalidJobDescriptionError):
        h.gov.submit(parse_jobs([J("s", dependencies={"after": ["s"]})]))


def test_dependency_on_one_iteration(h):
    """Reference 10.3.1 / issue 3 `name:N`: waits for iteration N of `name`."""
    h.submit(J("a", iteration={"stop": 3}), J("b", dependencies={"after": ["a:1"]}))
    h.finish("a:0")
    assert "b" not in h.part.ids
    h.finish("a:1")
    assert "b" in h.part.ids


def test_dependency_on_missing_iteration_rejected(h):
    """Issue 3 unknown dependency: `a:7` of a 3-iteration job does not exist."""
    h.submit(J("a", iteration={"stop": 3}))
    with pytest.raises(InvalidJobDescriptionError) as ei:
        h.gov.submit(parse_jobs([J("b", dependencies={"after": ["a:7"]})]))
    assert "7" in str(ei.value)


def test_per_iteration_dependency(h):
    """Issue 3 / facts 8 `a:${it}`: iteration i of b waits for iteration i of a only."""
    h.submit(J("a", iteration={"stop": 3}), J("b", iteration={"stop": 3}, dependencies={"after": ["a:${it}"]}))
    assert [t for t in h.part.ids if t.startswith("b")] == []
    h.finish("a:2")
    assert [t for t in h.part.ids if t.startswith("b")] == ["b:2"]
    h.finish("a:0")
    assert sorted(t for t in h.part.ids if t.startswith("b")) == ["b:0", "b:2"]


def test_per_iteration_dependency_failure_omits_only_that_iteration(h):
    """Facts 8: an iteration whose own dependency fails is OMITTED, others continue, parent ends FAILED."""
    h.submit(J("a", iteration={"stop": 3}), J("b", iteration={"stop": 3}, dependencies={"after": ["a:${it}"]}))
    h.finish("a:0")
    h.finish("a:1", "FAILED", code=1)
    h.finish("a:2")
    b = h.job("b")
    assert b.iteration_state(1) is S.OMITTED
    assert "b:1" not in h.part.ids
    h.finish("b:0")
    h.finish("b:2")
    assert h.state("b") is S.FAILED
    assert h.state("a") is S.FAILED


# ---------------------------------------------------------- cancel / remove


def test_cancel_queued_job_is_immediate(h):
    """Facts 17: cancel of a job not yet handed out -> CANCELED at once, dependants OMITTED."""
    h.part.queue_limit = 1
    h.submit(J("a"), J("q"), J("d", dependencies={"after": ["q"]}))
    assert h.part.ids == ["a"]
    canceled, errors = h.gov.cancel(["q"])
    h.drain()
    assert canceled == 1 and not errors
    assert h.state("q") is S.CANCELED
    assert h.state("d") is S.OMITTED


def test_cancel_errors(h):
    """Reference 10.3.6 cancelJob: unknown names and finished jobs are reported per name."""
    h.submit(J("a"))
    h.finish("a")
    canceled, errors = h.gov.cancel(["a", "nosuch"])
    assert canceled == 0
    assert set(errors) == {"a", "nosuch"}


def test_cancel_iterative_job(h):
    """Facts 17: cancel of an iterative job cancels running iterations and the rest; parent CANCELED."""
    h.submit(J("it", iteration={"stop": 100}))
    dispatched = list(h.part.ids)
    h.gov.cancel(["it"])
    h.drain()
    assert set(h.part.canceled) == set(dispatched)
    for tid in dispatched:
        h.finish(tid, "CANCELED", code=-15)
    assert h.state("it") is S.CANCELED
    assert len(h.part.tasks) == len(dispatched)
    assert h.gov.all_finished


@pytest.mark.parametrize("size, single", [(10 ** 12, False), (250_000, True)])
def test_cancel_of_a_huge_sweep_counts_its_unstarted_iterations(h, size, single):
    """A cancel costs what ran, not the sweep's size: 10**12 iterations (the fuzzer's case: the service
    stopped answering while it wrote a report line for each). The first UNSTARTED_LISTED are listed; the
    job's message tells the count. An iteration canceled on its own before is not counted twice."""
    from qcg.pilotjob.governor.cancellation import UNSTARTED_LISTED

    listed: list[int] = []
    h.rec.unstarted_canceled = lambda job, its, when: listed.extend(its)
    h.submit(J("big", iteration={"stop": size}))
    dispatched = list(h.part.ids)
    alone = len(dispatched) + 5
    if single:
        h.gov.cancel([f"big:{alone}"])
    canceled, errors = h.gov.cancel(["big"])
    assert canceled == 1 and not errors
    for tid in dispatched:
        h.finish(tid, "CANCELED", code=-15)
    job = h.job("big")
    assert h.state("big") is S.CANCELED and h.gov.all_finished
    assert job.finished_count == size
    assert len(listed) == UNSTARTED_LISTED
    assert (alone not in listed) if single else (alone in listed)
    unstarted = size - len(dispatched) - single
    assert f"{unstarted} iterations canceled before they started" in job.record.messages


def test_remove(h):
    """Reference 10.3.7 removeJob: finished jobs are removed (name reusable); unfinished refused."""
    h.part.queue_limit = 1
    h.submit(J("a"), J("b"))
    removed, errors = h.gov.remove(["b"])
    assert removed == 0 and "b" in errors and "not finished" in errors["b"]
    h.finish("a")
    removed, errors = h.gov.remove(["a", "ghost"])
    assert removed == 1 and set(errors) == {"ghost"}
    assert "a" not in h.gov.registry
    h.submit(J("a"))
    assert "a" in h.gov.registry


def test_wait_all_finished(h):
    """Issue 3 file mode: the service waits until every job ended."""
    h.submit(J("a"))
    fut = h.loop.create_task(h.gov.wait_all_finished())
    h.drain()
    assert not fut.done()
    h.finish("a")
    h.loop.run_until_complete(asyncio.wait_for(fut, 5))
    assert fut.done()


def test_resubmit_after_remove_of_undispatched_job_runs(h):
    """Reference 10.3.7 removeJob "a new job cannot be submitted with the same name unless the previous one is
    removed": the new job with the reused name must run, even if the old one was canceled before dispatch."""
    h.gov.submit(parse_jobs([J("a")]))          # no drain: not dispatched yet (as in file mode)
    h.gov.cancel(["a"])
    assert h.gov.remove(["a"])[0] == 1
    h.gov.submit(parse_jobs([J("a")]))
    h.drain()
    assert h.part.ids == ["a"]
    h.finish("a")
    assert h.state("a") is S.SUCCEED
    assert h.gov.all_finished
