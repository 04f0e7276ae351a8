"""Unit tests of the job description model and its validation (qcg.pilotjob.api.jobdesc, api.jobparse).

The job description format is the reference's section 10.3.1 "submit"; the
simple-format notes (wall time `wt` inside `resources`, iteration forms) come
from the `Jobs.add` documentation of the reference.
"""

from __future__ import annotations

import copy
import json
import random

import pytest

from qcg.pilotjob.api.errors import InvalidJobDescriptionError
from qcg.pilotjob.api.jobdesc import (
    MODELS,
    Execution,
    IterSchedulerSpec,
    Iteration,
    JobDescription,
    Resources,
    ResourceSize,
    parse_walltime,
)
from qcg.pilotjob.api.jobparse import parse_job, parse_jobs

SAMPLE = {  # the sample of reference 10.3.1 submit
    "name": "msleep2",
    "execution": {
        "exec": "/bin/sleep",
        "args": ["5s"],
        "env": {},
        "wd": "sleep.sandbox",
        "stdout": "sleep2.${ncores}.${nnodes}.stdout",
        "stderr": "sleep2.${ncores}.${nnodes}.stderr",
    },
    "resources": {"numCores": {"exact": 2}},
}

FULL = {
    "name": "full",
    "execution": {
        "exec": "/usr/bin/app",
        "args": ["-n", "${it}"],
        "env": {"OMP_NUM_THREADS": "4", "X": "${itval}"},
        "stdin": "in.txt",
        "stdout": "out.${it}",
        "stderr": "err.${it}",
        "wd": "wd.${it}",
        "modules": ["gcc", "openmpi"],
        "venv": "/opt/venv",
        "model": "openmpi",
        "model_opts": {"mpirun": "/opt/bin/mpirun", "mpirun_args": ["--oversubscribe"]},
    },
    "resources": {
        "numCores": {"min": 2, "scheduler": {"name": "split-into", "params": {"parts": 4}}},
        "numNodes": {"min": 1, "max": 2},
        "wt": "2h30m",
    },
    "iteration": {"start": 1, "stop": 5},
    "dependencies": {"after": ["prep", "other:${it}"]},
    "attributes": {"owner": "me", "nested": {"a": [1, 2]}},
}


def problems_of(data) -> list[str]:
    with pytest.raises(InvalidJobDescriptionError) as info:
        parse_job(data)
    return info.value.problems


def job(**overrides) -> dict:
    data = {"name": "j", "execution": {"exec": "/bin/true"}}
    data.update(overrides)
    return data


# --------------------------------------------------------------------------- acceptance


def test_reference_sample_parses():
    """reference 10.3.1 submit: the sample job description is accepted as given."""
    jd = parse_job(copy.deepcopy(SAMPLE))
    assert jd.name == "msleep2"
    assert jd.execution.exec == "/bin/sleep"
    assert jd.execution.args == ("5s",)
    assert jd.execution.env == {}
    assert jd.execution.wd == "sleep.sandbox"
    # placeholders are kept verbatim, substitution happens later
    assert jd.execution.stdout == "sleep2.${ncores}.${nnodes}.stdout"
    assert jd.resources.num_cores == ResourceSize(exact=2)
    assert jd.resources.num_nodes is None
    assert jd.iteration is None and jd.after == () and jd.attributes == {}


def test_every_attribute_parses():
    """reference 10.3.1 submit: all keys of execution, resources, iteration, dependencies."""
    jd = parse_job(copy.deepcopy(FULL))
    ex = jd.execution
    assert ex == Execution(exec="/usr/bin/app", args=("-n", "${it}"),
                           env={"OMP_NUM_THREADS": "4", "X": "${itval}"}, stdin="in.txt",
                           stdout="out.${it}", stderr="err.${it}", wd="wd.${it}",
                           modules=("gcc", "openmpi"), venv="/opt/venv", model="openmpi",
                           model_opts={"mpirun": "/opt/bin/mpirun",
                                       "mpirun_args": ["--oversubscribe"]})
    assert jd.resources.num_cores == ResourceSize(
        min=2, scheduler=IterSchedulerSpec("split-into", {"parts": 4}))
    assert jd.resources.num_nodes == ResourceSize(min=1, max=2)
    assert jd.resources.wt == 9000.0
    assert jd.iteration == Iteration(start=1, stop=5)
    assert jd.after == ("prep", "other:${it}")
    assert jd.attributes == {"owner": "me", "nested": {"a": [1, 2]}}


