"""Task environment variables (reference section 8 "Execution environments":
8.1 Slurm execution environment, 8.2 QCG execution environment; QCG_PM_CPU_SET
from "Execution models")."""

from __future__ import annotations

import re

import pytest

from qcg.pilotjob.partition.environment import (
    compress_counts, new_step_id, resolve_schemas, task_environment)
from qcg.pilotjob.partition.task import Allocation

ALLOC = Allocation((("n1", (0, 1)), ("n2", (2, 3)), ("n3", (5,))))
BASE = {"PATH": "/usr/bin:/bin", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0"}


def test_qcg_variables_section_8_2():
    """8.2: QCG_PM_NNODES, _NODELIST, _NPROCS, _NTASKS, _STEP_ID, _TASKS_PER_NODE,
    _ZMQ_ADDRESS; plus QCG_PM_CPU_SET ("Execution models")."""
    env = task_environment(BASE, {}, ALLOC, "abc", envschema="common", zmq_address="tcp://1.2.3.4:5555")
    assert env["QCG_PM_NNODES"] == "3"
    assert env["QCG_PM_NODELIST"] == "n1,n2,n3"
    assert env["QCG_PM_NPROCS"] == "5"
    assert env["QCG_PM_NTASKS"] == "5"
    assert env["QCG_PM_TASKS_PER_NODE"] == "2,2,1"
    assert env["QCG_PM_STEP_ID"] == "abc"
    assert env["QCG_PM_CPU_SET"] == "0,1,2,3,5"
    assert env["QCG_PM_ZMQ_ADDRESS"] == "tcp://1.2.3.4:5555"
    assert env["HOME"] == "/root" and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert not any(k.startswith("SLURM_") for k in env)


def test_no_zmq_address_and_no_cpu_set_without_binding():
    env = task_environment(BASE, {}, ALLOC, "x", envschema="common", binding=False)
    assert "QCG_PM_ZMQ_ADDRESS" not in env
    assert "QCG_PM_CPU_SET" not in env


def test_cpu_set_repeats_core_ids_across_nodes():
    """As the original: core ids of all nodes in order, no node separator."""
    env = task_environment({}, {}, Allocation((("a", (0, 1)), ("b", (0, 1)))), "s", envschema="common")
    assert env["QCG_PM_CPU_SET"] == "0,1,0,1"


def test_slurm_variables_section_8_1():
    """8.1: SLURM_NNODES, SLURM_NODELIST, SLURM_NPROCS, SLURM_NTASKS, SLURM_JOB_NODELIST,
    SLURM_JOB_NUM_NODES, SLURM_STEP_NODELIST, SLURM_STEP_NUM_NODES, SLURM_STEP_NUM_TASKS,
    SLURM_TASKS_PER_NODE / SLURM_STEP_TASKS_PER_NODE (Slurm's compressed form)."""
    env = task_environment(BASE, {}, ALLOC, "s", envschema="slurm")
    assert env["SLURM_NNODES"] == env["SLURM_JOB_NUM_NODES"] == env["SLURM_STEP_NUM_NODES"] == "3"
    assert env["SLURM_NODELIST"] == env["SLURM_JOB_NODELIST"] == env["SLURM_STEP_NODELIST"] == "n1,n2,n3"
    assert env["SLURM_NPROCS"] == env["SLURM_NTASKS"] == env["SLURM_STEP_NUM_TASKS"] == "5"
    assert env["SLURM_TASKS_PER_NODE"] == env["SLURM_STEP_TASKS_PER_NODE"] == "2(x2),1"
    assert env["SLURM_JOB_CPUS_PER_NODE"] == "2(x2),1"
    assert "SLURM_NTASKS_PER_NODE" not in env          # nodes differ
    assert env["SLURM_OVERLAP"] == "1"
    assert env["SLURM_CPU_BIND"] == "verbose,mask_cpu:0x1,0x2,0x4,0x8,0x20"
    assert "SLURM_HOSTFILE" not in env                  # only when the caller wrote one
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert env["QCG_PM_NNODES"] == "3"                  # common variables always present


def test_slurm_ntasks_per_node_when_uniform_and_hostfile():
    alloc = Allocation((("n1", (0, 1)), ("n2", (0, 1))))
    env = task_environment({}, {}, alloc, "s", envschema="slurm", binding=False, hostfile="/scratch/h")
    assert env["SLURM_NTASKS_PER_NODE"] == "2"
    assert env["SLURM_TASKS_PER_NODE"] == "2(x2)"
    assert env["SLURM_HOSTFILE"] == "/scratch/h"
    assert "SLURM_CPU_BIND" not in env


def test_hostfile_brings_openmpi_srun_args_naming_the_tasks_nodes():
    """Reference 8 ("an appropriate machine file is created with a list of resources for each task"): with
    the task's hostfile comes OMPI_MCA_plm_slurm_args=--nodelist=<its nodes>, so that mpirun's daemons
    (srun with no node list) start there; after the manager's own srun args for OpenMPI, if it has any."""
    env = task_environment(BASE, {}, ALLOC, "s", envschema="slurm", hostfile="/scratch/h")
    assert env["SLURM_HOSTFILE"] == "/scratch/h"
    assert env["OMPI_MCA_plm_slurm_args"] == "--nodelist=n1,n2,n3"
    base = {**BASE, "OMPI_MCA_plm_slurm_args": "--cpu-freq=high"}
    env = task_environment(base, {}, ALLOC, "s", envschema="slurm", hostfile="/scratch/h")
    assert env["OMPI_MCA_plm_slurm_args"] == "--cpu-freq=high --nodelist=n1,n2,n3"
    env = task_environment(BASE, {}, ALLOC, "s", envschema="slurm")
    assert "OMPI_MCA_plm_slurm_args" not in env and "SLURM_HOSTFILE" not in env


def test_a_jobs_own_hostfile_and_openmpi_srun_args_are_kept():
    """Reference 8.1: the job's env; unlike the other SLURM_* variables, a job's own SLURM_HOSTFILE and
    OMPI_MCA_plm_slurm_args are kept (they steer its own srun and mpirun)."""
    own = {"SLURM_HOSTFILE": "/mine", "OMPI_MCA_plm_slurm_args": "--exclusive", "SLURM_NNODES": "9"}
    env = task_environment(BASE, own, ALLOC, "s", envschema="slurm", hostfile="/scratch/h")
    assert env["SLURM_HOSTFILE"] == "/mine" and env["OMPI_MCA_plm_slurm_args"] == "--exclusive"
    assert env["SLURM_NNODES"] == "3"


def test_auto_schema_follows_the_base_environment():
    """'auto' picks slurm inside an allocation (SLURM_NODELIST and SLURM_JOB_CPUS_PER_NODE set)."""
    assert resolve_schemas("auto", {}) == {"common"}
    assert resolve_schemas("auto", {"SLURM_NODELIST": "n1", "SLURM_JOB_CPUS_PER_NODE": "2"}) == \
        {"common", "slurm"}
    assert resolve_schemas("slurm,common", {}) == {"common", "slurm"}
    with pytest.raises(ValueError, match='environment "pbs" not available'):
        resolve_schemas("pbs", {})
    env = task_environment({"SLURM_NODELIST": "x", "SLURM_JOB_CPUS_PER_NODE": "9"}, {}, ALLOC, "s")
    assert env["SLURM_NODELIST"] == "n1,n2,n3"


def test_precedence_job_env_over_base_allocation_over_job_env_extra_last():
    """As the original: base < job env < QCG/SLURM variables; model extras last."""
    job_env = {"HOME": "/job/home", "QCG_PM_NNODES": "99", "SLURM_NTASKS": "99", "MINE": "1",
               "OMP_NUM_THREADS": "3"}
    env = task_environment(BASE, job_env, ALLOC, "s", envschema="slurm",
                           extra={"OMP_NUM_THREADS": "5", "I_MPI_PIN": "1"})
    assert env["HOME"] == "/job/home" and env["MINE"] == "1"
    assert env["QCG_PM_NNODES"] == "3" and env["SLURM_NTASKS"] == "5"
    assert env["OMP_NUM_THREADS"] == "5" and env["I_MPI_PIN"] == "1"
    assert BASE == {"PATH": "/usr/bin:/bin", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0"}  # untouched


def test_step_id_format_and_uniqueness():
    """QCG_PM_STEP_ID: unique per task, uuid4 hex as the original."""
    ids = {new_step_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_compress_counts():
    assert compress_counts([1]) == "1"
    assert compress_counts([2, 2, 2, 1, 4, 4]) == "2(x3),1,4(x2)"
    assert compress_counts([]) == ""
