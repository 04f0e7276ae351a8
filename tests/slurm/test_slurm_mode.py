"""The service inside a real Slurm allocation of virtual nodes (issue 5), through the file interface.

Reference sections: 4.1 "Scheduling systems", 8 "Execution environments",
9 "Execution models", 15.1 "Node launcher agents".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.slurm_env import clean_env

pytestmark = pytest.mark.slurm

TIMEOUT = 180


def _reqs(jobs: list[dict]) -> list[dict]:
    return [{"request": "submit", "jobs": jobs}, {"request": "control", "command": "finishAfterAllTasksDone"}]


def run_in_allocation(tmp_path: Path, jobs: list[dict], *args: str, nodes: int = 4, salloc: tuple = (),
                      before: str = "", env: dict | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps(_reqs(jobs)))
    wd = tmp_path / "wd"
    service = [sys.executable, "-m", "qcg.pilotjob.service", "--file-path", str(reqs), "--wd", str(wd),
               "--log", "debug", *args]
    cmd = ["salloc", f"-N{nodes}", f"-n{2 * nodes}", "-t", "10", *salloc]
    if before:
        cmd += ["bash", "-c", before + "; exec \"$@\"", "qcg-test", *service]
    else:
        cmd += service
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
                          env=clean_env(**(env or {})))
    return proc, wd


def report(wd: Path) -> dict[str, dict]:
    aux = next(wd.glob(".qcgpjm-service-*"))
    return {r["name"]: r for r in map(json.loads, (aux / "jobs.report").read_text().splitlines())}


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("method", ["slurm", "ssh"])
def test_file_run_on_four_nodes_with_binding(tmp_path: Path, method: str, request) -> None:
    """Issue 5: agents started by srun or ssh; single-core tasks spread over the nodes, each bound
    to its core (Cpus_allowed_list seen from inside the task) with QCG_PM_CPU_SET exported."""
    if method == "ssh":
        request.getfixturevalue("sshd")
    jobs = [{"name": "b", "iteration": {"stop": 16},
             "execution": {"script": "echo $SLURMD_NODENAME $QCG_PM_CPU_SET "
                                     "$(grep Cpus_allowed_list /proc/self/status | cut -f2)",
                           "stdout": "b.${it}"}}]
    proc, wd = run_in_allocation(tmp_path, jobs, "--nl-start-method", method)
    _ok(proc)
    lines = [(wd / f"b.{i}").read_text().split() for i in range(16)]
    assert len({node for node, _, _ in lines}) >= 2, lines
    for node, cpu_set, allowed in lines:
        assert cpu_set == allowed, lines       # bound exactly to the allocated core
    assert all(r["state"] == "SUCCEED" for r in report(wd).values())
    assert not list(wd.glob(".*hostfile")) and not list(wd.glob("*.rankfile"))   # no stray files


def test_jobs_sharing_a_node_bind_their_tasks_to_their_own_cpus(tmp_path: Path) -> None:
    """Reference 8.1 (Slurm execution environment, cores bound as Slurm allocated them), helper report: two
    allocations of one CPU each on one 2-CPU node both read SLURM_JOB_CPUS_PER_NODE=1, took core id 0 and
    bound their tasks to CPU 0 at the same time (this cluster confines nothing: task/none). Core ids now
    come from Slurm's CPU_IDs: the two tasks, running together, are bound to different CPUs."""
    node = "n8"
    procs = []
    for tag in ("j1", "j2"):
        script = (f"echo $QCG_PM_CPU_SET $(grep Cpus_allowed_list /proc/self/status | cut -f2) > {tmp_path}/{tag}; "
                  f"for i in $(seq 900); do [ -e {tmp_path}/j1 ] && [ -e {tmp_path}/j2 ] && break; sleep 0.1; done")
        reqs = tmp_path / f"{tag}.json"
        reqs.write_text(json.dumps(_reqs([{"name": tag, "execution": {"script": script}}])))
        cmd = ["salloc", "-N1", "-n1", f"--nodelist={node}", "-t", "10", sys.executable, "-m", "qcg.pilotjob.service",
               "--file-path", str(reqs), "--wd", str(tmp_path / f"wd-{tag}")]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=clean_env()))
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    seen = {tag: (tmp_path / tag).read_text().split() for tag in ("j1", "j2")}
    for cpu_set, allowed in seen.values():
        assert cpu_set == allowed, seen
    assert seen["j1"][0] != seen["j2"][0], f"both jobs bound their tasks to CPU {seen['j1'][0]}"