def test_default_resources_one_core():
    """reference 10.3.1 submit: without `resources`, numCores exact 1 is the default."""
    jd = parse_job(job())
    assert jd.resources == Resources(num_cores=ResourceSize(exact=1))
    assert jd.resources.min_cores == 1


def test_resources_with_only_wall_time_means_one_core():
    """reference Jobs.add: `wt` lives inside `resources`; alone it still means one core."""
    jd = parse_job(job(resources={"wt": "10m"}))
    assert jd.resources.num_cores == ResourceSize(exact=1)
    assert jd.resources.wt == 600.0


def test_script_job():
    """reference 10.3.1 submit: `script` is an alternative to `exec` (bash commands)."""
    jd = parse_job({"name": "s", "execution": {"script": "echo ${it}", "env": {"A": "1"}}})
    assert jd.execution.script == "echo ${it}" and jd.execution.exec is None
    assert jd.execution.env == {"A": "1"}


def test_nulls_mean_not_given():
    """reference 10.3.1 submit: optional keys; JSON null is treated as absent."""
    jd = parse_job({"name": "n", "execution": {"exec": None, "script": "true", "args": [],
                                               "env": {}, "model": None},
                    "resources": None, "iteration": None, "dependencies": None,
                    "attributes": None})
    assert jd.execution.script == "true"
    assert jd.execution.model == "default"


def test_numeric_args_and_env_become_strings():
    """reference 10.3.1 submit: args are strings; numbers are converted like the original did."""
    jd = parse_job(job(execution={"exec": "x", "args": [1, 2.5, "a"], "env": {"N": 3}}))
    assert jd.execution.args == ("1", "2.5", "a")
    assert jd.execution.env == {"N": "3"}


def test_single_module_string_accepted():
    """reference Jobs.add: `modules` may be a single string."""
    assert parse_job(job(execution={"exec": "x", "modules": "gcc"})).execution.modules == ("gcc",)


@pytest.mark.parametrize("model", MODELS)
def test_models(model):
    """reference 10.3.1 submit: the execution models; names are case-insensitive."""
    assert parse_job(job(execution={"exec": "x", "model": model.upper()})).execution.model == model


def test_resource_size_int_shorthand():
    """reference Jobs.add: numCores/numNodes may be an int meaning exact."""
    jd = parse_job(job(resources={"numCores": 4, "numNodes": 2}))
    assert jd.resources.num_cores == ResourceSize(exact=4)
    assert jd.resources.num_nodes == ResourceSize(exact=2)
    assert jd.resources.min_cores == 8


@pytest.mark.parametrize("spelling, canonical", [
    ("maximum-iters", "maximum-iters"), ("MaximumIters", "maximum-iters"),
    ("split-into", "split-into"), ("SplitInto", "split-into"), ("SPLIT-INTO", "split-into"),
])
def test_scheduler_names_normalised(spelling, canonical):
    """reference 10.3.1 submit: iteration resource schedulers maximum-iters and split-into."""
    for form in ({"name": spelling}, spelling):
        jd = parse_job(job(resources={"numCores": {"min": 1, "scheduler": form}},
                           iteration={"stop": 3}))
        assert jd.resources.num_cores.scheduler == IterSchedulerSpec(canonical, {})


def test_iteration_stop_only_starts_at_zero():
    """reference 10.3.1 submit: `start` is optional; iterations are start..stop-1."""
    it = parse_job(job(iteration={"stop": 3})).iteration
    assert (it.start, it.stop, len(it)) == (0, 3, 3)
    assert list(it.indices()) == [0, 1, 2]
    assert it.value_of(2) == "2"
    assert it.substitutions(2) == {"it": "2", "itval": "2"}


def test_iteration_range_with_start():
    """reference 10.3.1 submit: total number of iterations is stop - start."""
    it = parse_job(job(iteration={"start": 2, "stop": 5})).iteration
    assert len(it) == 3 and list(it.indices()) == [2, 3, 4]
    assert 4 in it and 5 not in it and 1 not in it
    with pytest.raises(IndexError):
        it.value_of(5)


def test_iteration_values():
    """reference 10.3.1 submit: `values` gives one iteration per element (${it} is the index)."""
    it = parse_job(job(iteration={"values": ["a", "b", 3]})).iteration
    assert len(it) == 3 and list(it.indices()) == [0, 1, 2]
    assert it.values == ("a", "b", "3")
    assert it.value_of(1) == "b"
    assert it.substitutions(1) == {"it": "1", "itval": "b"}


