"""Dependency parsing, submit-time checks and the waiter index (issue 3 "dependency index")."""

from __future__ import annotations

from qcg.pilotjob.api.jobparse import parse_jobs
from qcg.pilotjob.governor.dependencies import WaiterIndex, check_submission, resolve_template


def J(name, after=None, **kw):
    d = {"name": name, "execution": {"exec": "/bin/true"}}
    if after is not None:
        d["dependencies"] = {"after": after}
    d.update(kw)
    return d


def check(*jobs, known=None):
    known = known or {}
    return check_submission(parse_jobs(list(jobs)), lambda n: known.get(n))[0]


def test_split_static_and_templated():
    """Reference 10.3.1 dependencies.after: names, `name:N` and `${it}` forms (facts 8)."""
    descs = parse_jobs([J("a"), J("c", iteration={"stop": 3}), J("x", iteration={"stop": 3}),
                        J("b", ["a", "c:2", "x:${it}"], iteration={"stop": 3})])
    problems, deps = check_submission(descs, lambda n: None)
    assert problems == [] and deps.static[:3] == [(), (), ()] and deps.templated[:3] == [(), (), ()]
    assert deps.static[3] == (("a", None), ("c", 2))
    assert deps.templated[3] == ("x:${it}",)


def test_resolve_template_per_iteration():
    """Facts 8: `a:${it}` for iteration i is `a:i`."""
    assert resolve_template("a:${it}", 4) == ("a", 4)
    assert resolve_template("a:${it}", 0) == ("a", 0)


def test_check_accepts_batch_in_any_order():
    """Issue 3: a batch may depend on jobs later in the same request."""
    assert check(J("b", ["a"]), J("a")) == []


def test_check_accepts_known_job():
    """Reference 10.3.1: a dependency on an already registered job."""
    (a,) = parse_jobs([J("a")])
    assert check(J("b", ["a"]), known={"a": a}) == []


def test_unknown_dependency_named_in_problem():
    """Issue 3 "a dependency on an unknown job ... is rejected at submit with a clear error"."""
    problems = check(J("b", ["ghost"]))
    assert len(problems) == 1
    assert "'b'" in problems[0] and "ghost" in problems[0] and "dependencies.after" in problems[0]


def test_iteration_of_non_iterative_job_rejected():
    """Issue 3 unknown dependency: `a:1` where `a` has no iterations."""
    problems = check(J("a"), J("b", ["a:1"]))
    assert problems and "a" in problems[0]


def test_iteration_out_of_range_rejected():
    """Issue 3 unknown dependency: `a:5` beyond a's iterations."""
    problems = check(J("a", iteration={"stop": 3}), J("b", ["a:5"]))
    assert problems and "5" in problems[0]


def test_per_iteration_dependency_out_of_range_rejected():
    """Issue 3: `a:${it}` where b has more iterations than a refers to unknown iterations."""
    problems = check(J("a", iteration={"stop": 2}), J("b", ["a:${it}"], iteration={"stop": 5}))
    assert problems


def test_placeholder_dependency_without_iterations_rejected():
    """Facts 8: `${it}` in a non-iterative job's dependencies cannot be resolved."""
    problems = check(J("a", iteration={"stop": 2}), J("b", ["a:${it}"]))
    assert problems and "'b'" in problems[0]


def test_cycle_detected_and_reported():
    """Issue 3 "a cycle is rejected at submit"; the message shows the cycle."""
    problems = check(J("x", ["z"]), J("y", ["x"]), J("z", ["y"]))
    assert len(problems) == 1
    assert "cycle" in problems[0]
    for n in "xyz":
        assert f"'{n}'" in problems[0]


def test_cycle_through_iterations_detected():
    """Issue 3 cycle rejection also for `name:N` edges."""
    problems = check(J("x", ["y:0"], iteration={"stop": 2}), J("y", ["x:1"], iteration={"stop": 2}))
    assert problems and "cycle" in problems[0]


def test_cycle_through_templated_dependencies_detected():
    """Issue 3 cycle rejection for `${it}` edges, also when the cycle's first edge points back in the batch."""
    problems = check(J("x", ["y:${it}"], iteration={"stop": 2}), J("y", ["x:${it}"], iteration={"stop": 2}))
    assert problems and "cycle" in problems[0]
    problems = check(J("a"), J("x", ["a", "y:${it}"], iteration={"stop": 2}),
                     J("y", ["x:${it}"], iteration={"stop": 2}))
    assert problems and "'x'" in problems[0] and "'y'" in problems[0]


def test_backward_edges_only_accepted():
    """Issue 3: a batch whose jobs depend only on earlier ones (the usual order) has no cycle."""
    jobs = [J("a")] + [J(f"b{i}", ["a"] + [f"b{k}" for k in range(i)]) for i in range(5)]
    assert check(*jobs) == []


def test_long_chain_no_recursion():
    """Issue 3 / DESIGN principle 2: cycle detection is iterative (5000-long chain, no RecursionError)."""
    n = 5000
    jobs = [J("c0")] + [J(f"c{i}", [f"c{i-1}"]) for i in range(1, n)]
    assert check(*jobs) == []
    jobs[0] = J("c0", [f"c{n-1}"])
    problems = check(*jobs)
    assert problems and "cycle" in problems[0]


def test_waiter_index():
    """Issue 3 "dependency index (job -> dependants)": pop returns and forgets the waiters."""
    idx = WaiterIndex()
    idx.add(("a", None), ("w1", None))
    idx.add(("a", None), ("w2", 3))
    idx.add(("a", 1), ("w3", None))
    assert len(idx) == 3
    assert idx.pop(("a", None)) == [("w1", None), ("w2", 3)]
    assert not idx.pop(("a", None))
    assert len(idx) == 1


def test_waiter_index_knows_the_waited_for_iterations_of_a_job():
    """A job that ends as a whole ends its unrun iterations (final_states._iterations_ended_with): the index
    says which iterations of it are waited for, and forgets each once popped."""
    idx = WaiterIndex()
    idx.add(("b", 3), ("w1", None))
    idx.add(("b", 1), ("w2", None))
    idx.add(("b", 1), ("w3", 0))
    idx.add(("b", None), ("w4", None))
    idx.add(("c", 0), ("w5", None))
    assert idx.iterations("b") == [1, 3] and idx.iterations("c") == [0] and idx.iterations("x") == []
    assert idx.pop(("b", 1)) == [("w2", None), ("w3", 0)]
    assert idx.iterations("b") == [3]
    idx.pop(("b", 3))
    idx.pop(("b", None))
    assert idx.iterations("b") == [] and len(idx) == 1