STEP_ONLY = ("SLURM_PROCID", "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_TASK_PID", "SLURM_LOCALID", "SLURM_NODEID",
             "SLURM_GTIDS", "SLURM_SRUN_COMM_PORT", "SRUN_DEBUG")


@pytest.mark.parametrize("method,partitions", [("slurm", False), ("ssh", False), ("slurm", True)])
def test_tasks_see_the_allocation_not_the_agents_srun_step(tmp_path: Path, method: str, partitions: bool,
                                                           request) -> None:
    """Reference 8.1 (`SLURM_NNODES` - a number of nodes): a task started by a node agent sees the
    allocation's Slurm variables, as the original's tasks see its service's, not those srun set for the
    agent's (or the partition manager's) own one-node step; an ssh-started agent's tasks see them too.
    Before, a 2-node task read SLURM_NNODES=1 and SLURM_PROCID, SLURM_TASK_PID of the agent's step."""
    if method == "ssh":
        request.getfixturevalue("sshd")
    jobs = [{"name": "two", "resources": {"numNodes": {"exact": 2}, "numCores": {"exact": 1}},
             "execution": {"script": "env > env.txt"}}]
    extra = ["--slurm-partition-nodes", "2"] if partitions else []
    proc, wd = run_in_allocation(tmp_path, jobs, "--nl-start-method", method, *extra,
                                 before=f"env | grep -E '^SLURM_JOB_ID=' > {tmp_path}/outer.txt || true")
    _ok(proc)
    assert report(wd)["two"]["state"] == "SUCCEED"
    seen = dict(line.split("=", 1) for line in (wd / "env.txt").read_text().splitlines() if "=" in line)
    assert seen["SLURM_NNODES"] == "2" and seen["SLURM_JOB_NUM_NODES"] == "2", seen
    assert len(seen["SLURM_NODELIST"].split(",")) == 2, seen
    leaked = sorted(k for k in STEP_ONLY if k in seen)
    assert not leaked, {k: seen[k] for k in leaked}
    outer = dict(line.split("=", 1) for line in (tmp_path / "outer.txt").read_text().splitlines())
    assert seen["SLURM_JOB_ID"] == outer["SLURM_JOB_ID"]
    assert seen["SLURMD_NODENAME"] in seen["SLURM_NODELIST"].split(",")     # the node it runs on
    assert "QCG_PM_ALLOCATION_ENV" not in seen


MANAGER_ONLY = {"HOSTNAME": "qcg-manager-host", "SSH_CONNECTION": "10.99.0.1 40000 10.99.0.2 22",
                "XDG_RUNTIME_DIR": "/run/user/qcg-manager-only"}