# --------------------------------------------------------------------------- wall time


@pytest.mark.parametrize("text, seconds", [
    ("10m", 600), ("1h", 3600), ("30s", 30), ("2h30m", 9000), ("1h0m5s", 3605),
    ("90m", 5400), ("1:30:00", 5400), ("05:00", 300), (120, 120), (1.5, 1.5), (" 1H ", 3600),
])
def test_parse_walltime_accepts(text, seconds):
    """reference Jobs.add: `wt` is the job's maximum wall time ("XhYmZs" as in the original)."""
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("bad", ["", "0s", "0h0m", "600", "1h30", "1d", "abc", "1:70:00",
                                 -5, 0, True, None, [], float("inf")])
def test_parse_walltime_rejects(bad):
    """reference Jobs.add: an unusable wall time is a clear error, not a zero limit."""
    with pytest.raises(ValueError) as info:
        parse_walltime(bad)
    assert str(info.value)


def test_bad_wall_time_in_job():
    """reference 10.3.1 submit: errors name the job and the dotted field path."""
    assert problems_of(job(resources={"numCores": 1, "wt": "600"}))[0].startswith(
        "job 'j': field 'resources.wt': ")


# --------------------------------------------------------------------------- rejection


@pytest.mark.parametrize("data, expected", [
    (job(execution={"exec": "x", "args": 5}),
     "job 'j': field 'execution.args': must be a list of strings, got int"),
    (job(execution={"exec": "x", "args": ["a", {"b": 1}]}),
     "job 'j': field 'execution.args[1]': must be a string or a number, got dict"),
    (job(execution={"exec": 5}), "job 'j': field 'execution.exec': must be a string, got int"),
    (job(execution={}), "job 'j': field 'execution': one of 'exec' or 'script' is required"),
    # null is "not given" (reference 10.3.1: a String); the original refuses these too
    (job(execution={"exec": None, "args": ["a"]}),
     "job 'j': field 'execution': one of 'exec' or 'script' is required"),
    (job(execution={"script": None}), "job 'j': field 'execution': one of 'exec' or 'script' is required"),
    (job(execution={"exec": "a", "script": "b"}),
     "job 'j': field 'execution': 'exec' and 'script' are mutually exclusive"),
    (job(execution={"script": "b", "args": ["x"]}),
     "job 'j': field 'execution.args': not allowed with 'script'"),
    (job(execution={"exec": "x", "env": ["A=1"]}),
     "job 'j': field 'execution.env': must be a dict of strings, got list"),
    (job(execution={"exec": "x", "env": {"A": [1]}}),
     "job 'j': field 'execution.env.A': must be a string, got list"),
    (job(execution={"exec": "x", "stdout": 1}),
     "job 'j': field 'execution.stdout': must be a string, got int"),
    (job(execution={"exec": "x", "modules": [1]}),
     "job 'j': field 'execution.modules[0]': must be a string, got int"),
    (job(execution={"exec": "x", "model_opts": []}),
     "job 'j': field 'execution.model_opts': must be a dict, got list"),
    (job(execution={"exec": "x", "model_opts": {"mpirun_args": "-x"}}),
     "job 'j': field 'execution.model_opts.mpirun_args': must be a list of strings, got str"),
    (job(execution="x"), "job 'j': field 'execution': must be a dict, got str"),
    ({"name": "j"}, "job 'j': field 'execution': is required"),
    (job(resources=[]), "job 'j': field 'resources': must be a dict, got list"),
    (job(resources={"numCores": {"exact": 0}}),
     "job 'j': field 'resources.numCores.exact': must be a positive integer, got 0"),
    (job(resources={"numCores": {"exact": 1.5}}),
     "job 'j': field 'resources.numCores.exact': must be a positive integer, got float"),
    (job(resources={"numCores": {"exact": True}}),
     "job 'j': field 'resources.numCores.exact': must be a positive integer, got bool"),
    (job(resources={"numCores": {"exact": 2, "min": 1}}),
     "job 'j': field 'resources.numCores': 'exact' and 'min'/'max' are mutually exclusive"),
    (job(resources={"numNodes": {"min": 3, "max": 2}}),
     "job 'j': field 'resources.numNodes': 'min' (3) must not be greater than 'max' (2)"),
    (job(resources={"numCores": {}}),
     "job 'j': field 'resources.numCores': one of 'exact', 'min' or 'max' is required"),
    (job(resources={"numCores": {"exact": 2, "scheduler": {"name": "split-into"}}}),
     "job 'j': field 'resources.numCores.scheduler': not allowed with 'exact' (use 'min')"),
    (job(resources={"numCores": {"min": 1, "max": 4, "scheduler": {"name": "maximum-iters"}}}),
     "job 'j': field 'resources.numCores.scheduler': maximum-iters cannot be combined with 'max'"),
    (job(resources={"numCores": {"min": 1, "scheduler": {"name": "greedy"}}}),
     "job 'j': field 'resources.numCores.scheduler.name': unknown scheduler 'greedy' "
     "(known: maximum-iters, split-into)"),
    (job(resources={"numCores": {"min": 1, "scheduler": {"name": "split-into",
                                                         "params": {"parts": 0}}}}),
     "job 'j': field 'resources.numCores.scheduler.params.parts': must be a positive integer, got 0"),
    (job(iteration=5), "job 'j': field 'iteration': must be a dict with 'stop' (and optional "
                       "'start') or 'values', got int"),
    (job(iteration={"start": 1}), "job 'j': field 'iteration': one of 'stop' or 'values' is required"),
    (job(iteration={"start": 3, "stop": 3}),
     "job 'j': field 'iteration': 'start' (3) must be less than 'stop' (3)"),
    (job(iteration={"stop": "3"}), "job 'j': field 'iteration.stop': must be an integer, got str"),
    # numbers beyond what JSON readers keep exact used to fail later, in range() or the journal's msgpack
    (job(resources={"numCores": {"exact": 10 ** 23}}),
     "job 'j': field 'resources.numCores.exact': must be between 1 and 9007199254740991, got "
     "100000000000000000000000"),
    (job(resources={"numNodes": 2 ** 53}),
     "job 'j': field 'resources.numNodes': must be between 1 and 9007199254740991, got 9007199254740992"),
    (job(iteration={"stop": 10 ** 40}),
     "job 'j': field 'iteration.stop': must be between -9007199254740991 and 9007199254740991, got more"),
    (job(iteration={"start": -(2 ** 53), "stop": 2}),
     "job 'j': field 'iteration.start': must be between -9007199254740991 and 9007199254740991, got "
     "-9007199254740992"),
    (job(iteration={"stop": 3, "values": ["a"]}),
     "job 'j': field 'iteration': 'stop' and 'values' are mutually exclusive"),
    (job(iteration={"values": []}), "job 'j': field 'iteration.values': must not be empty"),
    (job(dependencies=["a"]), "job 'j': field 'dependencies': must be a dict with 'after', got list"),
    (job(dependencies={"after": "a"}),
     "job 'j': field 'dependencies.after': must be a list of strings, got str"),
    (job(dependencies={"after": [1]}),
     "job 'j': field 'dependencies.after[0]': must be a string, got int"),
    (job(dependencies={"after": ["j"]}),
     "job 'j': field 'dependencies.after': a job cannot depend on itself"),
    (job(attributes=[1]), "job 'j': field 'attributes': must be a dict, got list"),
    # json.loads takes ~10 000 levels on 3.13 (1 500 on 3.12): deeper ones failed in recursive code
    (job(attributes={"x": json.loads("[" * 150 + "]" * 150)}),
     "job 'j': field 'attributes': nested deeper than 100 levels"),
])
def test_one_clear_message_per_problem(data, expected):
    """reference 10.3.1 submit: each wrong element gives one message (job, field path, reason)."""
    assert problems_of(data) == [expected]


