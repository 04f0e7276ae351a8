"""`Jobs` of the client API (reference 22.1.2) and Executor API template rendering (reference 11.2.3)."""

from __future__ import annotations

import json

import pytest

from qcg.pilotjob.api.errors import FileError, InvalidJobDescriptionError, JobNotDefinedError
from qcg.pilotjob.api.executor.templates import BasicTemplate, QCGPJTemplate, render_template
from qcg.pilotjob.api.job import Jobs


def test_add_simple_converts_to_standard():
    jobs = Jobs().add(name="a", exec="/bin/echo", args=["x", "y z"], stdout="out", stderr="err", stdin="in",
                      wd="w", numCores=2, numNodes={"min": 1, "max": 2}, wt="10m", after="b",
                      model="threads", model_opts={"mpirun": "mpirun"}, modules=["m1"], venv="/v",
                      env={"K": "V"})
    assert jobs.jobs() == [{
        "name": "a",
        "execution": {"exec": "/bin/echo", "args": ["x", "y z"], "stdin": "in", "stdout": "out", "stderr": "err",
                      "wd": "w", "modules": ["m1"], "venv": "/v", "model": "threads",
                      "model_opts": {"mpirun": "mpirun"}, "env": {"K": "V"}},
        "resources": {"numCores": {"exact": 2}, "numNodes": {"min": 1, "max": 2}, "wt": "10m"},
        "dependencies": {"after": ["b"]},
    }]


def test_reference_example_add_script_with_iterations():
    # reference 3.1: unnamed script job with 4 iterations
    jobs = Jobs().add(script='echo "job ${it} executed at `date` @ `hostname`"', stdout="job.out.${it}",
                      iteration=4)
    (job,) = jobs.jobs()
    assert job["execution"] == {"script": 'echo "job ${it} executed at `date` @ `hostname`"',
                                "stdout": "job.out.${it}"}
    assert job["iteration"] == {"start": 0, "stop": 4}
    assert len(job["name"]) == 36  # a generated uuid4


def test_iteration_forms():
    jobs = Jobs()
    jobs.add(name="i", exec="/bin/true", iteration=3)
    jobs.add(name="l", exec="/bin/true", iteration=["a", "b"])
    jobs.add(name="d", exec="/bin/true", iteration={"start": 2, "stop": 5})
    got = {j["name"]: j["iteration"] for j in jobs.jobs()}
    assert got == {"i": {"start": 0, "stop": 3}, "l": {"values": ["a", "b"]}, "d": {"start": 2, "stop": 5}}


def test_args_string_is_one_argument_and_after_list():
    (job,) = Jobs().add(name="a", exec="/bin/echo", args="hello world", after=["x", "y"]).jobs()
    assert job["execution"]["args"] == ["hello world"]
    assert job["dependencies"] == {"after": ["x", "y"]}


def test_job_attrs_dict_merged_with_keywords():
    (job,) = Jobs().add({"name": "a", "exec": "/bin/false"}, exec="/bin/true").jobs()
    assert job["execution"]["exec"] == "/bin/true"


@pytest.mark.parametrize("attrs, fragment", [
    ({"name": "a"}, "one of 'exec' or 'script'"),
    ({"name": "a", "exec": "x", "script": "y"}, "mutually exclusive"),
    ({"name": "a", "exec": "x", "bogus": 1}, "unknown attribute 'bogus'"),
    ({"name": "a", "exec": 5}, "'exec' must be str"),
    ({"name": "a", "exec": "x", "numCores": "two"}, "'numCores' must be int or dict"),
    ({"name": "a", "exec": "x", "numCores": {"exact": 1, "min": 1}}, "mutually exclusive"),
    ({"name": "a", "exec": "x", "numCores": {"lots": 1}}, "unknown numCores attribute 'lots'"),
    ({"name": "a", "exec": "x", "iteration": {"stop": 3, "values": ["a"]}}, "mutually exclusive"),
    ({"name": "a", "exec": "x", "iteration": {"stepp": 3}}, "unknown iteration attribute"),
    ({"name": "a", "exec": "x", "iteration": 100_000}, "too many iterations"),
    ({"name": "a:1", "exec": "x"}, "name"),
    ({"name": "a", "exec": "x", "wt": "soon"}, "wt"),
])
def test_add_invalid(attrs, fragment):
    jobs = Jobs()
    with pytest.raises(InvalidJobDescriptionError) as info:
        jobs.add(**attrs)
    assert fragment in str(info.value)
    assert jobs.job_names() == []


def test_duplicate_names_refused():
    jobs = Jobs().add(name="a", exec="/bin/true")
    with pytest.raises(InvalidJobDescriptionError, match="already in the group"):
        jobs.add(name="a", exec="/bin/true")
    with pytest.raises(InvalidJobDescriptionError, match="already in the group"):
        jobs.add_std(name="a", execution={"exec": "/bin/true"})


