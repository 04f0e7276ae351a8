"""agent/allocation_env.py: the allocation's Slurm variables carried past srun/ssh (reference 8.1)."""

from __future__ import annotations

import json
import shlex

from qcg.pilotjob.agent.allocation_env import ENV_VAR, command_prefix, restore
from qcg.pilotjob.partition.agent_command import agent_command


def test_restore_replaces_the_steps_variables_with_the_carried_ones():
    outer = {"SLURM_NNODES": "4", "SLURM_JOB_ID": "17", "HOME": "/home/u", "SLURMD_NODENAME": "n1",
             "SLURM_CPUS_ON_NODE": "2", "SLURM_STEP_ID": "4294967290"}
    prefix = command_prefix(outer)
    assert prefix[0] == "env" and prefix[1].startswith(ENV_VAR + "=")
    step = {"SLURM_NNODES": "1", "SLURM_JOB_ID": "17", "SLURM_PROCID": "0", "SRUN_DEBUG": "3", "TMPDIR": "/tmp",
            "HOME": "/home/u", "SLURMD_NODENAME": "n3", "SLURM_CPUS_ON_NODE": "1", "SLURM_STEP_ID": "0",
            ENV_VAR: prefix[1].split("=", 1)[1]}
    assert restore(step)
    # what srun set for its step goes or gets the allocation's value back; what describes the node stays
    assert step == {"SLURM_NNODES": "4", "SLURM_JOB_ID": "17", "HOME": "/home/u", "SLURMD_NODENAME": "n3",
                    "SLURM_CPUS_ON_NODE": "1", "TMPDIR": "/tmp", "SLURM_STEP_ID": "4294967290"}


def test_only_the_step_variables_travel_on_the_command_line():
    """One argument holds at most 128 KiB (MAX_ARG_STRLEN): a review's 2 x 70 KB SLURM_* variables made every
    agent fail to start with E2BIG when all SLURM_* values were carried; srun passes those on by itself."""
    outer = {"SLURM_BIG1": "x" * 70_000, "SLURM_BIG2": "y" * 70_000, "SLURM_NNODES": "2"}
    assert len(command_prefix(outer)[1]) < 200
    assert len(command_prefix(outer, everything=True)[1]) < 200       # ssh: too long, the step's only


def test_restore_without_or_with_a_bad_value_changes_nothing_else():
    env = {"SLURM_NNODES": "1"}
    assert not restore(env) and env == {"SLURM_NNODES": "1"}
    for bad in ("not json", json.dumps(["a"]), json.dumps({"SLURM_NNODES": 2}), json.dumps({"PATH": "/x"})):
        env = {"SLURM_NNODES": "1", ENV_VAR: bad}
        assert not restore(env)
        assert env == {"SLURM_NNODES": "1"}


def test_agents_started_by_srun_or_ssh_carry_the_allocation(monkeypatch):
    monkeypatch.setenv("SLURM_NNODES", "4")
    srun = agent_command("slurm", "n2", "tcp://h:1", "/keys")
    assert srun[0] == "srun" and "env" in srun
    # all of the job's CPUs on the node for the agent's step (Slurm 20.11 gave a step of one task one CPU)
    assert "--whole" in srun[:srun.index("env")]
    carried = srun[srun.index("env") + 1]
    assert json.loads(carried.split("=", 1)[1])["SLURM_NNODES"] == "4"
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    ssh = agent_command("ssh", "n2", "tcp://h:1", "/keys")
    remote = shlex.split(ssh[-1])
    assert remote[0] == "env"
    # ssh passes no environment: the allocation's other variables go along too
    assert json.loads(remote[1].split("=", 1)[1])["SLURM_JOB_ID"] == "17"
    srun = agent_command("slurm", "n2", "tcp://h:1", "/keys")
    assert "SLURM_JOB_ID" not in json.loads(srun[srun.index("env") + 1].split("=", 1)[1])
    assert "env" not in agent_command("local", "n2", "tcp://h:1", "/keys")[:1]
