"""Placeholder substitution per field (reference 10.3.1 "variables"; issue 3 "substituted per string field").

A job's execution is analysed once (`field_template`) and each task then
substitutes only the fields that hold placeholders; the governor computes
only the values a job refers to and tells the partition whether anything is
left for it (`TaskSpec.templated`).
"""

from __future__ import annotations

import asyncio
import re

import pytest

from qcg.pilotjob.api.jobdesc import Execution
from qcg.pilotjob.api.jobparse import parse_jobs
from qcg.pilotjob.api.placeholders import field_template, placeholder_names, substitute_fields
from qcg.pilotjob.governor.governor import Governor

from tests.unit.test_governor import FakePartition


def test_plain_execution_has_no_template():
    assert field_template(Execution(exec="/bin/true", args=("a", "$HOME", "${"), env={"K": "v"})) is None


def test_template_names_fields_and_names_including_env_keys():
    ex = Execution(exec="/bin/echo", args=("${it}", "x"), env={"V_${jname}": "${ uniq }"}, stdout="o.${it}")
    tpl = field_template(ex)
    assert tpl is not None
    assert set(tpl.fields) == {"args", "env", "stdout"}
    assert tpl.names == {"it", "jname", "uniq"}
    assert placeholder_names(["${a}", {"${b}": ("${c}",)}, 3]) == {"a", "b", "c"}


def test_substitution_with_template_equals_full_substitution_and_keeps_other_fields():
    ex = Execution(exec="/bin/echo", args=("${it}", "$$x", 'q"'), env={"K_${it}": "${it}/${unknown}"},
                   stdout="o.${it}", wd="fixed", model="threads", model_opts={"k": 1})
    values = {"it": "7"}
    tpl = field_template(ex)
    new = substitute_fields(ex, values, tpl)
    assert new == substitute_fields(ex, values)
    assert new.args == ("7", "$$x", 'q"') and new.env == {"K_7": "7/${unknown}"} and new.stdout == "o.7"
    assert (new.exec, new.wd, new.model, new.model_opts) == ("/bin/echo", "fixed", "threads", {"k": 1})
    assert ex.args == ("${it}", "$$x", 'q"')          # the shared original is untouched
    with pytest.raises(AttributeError):
        new.args = ()                                  # the copy is as frozen as the original


def test_nothing_to_change_returns_the_same_object():
    ex = Execution(exec="/bin/echo", args=("${unknown}",))
    assert substitute_fields(ex, {"it": "1"}, field_template(ex)) is ex


@pytest.fixture
def gov():
    loop = asyncio.new_event_loop()
    part = FakePartition("4")
    yield Governor(loop, part, []), part, loop
    loop.close()


def _tasks(gov, *jobs):
    g, part, loop = gov
    g.submit(parse_jobs(list(jobs)))
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    return {t.task_id: t for t in part.tasks}


def test_uniq_is_fresh_per_task(gov):
    tasks = _tasks(gov, {"name": "u", "iteration": {"stop": 3}, "execution": {"exec": "/bin/echo", "args": ["${uniq}"]}})
    uniqs = {t.execution.args[0] for t in tasks.values()}
    assert len(uniqs) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", u) for u in uniqs)


def _launched(task):
    """What the partition runs (`Partition._start`): run-time names substituted when the task says so."""
    if not task.templated:
        return task.execution
    return substitute_fields(task.execution, {"root_wd": "/w", "ncores": 3, "nnodes": 1, "nlist": "n0"})


def test_partition_substitutes_only_when_something_is_left_for_it(gov):
    tasks = _tasks(
        gov,
        {"name": "plain", "execution": {"exec": "/bin/true"}},
        {"name": "req", "iteration": {"stop": 1}, "execution": {"exec": "/bin/echo", "args": ["${it}", "${jname}"]}},
        {"name": "shell", "execution": {"script": "echo ${HOME}"}},
        {"name": "run", "execution": {"exec": "/bin/echo", "args": ["${ncores}", "${it}"]}},
        # a value that brings a run-time placeholder in is substituted at launch as well
        {"name": "val", "iteration": {"values": ["${nlist}"]}, "execution": {"exec": "/bin/echo", "args": ["${itval}"]}},
        # ... and so is one that a value completes ("${n" + "cores}")
        {"name": "nest", "iteration": {"values": ["cores"]}, "execution": {"exec": "/bin/echo", "args": ["${n${itval}}"]}},
    )
    assert {tid: t.templated for tid, t in tasks.items()} == {
        "plain": False, "req:0": False, "shell": False, "run": True, "val:0": True, "nest:0": True}
    assert {tid: _launched(t).args or _launched(t).script for tid, t in tasks.items()} == {
        "plain": None, "req:0": ("0", "req"), "shell": "echo ${HOME}", "run": ("3", "${it}"),
        "val:0": ("n0",), "nest:0": ("3",)}
    assert field_template(tasks["shell"].execution) is None or not field_template(tasks["shell"].execution).partial


def test_partial_only_where_a_placeholder_sits_next_to_an_open_one():
    assert field_template(Execution(exec="/bin/echo", args=("${n${it}}",))).partial
    assert not field_template(Execution(exec="/bin/echo", args=("${it}", "${HOME:-x}"))).partial
    assert field_template(Execution(exec="/bin/echo", args=("${HOME:-x}",))) is None