@pytest.mark.parametrize("method,partitions", [
    ("ssh", False), ("slurm", False),
    # a partition manager started by ssh is itself a fresh login: it adopts the governor's environment
    ("ssh", True),
], ids=["ssh", "slurm", "ssh-partitions"])
def test_tasks_see_the_services_environment(tmp_path: Path, method: str, partitions: bool, request) -> None:
    """Reference 8 "Execution environments": a task's base environment is the service's, whatever starts
    the node agents. Before, an ssh-started agent built it from its own fresh login: a variable exported
    before salloc (QCG_TEST_MARK, OMPI_ALLOW_RUN_AS_ROOT) was missing and PATH was the login's (a `module
    load` lost). Slurm's node variables stay the node's (SLURMD_NODENAME: where the task runs, not the
    service's), and over ssh what names the manager host's session (HOSTNAME, SSH_CONNECTION,
    XDG_RUNTIME_DIR, TMPDIR) is the node's own or absent, never the manager's."""
    if method == "ssh":
        request.getfixturevalue("sshd")
    marker_dir = tmp_path / "qcg-marker-bin"
    marker_dir.mkdir()
    manager_tmp = tmp_path / "manager-tmp"
    manager_tmp.mkdir()
    jobs = [{"name": "e", "iteration": {"stop": 4}, "execution": {"script": "env > env.${it}"}}]
    env = {"QCG_TEST_MARK": "mark-7431", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PATH": f"{marker_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
           "TMPDIR": str(manager_tmp), **MANAGER_ONLY}
    extra = ["--slurm-partition-nodes", "1"] if partitions else []
    proc, wd = run_in_allocation(tmp_path, jobs, "--nl-start-method", method, *extra, nodes=2, env=env)
    _ok(proc)
    assert all(r["state"] == "SUCCEED" for r in report(wd).values())
    seen = [dict(line.split("=", 1) for line in (wd / f"env.{i}").read_text().splitlines() if "=" in line)
            for i in range(4)]
    nodes = set()
    for task in seen:
        assert task.get("QCG_TEST_MARK") == "mark-7431", task
        assert task.get("OMPI_ALLOW_RUN_AS_ROOT") == "1" and task.get("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM") == "1", task
        assert str(marker_dir) in task.get("PATH", "").split(os.pathsep), task.get("PATH")
        assert task["SLURMD_NODENAME"] in task["SLURM_NODELIST"].split(","), task    # the node it runs on
        assert task["SLURMD_NODENAME"] == task["QCG_PM_NODELIST"], task
        assert "QCG_PM_ALLOCATION_ENV" not in task
        nodes.add(task["SLURMD_NODENAME"])
        if method == "ssh":
            for key, value in MANAGER_ONLY.items():
                assert task.get(key) != value, (key, task)
            assert task.get("TMPDIR") != str(manager_tmp), task
            assert task.get("SSH_CONNECTION", "").startswith("127.0.0.1 "), task     # the agent's own login
    assert len(nodes) == 2, nodes


def test_srunmpi_two_nodes(tmp_path: Path) -> None:
    """Reference 9 `srunmpi`: srun over the task's 2 nodes; every rank reports SLURM_PROCID and its node."""
    jobs = [{"name": "mpi", "execution": {"script": "echo $SLURM_PROCID $SLURMD_NODENAME", "model": "srunmpi",
                                          "stdout": "mpi.out"},
             "resources": {"numNodes": {"exact": 2}, "numCores": {"exact": 2}}}]
    proc, wd = run_in_allocation(tmp_path, jobs)
    _ok(proc)
    ranks = dict(line.split() for line in (wd / "mpi.out").read_text().splitlines())
    assert sorted(ranks) == ["0", "1", "2", "3"]
    assert len(set(ranks.values())) == 2


def _allocation(text: str) -> list[tuple[str, int]]:
    """'n1[0:1],n2[0]' (a report's runtime.allocation) -> [('n1', 2), ('n2', 1)]."""
    return [(part.split("[")[0], len(part.split("[")[1].rstrip("]").split(":"))) for part in text.split(",")]


@pytest.mark.parametrize("nodes, ncores, blocker, counts", [
    (2, 3, False, [2, 1]),          # 3 ranks on 2+1 cores (the reported failure)
    (3, 5, False, [2, 2, 1]),       # 5 ranks on 2+2+1
    (2, 3, True, [1, 2]),           # 1 rank on a node another task already uses
], ids=["2+1", "2+2+1", "partly-used-node"])
def test_srunmpi_uneven_split(tmp_path: Path, nodes: int, ncores: int, blocker: bool, counts: list[int]) -> None:
    """Reference 9 `srunmpi` with cores spread unevenly over the nodes: every rank runs, on the node the
    allocation gives it (ranks fill the nodes in allocation order), and sees the whole rank count."""
    jobs = [{"name": "mpi", "execution": {"exec": "bash", "args": ["-c", "echo $SLURM_PROCID $SLURMD_NODENAME $SLURM_NTASKS"],
                                          "model": "srunmpi", "stdout": "mpi.out", "stderr": "mpi.err"},
             "resources": {"numCores": {"exact": ncores}}}]
    if blocker:     # holds one core of the first node while the srunmpi task starts
        jobs.insert(0, {"name": "hold", "execution": {"exec": "sleep", "args": ["4"]},
                        "resources": {"numCores": {"exact": 1}}})
    proc, wd = run_in_allocation(tmp_path, jobs, nodes=nodes)
    _ok(proc)
    rep = report(wd)
    err = (wd / "mpi.err").read_text() if (wd / "mpi.err").exists() else ""
    assert rep["mpi"]["state"] == "SUCCEED", (rep["mpi"], err)
    alloc = _allocation(rep["mpi"]["runtime"]["allocation"])
    assert [n for _, n in alloc] == counts, alloc
    expected = {str(rank): node for rank, node in enumerate(node for node, n in alloc for _ in range(n))}
    rows = [line.split() for line in (wd / "mpi.out").read_text().splitlines() if line.strip()]
    assert len(rows) == ncores, (rows, err)
    assert {rank: node for rank, node, _ in rows} == expected, (rows, alloc)
    assert {total for _, _, total in rows} == {str(ncores)}


#: what OpenMPI needs on the virtual test cluster (as root, one shared /dev/shm)
OMPI_TEST_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_btl": "self,tcp"}


def _mpi_hello(tmp_path: Path) -> Path:
    """An MPI program printing `rank size SLURMD_NODENAME`, compiled with mpicc (skips without OpenMPI)."""
    if not shutil.which("mpicc") or not shutil.which("mpirun"):
        pytest.skip("OpenMPI (mpicc, mpirun) is not installed")
    src = tmp_path / "hello.c"
    src.write_text('#include <mpi.h>\n#include <stdio.h>\n#include <stdlib.h>\nint main(int c,char**v){int r,n;'
                   'MPI_Init(&c,&v);MPI_Comm_rank(MPI_COMM_WORLD,&r);MPI_Comm_size(MPI_COMM_WORLD,&n);'
                   'const char*s=getenv("SLURMD_NODENAME");printf("%d %d %s\\n",r,n,s?s:"?");'
                   'MPI_Finalize();return 0;}\n')
    subprocess.run(["mpicc", "-o", str(tmp_path / "hello"), str(src)], check=True, timeout=120)
    return tmp_path / "hello"


@pytest.mark.mpi
def test_openmpi_two_nodes(tmp_path: Path) -> None:
    """Reference 9 `openmpi`: a real MPI program over 2 nodes placed by a rankfile."""
    hello = _mpi_hello(tmp_path)
    env = dict(OMPI_TEST_ENV)
    jobs = [{"name": "mpi", "execution": {"exec": str(hello), "model": "openmpi",
                                          "stdout": "mpi.out", "stderr": "mpi.err", "env": env},
             "resources": {"numNodes": {"exact": 2}, "numCores": {"exact": 2}}}]
    proc, wd = run_in_allocation(tmp_path, jobs)
    _ok(proc)
    out = (wd / "mpi.out").read_text().split("\n")
    rows = [line.split() for line in out if line.strip()]
    assert sorted(int(r[0]) for r in rows) == [0, 1, 2, 3], (wd / "mpi.err").read_text()
    assert {r[1] for r in rows} == {"4"}
    assert len({r[2] for r in rows}) == 2


def _together(name: str, names: list[str], script: str) -> str:
    """`script`, then wait (at most 60 s) until every task of `names` has got so far: the tasks hold their
    cores at the same time, so they run on different cores, some not on the allocation's first nodes."""
    ready = " && ".join(f"[ -e ready.{n} ]" for n in names)
    return f"{script}; touch ready.{name}; for i in $(seq 600); do {ready} && break; sleep 0.1; done"


def _core_lines(entry: dict) -> list[str]:
    """A task's nodes once per allocated core, in allocation order (what its hostfile says)."""
    return [node for node, n in _allocation(entry["runtime"]["allocation"]) for _ in range(n)]


def _no_task_hostfiles_left(wd: Path) -> None:
    aux = next(wd.glob(".qcgpjm-service-*"))
    assert not list(aux.rglob("*.hostfile")), list(aux.rglob("*.hostfile"))


@pytest.mark.parametrize("ncores, extra", [(4, ()), (3, ()), (4, ("--slurm-partition-nodes", "2"))],
                         ids=["2x2-cores", "2+1-cores", "partitions"])
def test_a_tasks_own_srun_runs_on_the_tasks_nodes(tmp_path: Path, ncores: int, extra: tuple) -> None:
    """Reference 8 "Execution environments" ("an appropriate machine file is created with a list of
    resources for each task"): a task's own `srun` runs one process per allocated core on the task's own
    nodes, and `srun -N<nodes> --ntasks-per-node=1` (how OpenMPI's mpirun starts its daemons) runs on them
    too, without "Too few NodeNames in Slurm Hostfile". Two tasks hold their cores at once, so one is not
    on the allocation's first nodes, where srun went before (SLURM_NODELIST alone does not steer it).
    The hostfiles are gone after the run."""
    names = ["a", "b"]
    jobs = [{"name": n, "resources": {"numCores": {"exact": ncores}},
             "execution": {"script": _together(n, names,
                                               f"srun printenv SLURMD_NODENAME > {n}.all 2> {n}.all.err; "
                                               f"srun -N$SLURM_NNODES --ntasks-per-node=1 printenv SLURMD_NODENAME "
                                               f"> {n}.pernode 2> {n}.pernode.err")}} for n in names]
    proc, wd = run_in_allocation(tmp_path, jobs, *extra)
    _ok(proc)
    rep = report(wd)
    assert _core_lines(rep["a"]) != _core_lines(rep["b"]), rep
    for n in names:
        assert rep[n]["state"] == "SUCCEED", rep[n]
        own = _core_lines(rep[n])
        assert len(set(own)) == 2, own
        all_err = (wd / f"{n}.all.err").read_text()
        assert sorted((wd / f"{n}.all").read_text().split()) == sorted(own), (n, own, all_err)
        pernode, err = (wd / f"{n}.pernode").read_text().split(), (wd / f"{n}.pernode.err").read_text()
        assert "NodeNames" not in err, err
        assert set(pernode) == set(own), (n, own, pernode, err)
    _no_task_hostfiles_left(wd)


@pytest.mark.parametrize("ncores", [4, 3], ids=["even", "uneven"])
def test_srunmpi_beside_another_task_with_the_task_hostfile(tmp_path: Path, ncores: int) -> None:
    """Reference 9 `srunmpi` (with 8's machine file of each task now in its env): two srunmpi tasks at once,
    nodes with equal core counts (--nodelist) and unequal ones (-m arbitrary, its own hostfile); every rank
    runs on the node its place in the allocation gives it."""
    names = ["s1", "s2"]
    jobs = [{"name": n, "resources": {"numCores": {"exact": ncores}},
             "execution": {"exec": "bash", "model": "srunmpi", "stdout": f"{n}.out", "stderr": f"{n}.err",
                           "args": ["-c", _together(n, names, "echo $SLURM_PROCID $SLURMD_NODENAME")]}}
            for n in names]
    proc, wd = run_in_allocation(tmp_path, jobs)
    _ok(proc)
    rep = report(wd)
    for n in names:
        err = (wd / f"{n}.err").read_text()
        assert rep[n]["state"] == "SUCCEED", (rep[n], err)
        rows = [line.split() for line in (wd / f"{n}.out").read_text().splitlines() if line.strip()]
        expected = {str(rank): node for rank, node in enumerate(_core_lines(rep[n]))}
        assert dict(rows) == expected, (n, rows, err)
    _no_task_hostfiles_left(wd)


@pytest.mark.mpi
def test_openmpi_ranks_run_on_the_tasks_nodes(tmp_path: Path) -> None:
    """Reference 9 `openmpi` and 8 ("an appropriate machine file is created with a list of resources for
    each task"): two 2-node MPI tasks at once; every rank runs on the node its task's rankfile names.
    Before, mpirun's daemons (started by `srun --ntasks-per-node=1` with no node list) went to the
    allocation's first nodes, so the ranks of the task on the other nodes ran on another task's cores."""
    hello = _mpi_hello(tmp_path)
    names = ["m1", "m2"]
    jobs = [{"name": n, "resources": {"numNodes": {"exact": 2}, "numCores": {"exact": 2}},
             "execution": {"exec": "bash", "model": "openmpi", "stdout": f"{n}.out", "stderr": f"{n}.err",
                           "args": ["-c", _together(n, names, f"{hello}")], "env": dict(OMPI_TEST_ENV)}}
            for n in names]
    # the rankfile's program is the barrier-wrapped hello: run it through bash under mpirun
    proc, wd = run_in_allocation(tmp_path, jobs)
    _ok(proc)
    rep = report(wd)
    assert set(_core_lines(rep["m1"])).isdisjoint(_core_lines(rep["m2"])), rep
    for n in names:
        err = (wd / f"{n}.err").read_text()
        assert rep[n]["state"] == "SUCCEED", (rep[n], err)
        rows = [line.split() for line in (wd / f"{n}.out").read_text().splitlines() if line.strip()]
        expected = {str(rank): node for rank, node in enumerate(_core_lines(rep[n]))}
        assert {rank: node for rank, _, node in rows} == expected, (n, rows, err)
        assert {size for _, size, _ in rows} == {"4"}
    _no_task_hostfiles_left(wd)


def test_a_jobs_own_hostfile_and_openmpi_srun_args_are_kept(tmp_path: Path) -> None:
    """Reference 8 (the machine file of each task) and 8.1 (the job's env): a task gets SLURM_HOSTFILE,
    a private file listing its nodes once per core, and OMPI_MCA_plm_slurm_args naming its nodes; a job
    that sets either in its `env` keeps its own, and its own hostfile steers its srun."""
    names = ["ours", "mine"]
    wd = tmp_path / "wd"
    show = 'echo "$SLURM_HOSTFILE|$OMPI_MCA_plm_slurm_args|$SLURM_NODELIST" > {n}.env; cp "$SLURM_HOSTFILE" {n}.hosts; ' \
           'stat -c %a "$SLURM_HOSTFILE" > {n}.mode; srun -n1 printenv SLURMD_NODENAME > {n}.srun'
    own = {"SLURM_HOSTFILE": str(wd / "mine.hostlist"), "OMPI_MCA_plm_slurm_args": "--kill-on-bad-exit=1"}
    jobs = [{"name": "ours", "resources": {"numNodes": {"exact": 2}, "numCores": {"exact": 2}},
             "execution": {"script": _together("ours", names, show.format(n="ours"))}},
            {"name": "mine", "resources": {"numNodes": {"exact": 2}, "numCores": {"exact": 2}},
             "execution": {"env": own,
                           "script": _together("mine", names, "echo $SLURM_NODELIST | cut -d, -f2 > mine.hostlist; "
                                                              + show.format(n="mine"))}}]
    proc, wd = run_in_allocation(tmp_path, jobs)
    _ok(proc)
    rep = report(wd)
    assert all(rep[n]["state"] == "SUCCEED" for n in names), rep
    hostfile, args, nodelist = (wd / "ours.env").read_text().strip().split("|")
    assert (wd / "ours.hosts").read_text().split() == _core_lines(rep["ours"])
    assert hostfile.startswith(str(next(wd.glob(".qcgpjm-service-*")))), hostfile   # not in the wd
    assert (wd / "ours.mode").read_text().strip() == "600"
    assert args == f"--nodelist={nodelist}"
    assert nodelist.split(",") == list(dict.fromkeys(_core_lines(rep["ours"])))
    assert (wd / "ours.srun").read_text().strip() == _core_lines(rep["ours"])[0]
    hostfile, args, nodelist = (wd / "mine.env").read_text().strip().split("|")
    assert (hostfile, args) == (own["SLURM_HOSTFILE"], own["OMPI_MCA_plm_slurm_args"])
    assert (wd / "mine.srun").read_text().strip() == nodelist.split(",")[1]     # the node its own file names
    _no_task_hostfiles_left(wd)


def test_threshold_with_a_node_that_cannot_start_an_agent(tmp_path: Path) -> None:
    """Issue 5 / reference 15.1: --nl-ready-threshold 0.75 with one node down in Slurm (its agent cannot
    start): the run completes on the other three nodes."""
    jobs = [{"name": "it", "iteration": {"stop": 12},
             "execution": {"script": "echo $SLURMD_NODENAME", "stdout": "it.${it}"}}]
    down = "n=$(scontrol show hostnames $SLURM_JOB_NODELIST | tail -1); " \
           "scontrol update nodename=$n state=down reason=qcg-test; echo $n > down-node"
    try:
        proc, wd = run_in_allocation(tmp_path, jobs, "--nl-ready-threshold", "0.75", "--nl-init-timeout", "60",
                                     salloc=("--no-kill",), before=f"cd {tmp_path}; {down}")
        _ok(proc)
    finally:
        node = (tmp_path / "down-node").read_text().strip() if (tmp_path / "down-node").exists() else None
        if node:
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], timeout=30)
    nodes = {(wd / f"it.{i}").read_text().strip() for i in range(12)}
    assert node not in nodes and len(nodes) == 3


