"""Resources of a Slurm allocation read from the environment.

Reference: option list (``--resources``, ``--slurm-limit-nodes-range-begin``,
``--slurm-limit-nodes-range-end``, ``--slurm-resources-file``,
``--system-core``) and 8.1 "Slurm execution environment" (``SLURM_NODELIST``,
``SLURM_TASKS_PER_NODE`` ...). No Slurm needed: the environment is a dict.
"""

from __future__ import annotations

import json

import pytest

from qcg.pilotjob.partition.resources import Node, Resources
from qcg.pilotjob.partition.slurm_cpu_ids import parse_cpu_ids
from qcg.pilotjob.partition.task import ResourceRequest
from qcg.pilotjob.partition.slurm_resources import (
    in_slurm_allocation,
    parse_cpu_bind_list,
    parse_slurm_counts,
    parse_slurm_nodelist,
    read_resources_file,
    resources_to_dict,
    select_node_range,
    slurm_cluster_name,
    slurm_nodes,
    slurm_resources,
    write_resources_file,
)


def env(nodelist, cpus=None, tasks=None, **extra):
    e = {"SLURM_NODELIST": nodelist, "SLURM_JOB_NODELIST": nodelist}
    if cpus is not None:
        e["SLURM_JOB_CPUS_PER_NODE"] = cpus
    if tasks is not None:
        e["SLURM_TASKS_PER_NODE"] = tasks
    e.update(extra)
    return e


def shape(res: Resources):
    return [(n.name, n.total) for n in res.nodes]


# -- node lists (8.1: SLURM_NODELIST) ------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("n1", ["n1"]),
    ("n[1-4]", ["n1", "n2", "n3", "n4"]),
    ("n[01-10]", [f"n{i:02d}" for i in range(1, 11)]),
    ("a1,b[2-3]", ["a1", "b2", "b3"]),
    ("b[2-3],a1", ["b2", "b3", "a1"]),              # Slurm's order kept
    ("rack[1-2]-node[1-2]", ["rack1-node1", "rack1-node2", "rack2-node1", "rack2-node2"]),
    ("n[1,3,5-6]", ["n1", "n3", "n5", "n6"]),
    (" n[1-2] ", ["n1", "n2"]),
])
def test_nodelist_forms(value, expected):
    assert parse_slurm_nodelist(value) == expected


@pytest.mark.parametrize("value, fragment", [
    ("n[1-", "is malformed"),
    ("n[3-1]", "is malformed"),
    ("", "lists no nodes"),
    ("n[1-2],n1", "more than once"),
])
def test_nodelist_errors_name_variable_and_value(value, fragment):
    with pytest.raises(ValueError) as exc:
        parse_slurm_nodelist(value, "SLURM_NODELIST")
    assert str(exc.value).startswith(f"SLURM_NODELIST={value!r}")
    assert fragment in str(exc.value)


# -- per-node counts (8.1: SLURM_TASKS_PER_NODE; SLURM_JOB_CPUS_PER_NODE) -------------------

@pytest.mark.parametrize("value, expected", [
    ("4", [4]),
    ("2(x3),1", [2, 2, 2, 1]),
    ("2(x3)", [2, 2, 2]),
    ("1,2(x2),3", [1, 2, 2, 3]),
    ("36(x2)", [36, 36]),
])
def test_count_forms(value, expected):
    assert parse_slurm_counts(value) == expected


@pytest.mark.parametrize("value", ["2(x3", "x", "", "-1", "3(x2),", "two", "0", "2(x0)",
                                   # no cap: a traceback (OverflowError), or a billion-entry list
                                   "99999999999999999999", "2(x1000000000)", "65537"])
def test_count_errors_name_variable_and_value(value):
    with pytest.raises(ValueError) as exc:
        parse_slurm_counts(value, "SLURM_JOB_CPUS_PER_NODE")
    assert str(exc.value).startswith(f"SLURM_JOB_CPUS_PER_NODE={value!r} ")


