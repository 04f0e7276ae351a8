"""Iteration resource schedulers `maximum-iters` and `split-into`.

Reference: "Iteration resources schedulers" (12.1 maximum-iters, 12.2
split-into): exact per-iteration sizes from the single-iteration minimum and
the resources of the allocation; `max` is not allowed with a scheduler.
"""

from __future__ import annotations

import math

import pytest

from qcg.pilotjob.api.jobdesc import IterSchedulerSpec, ResourceSize
from qcg.pilotjob.partition.iter_schedulers import iteration_request, maximum_iters_size, split_into_size
from qcg.pilotjob.partition.task import ResourceRequest as R


def sized(name, min=None, max=None, **params):
    return ResourceSize(min=min, max=max, scheduler=IterSchedulerSpec(name, params))


def stepwise_maximum_iters(iterations, avail, pmin):
    """The documented procedure step by step: rounds, then split each round."""
    sizes = []
    if iterations * pmin <= avail:
        rounds = [iterations]
    else:
        nrounds = math.ceil(iterations / (avail // pmin))
        rounds, left = [], iterations
        for r in range(nrounds):
            k = math.ceil(left / (nrounds - r))
            rounds.append(k)
            left -= k
    for k in rounds:
        rest = avail
        for i in range(k):
            share = rest // (k - i)
            sizes.append(share)
            rest -= share
    return sizes


def test_maximum_iters_closed_form_matches_stepwise():
    for iterations in range(1, 40):
        for avail in range(1, 40):
            for pmin in range(1, avail + 1):
                want = stepwise_maximum_iters(iterations, avail, pmin)
                got = [maximum_iters_size(iterations, avail, pmin, i) for i in range(iterations)]
                assert got == want, (iterations, avail, pmin)
                assert min(got) >= pmin


def test_maximum_iters_examples():
    """12.1: as many iterations at once as possible, the rest of cores spread."""
    # 4 iterations on 10 cores: one round, 2,2,3,3
    assert [maximum_iters_size(4, 10, 1, i) for i in range(4)] == [2, 2, 3, 3]
    # 10 iterations on 4 cores, min 1: 3 rounds of 4,3,3 iterations
    assert [maximum_iters_size(10, 4, 1, i) for i in range(10)] == [1, 1, 1, 1, 1, 1, 2, 1, 1, 2]
    # min 2 on 5 cores: 2 iterations per round
    assert [maximum_iters_size(3, 5, 2, i) for i in range(3)] == [2, 3, 5]
    # large iteration counts stay O(1) per iteration
    # (1e6 iterations on 128 cores: 7813 rounds of 128 or 127 iterations; in a
    # round of 127 the last iteration gets the spare core)
    assert maximum_iters_size(1_000_000, 128, 1, 0) == 1
    assert maximum_iters_size(1_000_000, 128, 1, 999_999) == 2


def test_split_into():
    """12.2: every iteration gets floor(avail / parts); parts defaults to iterations."""
    assert split_into_size(4, 10, None) == 2
    assert split_into_size(4, 10, 3) == 3
    with pytest.raises(ValueError, match="less than 1"):
        split_into_size(4, 3, None)
    with pytest.raises(ValueError, match="at least 1"):
        split_into_size(4, 3, 0)


def test_iteration_request_cores_and_nodes():
    cores = sized("maximum-iters")
    assert [iteration_request(cores, None, 4, 10, 2, 5, index=i) for i in range(4)] == \
        [R(2, 2), R(2, 2), R(3, 3), R(3, 3)]
    assert iteration_request(sized("split-into", parts=2), None, 8, 10, 2, 5, index=5) == R(5, 5)
    assert iteration_request(sized("split-into", parts="5"), None, 8, 10, 2, 5) == R(2, 2)
    # nodes scheduler works on the number of nodes; numCores stays per node
    req = iteration_request(ResourceSize(exact=2), sized("split-into"), 2, 16, 4, 4)
    assert req == R(2, 2, 2, 2)
    # whole nodes with maximum-iters
    assert iteration_request(None, sized("maximum-iters"), 3, 16, 4, 4, index=2) == R(None, None, 2, 2)
    # scheduler names are case-insensitive
    assert iteration_request(sized("Split-Into"), None, 2, 8, 1, 8) == R(4, 4)


def test_plain_sizes_without_scheduler():
    assert iteration_request(None, None, 5, 8, 1, 8) == R(1, 1)
    assert iteration_request(ResourceSize(exact=3), None, 5, 8, 1, 8) == R(3, 3)
    assert iteration_request(ResourceSize(min=2, max=4), ResourceSize(exact=2), 5, 8, 2, 4) == R(2, 4, 2, 2)
    assert iteration_request(ResourceSize(min=2), None, 5, 8, 1, 8) == R(2, None)


@pytest.mark.parametrize("cores, nodes, fragment", [
    (sized("maximum-iters", max=4), None, "'max' is not allowed"),
    (sized("split-into", max=4), None, "'max' is not allowed"),
    (sized("maximum-iters", min=9), None, "needs at least 9"),
    (sized("split-into", parts=0), None, "'parts' must be at least 1"),
    (sized("split-into", parts="x"), None, "'parts' must be an integer"),
    (sized("split-into", parts=20), None, "less than 1"),
    (sized("split-into", min=3), None, "less than the minimum 3"),
    (sized("round-robin"), None, "unknown iteration scheduler"),
    (sized("maximum-iters", min=5), ResourceSize(exact=1), "8 cores per node requested"),
    (None, sized("maximum-iters", min=3), "numNodes: maximum-iters: an iteration needs at least 3"),
])
def test_impossible_combinations(cores, nodes, fragment):
    with pytest.raises(ValueError) as exc:
        iteration_request(cores, nodes, 4, 8, 2, 4)
    assert fragment in str(exc.value)


def test_exact_with_scheduler_and_bad_iterations():
    bad = ResourceSize(exact=2, scheduler=IterSchedulerSpec("split-into", {}))
    with pytest.raises(ValueError, match="'exact' cannot be combined"):
        iteration_request(bad, None, 4, 8, 1, 8)
    with pytest.raises(ValueError, match="iterations must be at least 1"):
        iteration_request(None, None, 0, 8, 1, 8)
    with pytest.raises(ValueError, match="outside"):
        iteration_request(sized("maximum-iters"), None, 4, 8, 1, 8, index=4)
