"""Execution models (reference "Execution models" and its 9.1 examples; model_opts
mpirun / mpirun_args; modules and venv)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from qcg.pilotjob.agent.spawner import ProcessSpawner, ProcessSpec
from qcg.pilotjob.api.jobdesc import Execution
from qcg.pilotjob.partition.models import (
    WRAPPER_SCRIPT, LaunchCommand, ModelError, build_launch)
from qcg.pilotjob.partition.task import Allocation

ONE = Allocation((("n1", (3,)),))
NODE4 = Allocation((("n1", (0, 1, 2, 3)),))
TWO = Allocation((("n1", (0, 1)), ("n2", (2, 3))))
UNEVEN = Allocation((("n1", (0, 1, 2)), ("n2", (1,))))


def ex(**kw) -> Execution:
    return Execution(**kw)


def test_default_exec_and_args(tmp_path):
    cmd = build_launch(ex(exec="/bin/app", args=("a", "b c")), NODE4, local=True, scratch_dir=str(tmp_path))
    assert cmd == LaunchCommand(["/bin/app", "a", "b c"], {}, [], None)


def test_default_script_runs_in_login_bash(tmp_path):
    cmd = build_launch(ex(script="echo $X"), NODE4, local=True, scratch_dir=str(tmp_path))
    assert cmd.argv == ["bash", "-c", "echo $X"]


def test_default_binding_in_slurm_mode(tmp_path):
    """Reference: binding is supported inside a Slurm allocation."""
    cmd = build_launch(ex(exec="app"), NODE4, local=False, scratch_dir=str(tmp_path))
    assert cmd.cpus == [0, 1, 2, 3]
    assert build_launch(ex(exec="app"), NODE4, local=True, scratch_dir=str(tmp_path)).cpus is None
    assert build_launch(ex(exec="app"), NODE4, local=True, scratch_dir=str(tmp_path),
                        binding=True).cpus == [0, 1, 2, 3]


def test_unknown_model_and_missing_program(tmp_path):
    with pytest.raises(ModelError, match="unknown execution model 'mpich'"):
        build_launch(ex(exec="a", model="mpich"), NODE4, local=True, scratch_dir=str(tmp_path))
    with pytest.raises(ModelError, match="neither 'exec' nor 'script'"):
        build_launch(ex(), NODE4, local=True, scratch_dir=str(tmp_path))


def test_threads_local(tmp_path):
    """threads: OMP_NUM_THREADS = cores; local mode runs the program itself."""
    cmd = build_launch(ex(exec="omp", model="threads"), NODE4, local=True, scratch_dir=str(tmp_path))
    assert cmd.argv == ["omp"] and cmd.env_extra == {"OMP_NUM_THREADS": "4"}


def test_threads_respects_user_omp_num_threads(tmp_path):
    cmd = build_launch(ex(exec="omp", model="threads", env={"OMP_NUM_THREADS": "2"}), NODE4,
                       local=True, scratch_dir=str(tmp_path))
    assert cmd.env_extra == {}


def test_threads_slurm_uses_srun_cpus_per_task(tmp_path):
    """Reference: threads is started with srun and --cpus-per-task = number of cores."""
    cmd = build_launch(ex(exec="omp", args=("x",), model="threads"), NODE4, local=False,
                       scratch_dir=str(tmp_path))
    a = cmd.argv
    assert a[0] == "srun" and a[-2:] == ["omp", "x"]
    assert "--cpus-per-task=4" in a and a[a.index("-n") + 1] == "1" and "--nodelist=n1" in a
    assert "--cpu-bind=verbose,mask_cpu:0xf" in a
    assert cmd.cpus is None and cmd.env_extra == {"OMP_NUM_THREADS": "4"}


def test_threads_rejects_multi_node(tmp_path):
    with pytest.raises(ModelError, match="single node.*2 nodes"):
        build_launch(ex(exec="omp", model="threads"), TWO, local=False, scratch_dir=str(tmp_path))


def test_single_core_runs_directly_for_any_model(tmp_path):
    """As the original: one node / one core needs no launcher."""
    for model in ("openmpi", "intelmpi", "srunmpi"):
        cmd = build_launch(ex(exec="app", model=model), ONE, local=False, scratch_dir=str(tmp_path))
        assert cmd.argv == ["app"] and cmd.cpus == [3] and cmd.files == []
    cmd = build_launch(ex(exec="app", model="threads"), ONE, local=False, scratch_dir=str(tmp_path))
    assert cmd.argv == ["app"] and cmd.env_extra == {"OMP_NUM_THREADS": "1"}


def test_openmpi_rankfile_in_scratch_dir(tmp_path):
    """Reference: openmpi uses mpirun with a rankfile; 9.1: model_opts mpirun and mpirun_args.
    The rankfile lives in the scratch dir, not in the job's working directory."""
    scratch = tmp_path / "scratch"
    e = ex(exec="/home/u/app", args=("-v",), model="openmpi",
           model_opts={"mpirun": "/opt/ompi/bin/mpirun", "mpirun_args": ["--mca", "rmaps_rank_file_physical", "1"]})
    cmd = build_launch(e, TWO, local=False, scratch_dir=str(scratch), name="job:1")
    assert len(cmd.files) == 1
    rankfile = cmd.files[0]
    assert os.path.dirname(rankfile) == str(scratch)
    assert cmd.argv == ["/opt/ompi/bin/mpirun", "-np", "4", "--rankfile", rankfile,
                        "--mca", "rmaps_rank_file_physical", "1", "/home/u/app", "-v"]
    with open(rankfile) as f:
        assert f.read() == ("rank 0=n1 slot=0\nrank 1=n1 slot=1\n"
                            "rank 2=n2 slot=2\nrank 3=n2 slot=3\n")
    cmd2 = build_launch(e, TWO, local=False, scratch_dir=str(scratch), name="job:1")
    assert cmd2.files != cmd.files                       # unique per task