def test_add_std_validates_and_keeps_description():
    desc = {"name": "s", "execution": {"exec": "/bin/true", "args": ["1"]}, "resources": {"numCores": {"exact": 1}}}
    jobs = Jobs().add_std(desc)
    assert jobs.jobs() == [desc]
    with pytest.raises(InvalidJobDescriptionError, match="execution"):
        Jobs().add_std(name="x", execution={"args": ["1"]})
    with pytest.raises(InvalidJobDescriptionError, match="bogus"):
        Jobs().add_std(name="x", execution={"exec": "y"}, bogus=1)
    (generated,) = Jobs().add_std(execution={"exec": "/bin/true"}).jobs()
    assert generated["name"]


def test_order_remove_clear():
    jobs = Jobs()
    for name in ("c", "a", "b"):
        jobs.add(name=name, exec="/bin/true")
    assert jobs.ordered_job_names() == ["c", "a", "b"]
    assert [j["name"] for j in jobs.ordered_jobs()] == ["c", "a", "b"]
    assert sorted(jobs.job_names()) == ["a", "b", "c"]
    jobs.remove("a")
    assert jobs.ordered_job_names() == ["c", "b"]
    with pytest.raises(JobNotDefinedError):
        jobs.remove("a")
    assert jobs.clear() == 2
    assert jobs.jobs() == [] and jobs.clear() == 0


def test_save_and_load_roundtrip(tmp_path):
    jobs = Jobs().add(name="a", exec="/bin/true").add(name="b", script="echo", iteration=2)
    path = tmp_path / "jobs.json"
    jobs.save_to_file(str(path))
    assert json.loads(path.read_text()) == jobs.ordered_jobs()
    loaded = Jobs()
    loaded.load_from_file(str(path))
    assert loaded.ordered_jobs() == jobs.ordered_jobs()
    # loading again: duplicate names, nothing added
    with pytest.raises(InvalidJobDescriptionError):
        loaded.load_from_file(str(path))
    assert loaded.ordered_job_names() == ["a", "b"]


def test_file_errors(tmp_path):
    with pytest.raises(FileError):
        Jobs().load_from_file(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FileError):
        Jobs().load_from_file(str(bad))
    bad.write_text('{"name": "a"}')
    with pytest.raises(FileError, match="list"):
        Jobs().load_from_file(str(bad))
    with pytest.raises(FileError):
        Jobs().add(name="a", exec="x").save_to_file(str(tmp_path / "no" / "such" / "dir.json"))


# ------------------------------------------------------------------ Executor API templates


def test_basic_template_rendering():
    template, defaults = BasicTemplate.template()
    assert "${name}" in template and defaults == {"args": [], "stdout": "stdout", "stderr": "stderr"}
    assert render_template(BasicTemplate.template, name="tj", exec="date") == {
        "name": "tj", "execution": {"exec": "date", "args": [], "stdout": "stdout", "stderr": "stderr"}}


def test_template_precedence_kwargs_over_args_over_defaults():
    got = render_template(BasicTemplate.template, {"name": "a", "exec": "b", "stdout": "o1"}, {"stdout": "o2"},
                          exec="c")
    assert got["name"] == "a" and got["execution"]["exec"] == "c" and got["execution"]["stdout"] == "o2"


def test_template_values_with_quotes_backslashes_newlines_survive():
    value = "it's \"quoted\" \\ back\nslash ${x} $$"
    got = render_template(BasicTemplate.template, name="n", exec=value)
    assert got["execution"]["exec"] == value


def test_template_bare_values_as_literals():
    assert render_template(BasicTemplate.template, name="n", exec="e", args=["1", 2])["execution"]["args"] == ["1", 2]
    # a string that is itself a literal is inserted as written (as the original did)
    got = render_template(BasicTemplate.template, name="n", exec="cat", args='["-v", "/etc/hostname"]')
    assert got["execution"]["args"] == ["-v", "/etc/hostname"]
    # any other string becomes a quoted string, never code
    got = render_template(lambda: "{'name': 'n', 'execution': {'exec': 'e'}, 'attributes': {'x': ${x}}}",
                          x="__import__('os')")
    assert got["attributes"]["x"] == "__import__('os')"


def test_template_missing_value_raises_keyerror():
    with pytest.raises(KeyError, match="exec"):
        render_template(BasicTemplate.template, name="tj")


def test_template_json_and_dollar_escapes():
    got = render_template(lambda: ('{"name": "${n}", "execution": {"script": "echo $1 $$HOME ${it2}"},'
                                   ' "attributes": {"a": true, "b": null}}', {"it2": "$${it}"}), n="q")
    assert got == {"name": "q", "execution": {"script": "echo $1 $HOME $${it}"}, "attributes": {"a": True, "b": None}}


def test_template_without_defaults_and_base_class():
    got = render_template(lambda: "{'name': 'tj', 'execution': {'exec': 'date'}}")
    assert got["execution"]["exec"] == "date"
    with pytest.raises(NotImplementedError):
        QCGPJTemplate.template()
    with pytest.raises(ValueError):
        render_template(lambda: "{'name': ${n}", n="x")