def test_malformed_message_example():
    with pytest.raises(ValueError, match=r"^SLURM_JOB_CPUS_PER_NODE='2\(x3' is malformed"):
        slurm_resources(env("n[1-4]", cpus="2(x3"))


# -- whole allocation -------------------------------------------------------------------

def test_single_node():
    res = slurm_resources(env("node7", cpus="8"))
    assert shape(res) == [("node7", 8)]
    assert res.nodes[0].core_ids == tuple(range(8))


def test_run_length_counts_match_nodes():
    res = slurm_resources(env("n[1-4]", cpus="2(x3),1", tasks="1(x4)"))
    assert shape(res) == [("n1", 2), ("n2", 2), ("n3", 2), ("n4", 1)]
    assert res.info() == {"total_nodes": 4, "total_cores": 7, "used_cores": 0, "free_cores": 7}


def test_mixed_nodelist():
    res = slurm_resources(env("a1,b[2-3]", cpus="4,2(x2)"))
    assert shape(res) == [("a1", 4), ("b2", 2), ("b3", 2)]


def test_job_cpus_preferred_over_tasks():
    """salloc -N2 --exclusive: one task per node, but the job owns every CPU."""
    res = slurm_resources(env("n[1-2]", cpus="2(x2)", tasks="1(x2)"))
    assert shape(res) == [("n1", 2), ("n2", 2)]


def test_tasks_per_node_when_cpus_not_given():
    res = slurm_resources(env("n[1-3]", tasks="2(x2),1"))
    assert shape(res) == [("n1", 2), ("n2", 2), ("n3", 1)]


def test_cpus_per_task_multiplies_tasks_per_node():
    res = slurm_resources(env("n[1-2]", tasks="2(x2)", SLURM_CPUS_PER_TASK="3"))
    assert shape(res) == [("n1", 6), ("n2", 6)]


def test_cpus_per_task_ignored_when_job_cpus_known():
    res = slurm_resources(env("n[1-2]", cpus="4(x2)", tasks="2(x2)", SLURM_CPUS_PER_TASK="2"))
    assert shape(res) == [("n1", 4), ("n2", 4)]


@pytest.mark.parametrize("value", ["0", "x", "-2", "1.5"])
def test_bad_cpus_per_task(value):
    with pytest.raises(ValueError, match=rf"^SLURM_CPUS_PER_TASK={value!r} is malformed"):
        slurm_resources(env("n1", tasks="2", SLURM_CPUS_PER_TASK=value))


def test_mismatched_counts_error_names_both_variables():
    with pytest.raises(ValueError) as exc:
        slurm_resources(env("n[1-4]", cpus="2(x3)"))
    msg = str(exc.value)
    assert "SLURM_JOB_CPUS_PER_NODE='2(x3)' gives 3 node counts" in msg
    assert "SLURM_JOB_NODELIST='n[1-4]' lists 4 nodes" in msg


def test_mismatch_of_tasks_reported_with_its_variable():
    with pytest.raises(ValueError, match=r"^SLURM_TASKS_PER_NODE='2' gives 1 node count but SLURM_NODELIST"):
        slurm_resources(env("n[1-2]", tasks="2"))


def test_unused_tasks_variable_is_not_checked():
    """SLURM_TASKS_PER_NODE of a step may not match the job's node list (the original's governor hack)."""
    res = slurm_resources(env("n[1-2]", cpus="2(x2)", tasks="1"))
    assert shape(res) == [("n1", 2), ("n2", 2)]


def test_job_nodelist_pairs_with_job_cpus_inside_a_step():
    """Inside `srun -N1`, SLURM_NODELIST is the step's; SLURM_JOB_CPUS_PER_NODE describes the job."""
    e = {"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_NODELIST": "n2",
         "SLURM_JOB_CPUS_PER_NODE": "2(x3)", "SLURM_TASKS_PER_NODE": "1"}
    assert [name for name, _ in slurm_nodes(e)] == ["n1", "n2", "n3"]
    del e["SLURM_JOB_CPUS_PER_NODE"]
    assert slurm_nodes(e) == [("n2", [0])]