def test_kill_agent_mid_run(tmp_path: Path) -> None:
    """Issue 5: kill -9 of an agent mid-run -> its tasks end re-queued or FAILED with "node lost";
    the run finishes (no hang)."""
    jobs = [{"name": "s", "iteration": {"stop": 8}, "execution": {"exec": "/bin/sleep", "args": ["3"]}}]
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for p in psutil.process_iter(["cmdline"]):
                cmd = p.info["cmdline"] or []
                if "qcg.pilotjob.agent" in cmd and str(tmp_path) in " ".join(cmd) and "--node" in cmd:
                    if any(c.name() == "sleep" for c in p.children()):
                        os.kill(p.pid, signal.SIGKILL)
                        killed.append(p.pid)
                        return
            time.sleep(0.1)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    proc, wd = run_in_allocation(tmp_path, jobs)
    t.join(5)
    assert killed, "no agent was found to kill"
    _ok(proc)
    rep = report(wd)
    states = [rep[f"s:{i}"]["state"] for i in range(8)]
    assert all(s in ("SUCCEED", "FAILED") for s in states)
    log = next(wd.glob(".qcgpjm-service-*")).joinpath("service.log").read_text()
    assert "node lost" in log


def test_cancel_two_node_task_leaves_nothing(tmp_path: Path) -> None:
    """Issue 5: cancel of a 2-node task (srunmpi) kills its processes on every node."""
    marker = f"qcg-cancel-{os.getpid()}-{tmp_path.name}"
    jobs = [{"name": "long", "execution": {"exec": "/bin/bash", "args": ["-c", f"exec -a {marker} sleep 60"],
                                           "model": "srunmpi"},
             "resources": {"numNodes": {"exact": 2}, "numCores": {"exact": 1}}, "resources_wt": None}]
    jobs[0].pop("resources_wt")
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([{"request": "submit", "jobs": jobs}]))
    # the job is canceled by walltime: the same kill path as cancelJob (TERM to the group, then KILL)
    jobs[0]["resources"]["wt"] = "3s"
    proc, wd = run_in_allocation(tmp_path, jobs)
    _ok(proc)
    assert report(wd)["long"]["state"] == "FAILED"
    time.sleep(1.0)
    left = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert left == []


