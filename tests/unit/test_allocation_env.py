"""agent/allocation_env.py: the allocation's Slurm variables carried past srun/ssh (reference 8.1)."""

from __future__ import annotations

import json
import shlex

from qcg.pilotjob.agent.allocation_env import ENV_VAR, command_prefix, restore
from qcg.pilotjob.partition.agent_command import agent_command


def test_restore_replaces_the_steps_variables_with_the_carried_ones():
    outer = {"SLURM_NNODES": "4", "SLURM_JOB_ID": "17", "HOME": "/home/u", "SLURMD_NODENAME": "n1"}
    prefix = command_prefix(outer)
    assert prefix[0] == "env" and prefix[1].startswith(ENV_VAR + "=")
    step = {"SLURM_NNODES": "1", "SLURM_JOB_ID": "17", "SLURM_PROCID": "0", "SRUN_DEBUG": "3", "TMPDIR": "/tmp",
            "HOME": "/home/u", "SLURMD_NODENAME": "n3", ENV_VAR: prefix[1].split("=", 1)[1]}
    assert restore(step)
    # the node it runs on stays; what srun set for its step goes; the allocation's values come back
    assert step == {"SLURM_NNODES": "4", "SLURM_JOB_ID": "17", "HOME": "/home/u", "SLURMD_NODENAME": "n3"}


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
    carried = srun[srun.index("env") + 1]
    assert json.loads(carried.split("=", 1)[1])["SLURM_NNODES"] == "4"
    ssh = agent_command("ssh", "n2", "tcp://h:1", "/keys")
    remote = shlex.split(ssh[-1])
    assert remote[0] == "env" and remote[1] == carried
    assert "env" not in agent_command("local", "n2", "tcp://h:1", "/keys")[:1]