def test_openmpi_local_runs_on_localhost_without_rankfile(tmp_path):
    cmd = build_launch(ex(exec="app", model="openmpi"), TWO, local=True, scratch_dir=str(tmp_path))
    assert cmd.argv == ["mpirun", "-np", "4", "--host", "localhost:4", "--bind-to", "none", "app"]
    assert cmd.files == [] and cmd.cpus is None
    assert os.listdir(tmp_path) == []
    cmd = build_launch(ex(exec="app", model="openmpi", model_opts={"mpirun_args": ["--bind-to", "core"]}),
                       TWO, local=True, scratch_dir=str(tmp_path))
    assert cmd.argv == ["mpirun", "-np", "4", "--host", "localhost:4", "--bind-to", "core", "app"]


def test_openmpi_mpirun_args_must_be_list(tmp_path):
    with pytest.raises(ModelError, match="mpirun_args must be a list"):
        build_launch(ex(exec="a", model="openmpi", model_opts={"mpirun_args": "--x"}), TWO,
                     local=False, scratch_dir=str(tmp_path))


def test_openmpi_script_runs_per_rank(tmp_path):
    """Reference warning: with a parallel model the script runs once per rank."""
    cmd = build_launch(ex(script="echo $OMPI_COMM_WORLD_RANK", model="openmpi"), TWO, local=True,
                       scratch_dir=str(tmp_path))
    assert cmd.argv[-3:] == ["bash", "-c", "echo $OMPI_COMM_WORLD_RANK"]


def test_intelmpi_components_per_node(tmp_path):
    """Reference: intelmpi components with -host and I_MPI_PIN_PROCESSOR_LIST per node."""
    e = ex(exec="app", args=("1",), model="intelmpi", model_opts={"mpirun": "impirun", "mpirun_args": ["-v"]})
    cmd = build_launch(e, UNEVEN, local=False, scratch_dir=str(tmp_path))
    assert cmd.argv == ["impirun", "-v",
                        "-n", "3", "-host", "n1", "-env", "I_MPI_PIN_PROCESSOR_LIST", "0,1,2", "app", "1",
                        ":",
                        "-n", "1", "-host", "n2", "-env", "I_MPI_PIN_PROCESSOR_LIST", "1", "app", "1"]
    assert cmd.env_extra["I_MPI_PIN"] == "1"
    assert "--overlap" in cmd.env_extra["I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS"]