API_SCRIPT = r'''
import sys
from qcg.pilotjob.api.manager import LocalManager
from qcg.pilotjob.api.job import Jobs

m = LocalManager(["--wd", sys.argv[1]], {"init_timeout": 120})
try:
    res = m.resources()
    jobs = Jobs().add(name="api", script="echo $SLURMD_NODENAME", stdout="api.${it}", iteration=8)
    m.submit(jobs)
    m.wait4("api", timeout=120)
    print("RESOURCES", res["total_nodes"], res["total_cores"])
    print("STATE", m.status("api")["jobs"]["api"]["data"]["status"])
finally:
    m.finish()
'''


def test_api_under_salloc(tmp_path: Path) -> None:
    """Issue 5: the Python API (LocalManager) inside an allocation uses the allocation's nodes and agents."""
    script = tmp_path / "app.py"
    script.write_text(API_SCRIPT)
    wd = tmp_path / "wd"
    proc = subprocess.run(["salloc", "-N4", "-n8", "-t", "10", sys.executable, str(script), str(wd)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
                          env=clean_env())
    _ok(proc)
    assert "RESOURCES 4 8" in proc.stdout, proc.stdout
    assert "STATE SUCCEED" in proc.stdout, proc.stdout
    nodes = {(wd / f"api.{i}").read_text().strip() for i in range(8)}
    assert len(nodes) >= 2


def test_disable_nl_runs_each_task_as_srun_step(tmp_path: Path) -> None:
    """Reference 6 `--disable-nl`: no agents; every task is its own srun step on its node, bound to its core."""
    jobs = [{"name": "d", "iteration": {"stop": 6},
             "execution": {"script": "echo $SLURMD_NODENAME $SLURM_STEP_ID", "stdout": "d.${it}"}}]
    proc, wd = run_in_allocation(tmp_path, jobs, "--disable-nl")
    _ok(proc)
    rows = [(wd / f"d.{i}").read_text().split() for i in range(6)]
    assert all(len(r) == 2 for r in rows), rows
    assert len({step for _, step in rows}) == 6          # one step per task
    log = next(wd.glob(".qcgpjm-service-*")).joinpath("service.log").read_text()
    assert "node agents ready" not in log


CANCEL_SCRIPT = r'''
import sys, time
from qcg.pilotjob.api.manager import LocalManager
from qcg.pilotjob.api.job import Jobs

marker = sys.argv[2]
m = LocalManager(["--wd", sys.argv[1]], {"init_timeout": 120})
try:
    m.submit(Jobs().add_std({"name": "long", "execution": {"exec": "/bin/bash",
                             "args": ["-c", f"exec -a {marker} sleep 120"], "model": "srunmpi"},
                             "resources": {"numNodes": {"exact": 2}, "numCores": {"exact": 1}}}))
    deadline = time.monotonic() + 60
    while m.status("long")["jobs"]["long"]["data"]["status"] != "EXECUTING":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.0)                       # let srun start the ranks on both nodes
    print("RUNNING")
    sys.stdout.flush()
    m.cancel("long")
    print("FINAL", m.wait4("long", timeout=60))
finally:
    m.finish()
'''


def test_cancel_of_two_node_task_through_api(tmp_path: Path) -> None:
    """Issue 5: cancelJob of a running 2-node task kills its processes on both nodes; none is left."""
    marker = f"qcg-cancel-api-{os.getpid()}-{tmp_path.name}"
    script = tmp_path / "app.py"
    script.write_text(CANCEL_SCRIPT)
    proc = subprocess.run(["salloc", "-N2", "-n4", "-t", "10", sys.executable, str(script), str(tmp_path / "wd"),
                           marker], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
                          env=clean_env())
    _ok(proc)
    assert "RUNNING" in proc.stdout and "CANCELED" in proc.stdout, proc.stdout
    time.sleep(1.0)
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert left == []