@pytest.mark.parametrize("data, field", [
    (job(extra=1), "extra"),
    (job(execution={"exec": "x", "argz": []}), "execution.argz"),
    (job(resources={"numCores": 1, "cores": 2}), "resources.cores"),
    (job(resources={"numCores": {"exact": 1, "maximum": 2}}), "resources.numCores.maximum"),
    (job(iteration={"stop": 2, "step": 1}), "iteration.step"),
    (job(dependencies={"after": [], "before": []}), "dependencies.before"),
    (job(execution={"exec": "x", "model_opts": {"mpirun_arg": []}}), "execution.model_opts.mpirun_arg"),
])
def test_unknown_keys_rejected_by_name(data, field):
    """reference 10.3.1 submit: only the documented keys exist (the original refused others too)."""
    problems = problems_of(data)
    assert len(problems) == 1
    assert problems[0].startswith(f"job 'j': field '{field}': unknown key (allowed: ")


@pytest.mark.parametrize("name, reason", [
    (None, "is required"),
    ("", "must not be empty"),
    (7, "must be a string, got int"),
    ("a:1", "must not contain ':'"),
    ("job_${rcnt}", "must not contain placeholders (${...})"),
    ("two words", "must not contain whitespace or control characters"),
    ("quote'", "must not contain \"'\""),
])
def test_invalid_names(name, reason):
    """reference 10.3.1 submit: the name cannot contain any variable or special character."""
    data = {"execution": {"exec": "x"}} if name is None else {"name": name, "execution": {"exec": "x"}}
    assert problems_of(data) == [f"job #1: field 'name': {reason}"]