def test_intelmpi_local(tmp_path):
    cmd = build_launch(ex(exec="app", model="intelmpi"), TWO, local=True, scratch_dir=str(tmp_path))
    assert cmd.argv == ["mpirun", "-n", "4", "-hosts", "localhost", "app"]


def test_srunmpi_uniform(tmp_path):
    """Reference: srunmpi uses srun with --cpu-bind mask_cpu."""
    alloc = Allocation((("n1", (0, 1)), ("n2", (0, 1))))
    e = ex(exec="app", model="srunmpi", model_opts={"mpirun_args": ["--mpi=pmix"]})
    cmd = build_launch(e, alloc, local=False, scratch_dir=str(tmp_path))
    a = cmd.argv
    assert a[:6] == ["srun", "-N", "2", "-n", "4", "--nodelist=n1,n2"]
    assert "--ntasks-per-node=2" in a
    assert "--cpu-bind=verbose,mask_cpu:0x1,0x2" in a
    assert a[-2:] == ["--mpi=pmix", "app"]
    assert cmd.files == [] and cmd.env_extra == {}


def test_srunmpi_uneven_uses_arbitrary_hostfile_in_scratch(tmp_path):
    cmd = build_launch(ex(exec="app", model="srunmpi", model_opts={"srun_args": ["--x"]}), UNEVEN,
                       local=False, scratch_dir=str(tmp_path / "s"))
    a = cmd.argv
    assert a[a.index("-m") + 1] == "arbitrary"
    hostfile = cmd.env_extra["SLURM_HOSTFILE"]
    assert cmd.files == [hostfile] and hostfile.startswith(str(tmp_path / "s"))
    with open(hostfile) as f:
        assert f.read() == "n1\nn1\nn1\nn2\n"
    # local task 0 -> core 0 on n1, core 1 on n2: the union, as srun applies one list per node
    assert "--cpu-bind=verbose,mask_cpu:0x3,0x2,0x4" in a
    assert a[-2:] == ["--x", "app"]


@pytest.mark.parametrize("nodes, masks", [
    ((("n1", (0, 1)), ("n2", (0,))), "0x1,0x2"),                         # 3 ranks on 2+1
    ((("n3", (0, 1)), ("n4", (0, 1)), ("n5", (1,))), "0x3,0x2"),          # 5 ranks on 2+2+1
    ((("n1", (1,)), ("n2", (0, 1))), "0x3,0x2"),                          # 1 rank on a partly used node
])
def test_srunmpi_uneven_command_has_no_nodelist(tmp_path, nodes, masks):
    """An uneven split is placed by -m arbitrary and SLURM_HOSTFILE alone (one line per rank), as in
    the original: with --nodelist=a,b srun fails ('You asked for 3 tasks but hostlist specified 2
    nodes'). The mask list still has one entry per task of the fullest node."""
    alloc = Allocation(nodes)
    ncores = sum(len(c) for _, c in nodes)
    cmd = build_launch(ex(exec="app", args=("x",), model="srunmpi"), alloc, local=False,
                       scratch_dir=str(tmp_path))
    hostfile = cmd.env_extra["SLURM_HOSTFILE"]
    assert cmd.argv == ["srun", "-N", str(len(nodes)), "-n", str(ncores), "--overlap", "--overcommit",
                        "--mem-per-cpu=0", "-m", "arbitrary", f"--cpu-bind=verbose,mask_cpu:{masks}",
                        "app", "x"]
    assert not any(a.startswith(("--nodelist", "-w", "--ntasks-per-node")) for a in cmd.argv)
    with open(hostfile) as f:
        assert f.read().split() == [n for n, cores in nodes for _ in cores]
    assert cmd.files == [hostfile] and cmd.cpus is None
    unbound = build_launch(ex(exec="app", model="srunmpi"), alloc, local=False, scratch_dir=str(tmp_path),
                           binding=False)
    assert "--cpu-bind=verbose,cores" in unbound.argv and "-m" in unbound.argv
    assert not any(a.startswith("--nodelist") for a in unbound.argv)