def test_only_one_nodelist_variable_is_enough():
    assert slurm_nodes({"SLURM_NODELIST": "n[1-2]", "SLURM_JOB_CPUS_PER_NODE": "1(x2)"}) == \
        [("n1", [0]), ("n2", [0])]
    assert slurm_nodes({"SLURM_JOB_NODELIST": "n1", "SLURM_TASKS_PER_NODE": "3"}) == [("n1", [0, 1, 2])]


@pytest.mark.parametrize("e, fragment", [
    ({}, "neither SLURM_NODELIST nor SLURM_JOB_NODELIST is set"),
    ({"SLURM_NODELIST": "n1"}, "neither SLURM_JOB_CPUS_PER_NODE nor SLURM_TASKS_PER_NODE is set"),
    ({"SLURM_NODELIST": "n[1-", "SLURM_JOB_CPUS_PER_NODE": "1"}, "SLURM_NODELIST='n[1-' is malformed"),
])
def test_missing_or_bad_environment(e, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[")):
        slurm_resources(e)


# -- core ids from the CPU binding ------------------------------------------------------

def test_core_ids_default_zero_based():
    assert slurm_nodes(env("n[1-2]", cpus="3,2")) == [("n1", [0, 1, 2]), ("n2", [0, 1])]


def test_cpu_bind_list_gives_real_core_ids():
    e = env("n[1-2]", cpus="2(x2)", SLURM_CPU_BIND_TYPE="mask_cpu:", SLURM_CPU_BIND_LIST="0x4,0x8")
    res = slurm_resources(e)
    assert [n.core_ids for n in res.nodes] == [(2, 3), (2, 3)]
    alloc = res.allocate(ResourceRequest(cores_min=1, cores_max=1))
    assert alloc.nodes == (("n1", (2,)),)


def test_cpu_bind_list_trimmed_to_node_cores():
    e = env("n[1-2]", cpus="2,1", SLURM_CPU_BIND_TYPE="mask_cpu", SLURM_CPU_BIND_LIST="0xF0")
    assert slurm_nodes(e) == [("n1", [4, 5]), ("n2", [4])]


def test_cpu_bind_ignored_without_mask_type():
    e = env("n1", cpus="2", SLURM_CPU_BIND_TYPE="none", SLURM_CPU_BIND_LIST="0xF0")
    assert slurm_nodes(e) == [("n1", [0, 1])]


def test_cpu_bind_list_too_short():
    e = env("n1", cpus="4", SLURM_CPU_BIND_TYPE="mask_cpu:", SLURM_CPU_BIND_LIST="0x3")
    with pytest.raises(ValueError, match=r"^SLURM_CPU_BIND_LIST='0x3' gives 2 CPUs but a node has 4 cores"):
        slurm_resources(e)


@pytest.mark.parametrize("value, expected", [
    ("0x3", [0, 1]), ("0x1,0x2", [0, 1]), ("C", [2, 3]), ("0x0000000000000030", [4, 5]),
])
def test_parse_cpu_bind_list(value, expected):
    assert parse_cpu_bind_list(value) == expected


@pytest.mark.parametrize("value", ["0x0", "zz", "", "0x3,,0x4"])
def test_parse_cpu_bind_list_errors(value):
    with pytest.raises(ValueError, match=r"^SLURM_CPU_BIND_LIST="):
        parse_cpu_bind_list(value)


# -- --slurm-limit-nodes-range-begin / -end -------------------------------------------

ALLOC = env("n[1-6]", cpus="2(x6)")


@pytest.mark.parametrize("begin, end, names", [
    (None, None, ["n1", "n2", "n3", "n4", "n5", "n6"]),
    (2, None, ["n3", "n4", "n5", "n6"]),
    (None, 2, ["n1", "n2"]),
    (2, 4, ["n3", "n4"]),                 # 0-based, end exclusive (as the original slices)
    (4, 100, ["n5", "n6"]),               # end clipped to the allocation
    (0, 1, ["n1"]),
])
def test_node_range(begin, end, names):
    res = slurm_resources(ALLOC, limit_begin=begin, limit_end=end)
    assert [n.name for n in res.nodes] == names


@pytest.mark.parametrize("begin, end, fragment", [
    (4, 2, "begin 4 is greater than end 2"),
    (3, 3, "selects no nodes"),
    (6, None, "selects no nodes"),
    (None, 0, "selects no nodes"),
    (-1, None, "--slurm-limit-nodes-range-begin -1: must be a non-negative integer"),
    (None, "3", "--slurm-limit-nodes-range-end '3': must be a non-negative integer"),
])
def test_node_range_errors(begin, end, fragment):
    with pytest.raises(ValueError, match=fragment):
        slurm_resources(ALLOC, limit_begin=begin, limit_end=end)


def test_select_node_range_plain_sequence():
    assert select_node_range(list("abcdef"), 1, 3) == ["b", "c"]


# -- --system-core ------------------------------------------------------------------------

def test_system_core_reserves_first_core_of_first_node():
    res = slurm_resources(env("n[1-2]", cpus="2(x2)"), system_core=True)
    assert res.system_core == ("n1", 0)
    assert res.info() == {"total_nodes": 2, "total_cores": 4, "used_cores": 1, "free_cores": 3}


def test_system_core_with_range_and_real_ids():
    e = env("n[1-3]", cpus="2(x3)", SLURM_CPU_BIND_TYPE="mask_cpu:", SLURM_CPU_BIND_LIST="0xC")
    res = slurm_resources(e, limit_begin=1, system_core=True)
    assert res.system_core == ("n2", 2)


# -- CPU_IDs of scontrol ------------------------------------------------------------------

SCONTROL = ("JobId=7 JobName=x NumNodes=3 NumCPUs=4 NodeList=n[5-7] Nodes=n5 CPU_IDs=0-1 Mem=0 GRES= "
            "Nodes=n[6-7] CPU_IDs=1 Mem=0 GRES= Power=")


def test_cpu_ids_of_scontrol_are_parsed_per_node():
    assert parse_cpu_ids(SCONTROL) == {"n5": [0, 1], "n6": [1], "n7": [1]}
    assert parse_cpu_ids("Nodes=a CPU_IDs=0,2-3,8 Mem=0") == {"a": [0, 2, 3, 8]}
    with pytest.raises(ValueError):
        parse_cpu_ids("Nodes=a CPU_IDs=3-1 Mem=0")


def test_the_cpus_slurm_allocated_are_the_core_ids():
    """Helper report: jobs sharing a node both took ids 0..n-1 and bound their tasks to the same CPU."""
    e = env("n[5-7]", cpus="2,1(x2)", SLURM_JOB_ID="7")
    res = slurm_resources(e, cpu_ids=lambda job: parse_cpu_ids(SCONTROL) if job == "7" else {})
    assert [(n.name, n.core_ids) for n in res.nodes] == [("n5", (0, 1)), ("n6", (1,)), ("n7", (1,))]
    # scontrol could not tell, or named fewer CPUs than the node has: 0..n-1, as without it
    res = slurm_resources(e, cpu_ids=lambda job: {"n5": [3]})
    assert [(n.name, n.core_ids) for n in res.nodes] == [("n5", (0, 1)), ("n6", (0,)), ("n7", (0,))]
    # a CPU mask in the environment comes first
    masked = env("n5", cpus="2", SLURM_JOB_ID="7", SLURM_CPU_BIND_TYPE="mask_cpu:", SLURM_CPU_BIND_LIST="0xC")
    assert slurm_resources(masked, cpu_ids=lambda job: {"n5": [0, 1]}).nodes[0].core_ids == (2, 3)


# -- --slurm-resources-file -----------------------------------------------------------------

ORIGINAL_FILE = {     # what the original's governor writes for a partition (Resources.to_json())
    "type": "SLURM",
    "nodes": [
        {"name": "n3", "total_cores": 2, "core_ids": ["0", "1"], "free_cores": ["0", "1"], "crs": None},
        {"name": "n4", "total_cores": 2, "core_ids": ["2", "3"], "free_cores": ["2", "3"], "crs": None},
    ],
    "binding": True,
}


def write(tmp_path, data, name="res.json"):
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_resources_file_in_original_format(tmp_path):
    res = slurm_resources({}, resources_file=write(tmp_path, ORIGINAL_FILE))
    assert shape(res) == [("n3", 2), ("n4", 2)]
    assert res.nodes[1].core_ids == (2, 3)


def test_resources_file_wins_over_env_and_range(tmp_path):
    """The original's governor passes both the range and a file holding only that range."""
    res = slurm_resources(ALLOC, resources_file=write(tmp_path, ORIGINAL_FILE), limit_begin=2, limit_end=4)
    assert [n.name for n in res.nodes] == ["n3", "n4"]


def test_resources_file_with_system_core(tmp_path):
    res = slurm_resources({}, resources_file=write(tmp_path, ORIGINAL_FILE), system_core=True)
    assert res.system_core == ("n3", 0)


def test_resources_file_partial_free_and_defaults(tmp_path):
    data = {"nodes": [
        {"name": "a", "total_cores": 3, "core_ids": [0, 1, 2, 3], "free_cores": ["1", "2"]},
        {"name": "b", "total_cores": 2},
        {"name": "c", "total_cores": 1, "free_cores": []},       # empty: all free, as the original reads it
    ]}
    res = read_resources_file(write(tmp_path, data))
    assert [(n.name, n.core_ids, n.free_cores) for n in res.nodes] == [
        ("a", (0, 1, 2), [1, 2]), ("b", (0, 1), [0, 1]), ("c", (0,), [0])]
    assert res.used_cores == 1


def test_cores_a_file_does_not_list_as_free_are_never_waited_for(tmp_path):
    """Helper report: a node of 2 cores with only core 1 free took a 2-core job that then waited for ever
    (nobody releases core 0). Such cores are out of the node's capacity: the job can never fit, it fails
    at once (reference 7.2); a 1-core job runs on the free core."""
    res = read_resources_file(write(tmp_path, {"nodes": [{"name": "a", "total_cores": 2, "free_cores": ["1"]}]}))
    assert res.never_fits(ResourceRequest(cores_min=2, cores_max=2)) is not None
    alloc = res.allocate(ResourceRequest(cores_min=1, cores_max=None))
    assert alloc is not None and alloc.nodes == (("a", (1,)),)
    res.release(alloc)
    assert res.info() == {"total_nodes": 1, "total_cores": 2, "used_cores": 1, "free_cores": 1}


def test_reserved_cores_of_a_file_count_as_used(tmp_path):
    """Helper report: `reserved_cores` took the core out of the free ones but not out of the used count; the
    first `numCores {min: 1}` allocation then failed with "free core count does not match nodes"."""
    data = {"nodes": [{"name": "n1", "total_cores": 2, "reserved_cores": ["0"]}, {"name": "n2", "total_cores": 2}]}
    res = read_resources_file(write(tmp_path, data))
    assert res.info() == {"total_nodes": 2, "total_cores": 4, "used_cores": 1, "free_cores": 3}
    alloc = res.allocate(ResourceRequest(cores_min=1, cores_max=None))
    assert alloc is not None and alloc.nodes == (("n1", (1,)), ("n2", (0, 1)))
    assert res.free_cores == 0


def test_resources_file_round_trip(tmp_path):
    src = Resources([Node("x1", [4, 5]), Node("x2", 3)])
    src.reserve_system_core()
    path = str(tmp_path / "part.json")
    write_resources_file(path, src, binding=True)
    data = json.loads(open(path).read())
    assert data["type"] == "SLURM" and data["binding"] is True
    assert data["nodes"][0] == {"name": "x1", "total_cores": 2, "core_ids": ["4", "5"],
                                "free_cores": ["4", "5"], "crs": None}
    back = read_resources_file(path)
    assert shape(back) == [("x1", 2), ("x2", 3)] and back.used_cores == 0
    assert resources_to_dict(back) == {**data, "binding": False}


@pytest.mark.parametrize("content, fragment", [
    ("{", "not valid JSON"),
    # deeper than any interpreter's json decoder goes (3.13 decodes 5 000 levels: ~10 000 is its limit)
    ("[" * 100_000 + "]" * 100_000, "not valid JSON: nested too deeply"),
    ("[]", "expected a JSON object"),
    ({"nodes": []}, "'nodes' must be a non-empty list"),
    ({"nodes": [5]}, "node 0: expected an object"),
    ({"nodes": [{"total_cores": 2}]}, "node 0: 'name' must be a non-empty string"),
    ({"nodes": [{"name": "a", "total_cores": 0}]}, "node 0 ('a'): 'total_cores' must be a positive integer"),
    ({"nodes": [{"name": "a", "total_cores": "2"}]}, "'total_cores' must be a positive integer, got '2'"),
    ({"nodes": [{"name": "a", "total_cores": 3, "core_ids": ["0", "1"]}]}, "'core_ids' has 2 ids"),
    ({"nodes": [{"name": "a", "total_cores": 1, "core_ids": ["0,4"]}]}, "core id '0,4' is not"),
    ({"nodes": [{"name": "a", "total_cores": 2, "free_cores": ["7"]}]}, "free cores [7] are not cores"),
    ({"nodes": [{"name": "a", "total_cores": 1}, {"name": "a", "total_cores": 1}]}, "duplicate node name"),
    ({"nodes": [{"name": "a", "total_cores": 10 ** 20}]}, "at most 65536 cores per node"),   # was OverflowError
    (b"\xff\xfe{", "not UTF-8 text"),                                       # named neither option nor file
])
def test_resources_file_errors(tmp_path, content, fragment):
    path = write(tmp_path, content)
    with pytest.raises(ValueError) as exc:
        slurm_resources({}, resources_file=path)
    assert str(exc.value).startswith(f"--slurm-resources-file {path!r}: ")
    assert fragment in str(exc.value)


def test_resources_file_missing(tmp_path):
    path = str(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="cannot read: No such file or directory"):
        slurm_resources({}, resources_file=path)


# -- detection and cluster name ---------------------------------------------------------

@pytest.mark.parametrize("e, expected", [
    ({"SLURM_NODELIST": "n1", "SLURM_JOB_CPUS_PER_NODE": "2"}, True),
    ({"SLURM_JOB_NODELIST": "n1", "SLURM_JOB_CPUS_PER_NODE": "2"}, True),
    ({"SLURM_NODELIST": "n1", "SLURM_TASKS_PER_NODE": "2"}, False),     # as the original
    ({"SLURM_JOB_CPUS_PER_NODE": "2"}, False),
    ({"SLURM_NODELIST": "", "SLURM_JOB_CPUS_PER_NODE": "2"}, False),
    ({}, False),
])
def test_in_slurm_allocation(e, expected):
    assert in_slurm_allocation(e) is expected


def test_slurm_cluster_name():
    assert slurm_cluster_name({"SLURM_CLUSTER_NAME": "supermucng"}) == "supermucng"
    assert slurm_cluster_name({}) is None