def test_all_problems_of_a_job_reported():
    """reference 10.3.1 submit: every problem is reported, not only the first."""
    problems = problems_of({"name": "a:b", "execution": {"exec": 1, "args": 2},
                            "resources": {"numCores": {"exact": -1}}, "iteration": {}, "foo": 1})
    assert problems == [
        "job #1: field 'name': must not contain ':'",
        "job #1: field 'foo': unknown key (allowed: attributes, dependencies, execution, "
        "iteration, name, resources)",
        "job #1: field 'execution.exec': must be a string, got int",
        "job #1: field 'execution.args': must be a list of strings, got int",
        "job #1: field 'resources.numCores.exact': must be a positive integer, got -1",
        "job #1: field 'iteration': one of 'stop' or 'values' is required",
    ]


def test_parse_jobs_collects_problems_of_all_jobs_and_duplicates():
    """reference 10.3.1 submit: the `jobs` list is validated as a whole (all or nothing)."""
    data = [job(name="a"), "oops", job(name="b", execution={"exec": 3}), job(name="a"),
            {"execution": {"exec": "x"}}, job(name="b")]
    with pytest.raises(InvalidJobDescriptionError) as info:
        parse_jobs(data)
    assert info.value.problems == [
        "job #2: must be a dict (JSON object), got str",
        "job 'b': field 'execution.exec': must be a string, got int",
        "job 'a': field 'name': duplicate name (also job #1 of this request)",
        "job #5: field 'name': is required",
        "job 'b': field 'name': duplicate name (also job #3 of this request)",
    ]
    assert "job #2" in str(info.value) and "job 'a'" in str(info.value)


def test_parse_jobs_ok_and_container_errors():
    """reference 10.3.1 submit: `jobs` must be a non-empty list of job descriptions."""
    jobs = parse_jobs([job(name="a"), job(name="b", dependencies={"after": ["a"]})])
    assert [j.name for j in jobs] == ["a", "b"] and jobs[1].after == ("a",)
    for bad in ({}, None, "x", []):
        with pytest.raises(InvalidJobDescriptionError) as info:
            parse_jobs(bad)
        assert info.value.problems[0].startswith("jobs: ")


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("data", [SAMPLE, FULL, job(), job(iteration={"values": ["x", "y"]}),
                                  {"name": "s", "execution": {"script": "ls", "env": {"A": "b"}},
                                   "resources": {"numNodes": {"exact": 2}, "wt": 90.5,
                                                 "nodeCrs": {"gpu": 1}}}])
def test_to_dict_round_trips(data):
    """reference 10.3.1 submit: to_dict gives the standard JSON form accepted again by parse_job."""
    jd = parse_job(copy.deepcopy(data))
    dumped = jd.to_dict()
    assert json.loads(json.dumps(dumped)) == dumped  # plain JSON
    assert parse_job(dumped) == jd
    assert set(dumped) <= {"name", "execution", "resources", "iteration", "dependencies",
                           "attributes"}


def test_to_dict_standard_keys():
    """reference 10.3.1 submit: key names of the standard format (numCores, wt in resources)."""
    d = parse_job(copy.deepcopy(FULL)).to_dict()
    assert d["resources"] == {
        "numCores": {"min": 2, "scheduler": {"name": "split-into", "params": {"parts": 4}}},
        "numNodes": {"min": 1, "max": 2}, "wt": "2h30m"}
    assert d["iteration"] == {"start": 1, "stop": 5}
    assert d["dependencies"] == {"after": ["prep", "other:${it}"]}
    assert d["execution"]["model_opts"] == {"mpirun": "/opt/bin/mpirun",
                                            "mpirun_args": ["--oversubscribe"]}