def test_srunmpi_needs_slurm(tmp_path):
    with pytest.raises(ModelError, match="needs a Slurm allocation"):
        build_launch(ex(exec="app", model="srunmpi"), TWO, local=True, scratch_dir=str(tmp_path))


def test_modules_and_venv_wrapper_shape(tmp_path):
    e = ex(exec="app", args=("a",), modules=("openmpi/4.1.0_gcc620", "x y"), venv="/v env", model="openmpi")
    cmd = build_launch(e, TWO, local=True, scratch_dir=str(tmp_path))
    assert cmd.argv[:5] == ["bash", "-l", "-c", WRAPPER_SCRIPT, "qcg-task"]
    assert cmd.argv[5:9] == ["2", "openmpi/4.1.0_gcc620", "x y", "/v env"]
    assert cmd.argv[9] == "mpirun" and cmd.argv[-2:] == ["app", "a"]


NASTY = ["plain", "with space", "double\"quote", "single'quote", "$HOME", "${X:-y}", "`id`",
         "$(echo pwned)", "back\\slash", "semi;colon", "new\nline", "*", "", "-c", "'\"$@\""]


def _run(argv, env, cwd, timeout=30):
    async def main():
        loop = asyncio.get_running_loop()
        sp = ProcessSpawner(loop)
        done = loop.create_future()
        sp.spawn(1, ProcessSpec(argv, env, cwd, stdout=os.path.join(cwd, "out"),
                                stderr=os.path.join(cwd, "err")), lambda k, ev: done.set_result(ev))
        ev = await asyncio.wait_for(done, timeout)
        await sp.shutdown()
        return ev
    return asyncio.run(main())


def test_venv_and_modules_keep_arguments_intact(tmp_path):
    """Arguments with spaces, quotes and `$` pass through the modules/venv login shell
    unchanged; the venv is activated (its bin first on PATH); `module load` is called
    with the module names intact."""
    venv = tmp_path / "my venv $x"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(
        'export PATH="$(dirname "${BASH_SOURCE[0]}"):$PATH"\nexport VENV_ON=1\n')
    # a fake `module`: an exported bash function (as Lmod / Environment Modules
    # export it), so it survives the login shell's /etc/profile
    # a program that prints its argv as JSON (found through the venv's PATH)
    prog = venv / "bin" / "show-args"
    prog.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "print(json.dumps({'argv': sys.argv[1:], 'venv': os.environ.get('VENV_ON')}))\n")
    prog.chmod(0o755)
    e = ex(exec="show-args", args=tuple(NASTY), modules=("mod/1.0", "m $two"), venv=str(venv))
    cmd = build_launch(e, ONE, local=True, scratch_dir=str(tmp_path / "scratch"))
    env = dict(os.environ)
    env["BASH_FUNC_module%%"] = '() {  printf "%s\\n" "$@" > "$MODLOG"\n}'
    env["MODLOG"] = str(tmp_path / "modlog")
    wd = tmp_path / "wd"
    ev = _run(cmd.argv, env, str(wd))
    err = (wd / "err").read_text()
    assert ev.exit_code == 0, err
    out = json.loads((wd / "out").read_text())
    assert out == {"argv": NASTY, "venv": "1"}
    assert (tmp_path / "modlog").read_text().splitlines() == ["load", "mod/1.0", "m $two"]


def test_script_through_venv_wrapper(tmp_path):
    """A script with a venv runs in the activated environment (non-login inner shell)."""
    venv = tmp_path / "v"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("export VENV_ON=yes\n")
    cmd = build_launch(ex(script='echo "$VENV_ON" "a  b"', venv=str(venv)), ONE, local=True,
                       scratch_dir=str(tmp_path))
    ev = _run(cmd.argv, dict(os.environ), str(tmp_path))
    assert ev.exit_code == 0
    assert (tmp_path / "out").read_text() == "yes a  b\n"
