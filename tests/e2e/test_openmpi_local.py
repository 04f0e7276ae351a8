"""A real OpenMPI program through the `openmpi` execution model and the spawner
(reference "Execution models": openmpi = mpirun with a rankfile; slurm-localhost.md
"MPI on the virtual nodes" for the root / btl settings).

The model itself does not add OMPI_ALLOW_RUN_AS_ROOT* or OMPI_MCA_btl (see
partition/models.py); this test sets them in the task environment, as a user
running as root on a shared-/dev/shm host would in the job's `env`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess

import pytest

from qcg.pilotjob.agent.spawner import ProcessSpawner, ProcessSpec
from qcg.pilotjob.api.jobdesc import Execution
from qcg.pilotjob.partition.environment import new_step_id, task_environment
from qcg.pilotjob.partition.models import build_launch
from qcg.pilotjob.partition.task import Allocation

pytestmark = pytest.mark.mpi

MPICC = shutil.which("mpicc")
MPIRUN = shutil.which("mpirun")
if not (MPICC and MPIRUN):
    pytest.skip("OpenMPI not installed (mpicc/mpirun missing): "
                "apt-get install openmpi-bin libopenmpi-dev", allow_module_level=True)

HELLO = r"""
#include <mpi.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    int rank, size; char line[256] = "", *cpus = "?";
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    FILE *f = fopen("/proc/self/status", "r");
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "Cpus_allowed_list:", 18)) { cpus = line + 18; break; }
    fclose(f);
    while (*cpus == ' ' || *cpus == '\t') cpus++;
    cpus[strcspn(cpus, "\n")] = 0;
    printf("rank %d of %d cpus %s args", rank, size, cpus);
    for (int i = 1; i < argc; i++) printf(" [%s]", argv[i]);
    printf("\n");
    MPI_Finalize();
    return 0;
}
"""

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_btl": "self,tcp"}


@pytest.fixture(scope="module")
def hello(tmp_path_factory):
    d = tmp_path_factory.mktemp("mpi")
    (d / "hello.c").write_text(HELLO)
    subprocess.run([MPICC, "-o", str(d / "hello"), str(d / "hello.c")], check=True, timeout=120)
    return str(d / "hello")


def _run_task(execution, allocation, local, wd, scratch):
    cmd = build_launch(execution, allocation, local=local, scratch_dir=str(scratch), name="mpi_task")
    env = task_environment(os.environ, execution.env, allocation, new_step_id(), envschema="common",
                           extra=cmd.env_extra, binding=not local)

    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        done = loop.create_future()
        sp.spawn("t", ProcessSpec(cmd.argv, env, str(wd), stdout=str(wd / "out"), stderr=str(wd / "out"),
                                  cpus=cmd.cpus, walltime=120),
                 lambda k, ev: done.set_result(ev))
        ev = await asyncio.wait_for(done, 150)
        await sp.shutdown()
        return ev

    try:
        ev = asyncio.run(main())
    finally:
        for f in cmd.files:
            os.unlink(f)
    return ev, (wd / "out").read_text(), cmd


def _ranks(out: str) -> dict[int, tuple[int, str, str]]:
    res = {}
    for m in re.finditer(r"^rank (\d+) of (\d+) cpus (\S+) args(.*)$", out, re.M):
        res[int(m.group(1))] = (int(m.group(2)), m.group(3), m.group(4))
    return res


def test_two_ranks_local_mode_virtual_nodes(hello, tmp_path):
    """Local mode: virtual node names are not hosts — both ranks run on localhost,
    no rankfile is written; arguments reach every rank intact."""
    alloc = Allocation((("virt1", (0,)), ("virt2", (1,))))
    e = Execution(exec=hello, args=("a b", "$X"), model="openmpi", env=dict(MPI_ENV))
    scratch = tmp_path / "scratch"
    ev, out, cmd = _run_task(e, alloc, True, tmp_path / "wd", scratch)
    assert ev.exit_code == 0, out
    ranks = _ranks(out)
    assert set(ranks) == {0, 1}, out
    assert all(r[0] == 2 and r[2] == " [a b] [$X]" for r in ranks.values()), out
    assert cmd.files == []
    assert not scratch.exists() or os.listdir(scratch) == []
    assert os.listdir(tmp_path / "wd") == ["out"]         # nothing left in the working dir


def test_more_ranks_than_cores_local_mode(hello, tmp_path):
    """Local mode with more virtual cores than real ones still starts (slots declared)."""
    n = len(os.sched_getaffinity(0)) + 2
    alloc = Allocation((("v1", tuple(range(n))),))
    e = Execution(exec=hello, model="openmpi", env=dict(MPI_ENV))
    ev, out, _ = _run_task(e, alloc, True, tmp_path / "wd", tmp_path / "scratch")
    assert ev.exit_code == 0, out
    assert set(_ranks(out)) == set(range(n)), out


def test_two_ranks_with_rankfile_binding(hello, tmp_path):
    """Slurm-style: a rankfile (in the scratch dir, not the wd) binds rank i to its core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs at least 2 CPUs to check per-rank binding")
    alloc = Allocation((("localhost", (cpus[1], cpus[0])),))
    e = Execution(exec=hello, model="openmpi", env=dict(MPI_ENV))
    scratch = tmp_path / "scratch"
    ev, out, cmd = _run_task(e, alloc, False, tmp_path / "wd", scratch)
    assert ev.exit_code == 0, out
    assert len(cmd.files) == 1 and cmd.files[0].startswith(str(scratch))
    ranks = _ranks(out)
    assert ranks[0][1] == str(cpus[1]) and ranks[1][1] == str(cpus[0]), out
    assert os.listdir(tmp_path / "wd") == ["out"]