def test_objects_are_immutable_and_input_untouched():
    """reference 10.3.1 submit: parsing does not modify the request's data."""
    data = copy.deepcopy(FULL)
    jd = parse_job(data)
    assert data == FULL
    with pytest.raises(AttributeError):
        jd.name = "other"  # type: ignore[misc]
    assert isinstance(jd, JobDescription)


# --------------------------------------------------------------------------- robustness

_SCALARS = [None, True, False, 0, -1, 1, 7, 2.5, float("nan"), "", "x", "a:b", "${it}", "10m",
            "maximum-iters", "default", [], {}, ["a"], [1, None], {"a": 1}, {"exact": 2},
            {"name": "split-into"}, {1: 2}, ("t",), b"bytes"]


def _random_value(rng: random.Random, depth: int = 0):
    if depth > 2 or rng.random() < 0.6:
        return rng.choice(_SCALARS)
    if rng.random() < 0.5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["exec", "args", "min", "max", "exact", "stop", "values", "name", "after", "params", "zz"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _mutate(rng: random.Random, data):
    """Change, delete or add one key somewhere in a nested dict/list."""
    if isinstance(data, dict) and data:
        key = rng.choice(list(data))
        roll = rng.random()
        if roll < 0.2:
            del data[key]
        elif roll < 0.35:
            data[rng.choice(["zz", "exec", "min", "start", "values", "scheduler"])] = \
                _random_value(rng)
        elif roll < 0.7 and isinstance(data[key], (dict, list)):
            _mutate(rng, data[key])
        else:
            data[key] = _random_value(rng)
    elif isinstance(data, list) and data:
        i = rng.randrange(len(data))
        if isinstance(data[i], (dict, list)) and rng.random() < 0.5:
            _mutate(rng, data[i])
        else:
            data[i] = _random_value(rng)


def test_random_mutations_never_escape_as_other_errors():
    """reference 10.3.1 submit: any JSON-shaped input gives a description or a clear error."""
    rng = random.Random(20240611)
    bases = [SAMPLE, FULL, job(iteration={"values": ["a"]}),
             job(resources={"numNodes": {"min": 1, "scheduler": {"name": "maximum-iters"}},
                            "nodeCrs": {"MEM": 2}})]
    accepted = rejected = 0
    for _ in range(3000):
        data = copy.deepcopy(rng.choice(bases))
        for _ in range(rng.randint(1, 4)):
            _mutate(rng, data)
        try:
            jd = parse_job(data)
        except InvalidJobDescriptionError as exc:
            rejected += 1
            assert exc.problems and all(p.startswith("job ") for p in exc.problems)
        else:
            accepted += 1
            assert parse_job(jd.to_dict()) == jd
    assert accepted > 100 and rejected > 100
    # whole random values as a job or as the job list
    for _ in range(500):
        value = _random_value(rng)
        for func in (parse_job, parse_jobs):
            try:
                func(value)
            except InvalidJobDescriptionError:
                pass


def test_equal_parts_of_one_request_are_shared():
    """Equal `execution` / `resources` maps of one submit parse to one object; others stay apart."""
    same = {"execution": {"exec": "/bin/true", "args": ["a"]}, "resources": {"numCores": {"exact": 2}}}
    jobs = parse_jobs([dict(same, name="a"), dict(same, name="b"),
                       {"name": "c", "execution": {"exec": "/bin/true", "args": ["b"]},
                        "resources": {"numCores": {"exact": 2}}}])
    assert jobs[0].execution is jobs[1].execution
    assert jobs[0].resources is jobs[1].resources is jobs[2].resources
    assert jobs[2].execution is not jobs[0].execution
    assert jobs[2].execution.args == ("b",)


def test_an_invalid_part_repeated_is_reported_for_every_job():
    bad = {"exec": "/bin/true", "args": "not-a-list"}
    with pytest.raises(InvalidJobDescriptionError) as err:
        parse_jobs([{"name": "a", "execution": bad}, {"name": "b", "execution": dict(bad)}])
    problems = err.value.problems
    assert any("job 'a'" in p and "execution.args" in p for p in problems)
    assert any("job 'b'" in p and "execution.args" in p for p in problems)
