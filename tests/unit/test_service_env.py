"""agent/service_env.py: the service's environment as the base of an ssh-started agent's tasks
(reference 8 "Execution environments": the base is the service's environment)."""

from __future__ import annotations

import os
import stat

from qcg.pilotjob.agent.allocation_env import ENV_VAR
from qcg.pilotjob.agent.service_env import (FILE_VAR, adopt_file, node_owned, service_environment, task_base,
                                            write_file)


def test_the_services_variables_replace_the_logins_and_the_nodes_own_stay():
    service = {"PATH": "/mods/bin:/usr/bin", "LD_LIBRARY_PATH": "/mods/lib", "MYMARK": "1",
               "OMPI_ALLOW_RUN_AS_ROOT": "1", "SLURM_JOB_ID": "17", "SLURM_NNODES": "4", "SLURMD_NODENAME": "n1",
               "HOSTNAME": "login1", "TMPDIR": "/local/job17", "SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1",
               "XDG_RUNTIME_DIR": "/run/user/1000", "DISPLAY": "localhost:10.0", ENV_VAR: "{}"}
    own = {"PATH": "/usr/bin", "HOME": "/home/u", "SLURM_JOB_ID": "17", "SLURM_NNODES": "4", "SLURMD_NODENAME": "n3",
           "SSH_CONNECTION": "10.0.0.1 5 10.0.0.3 22", "HOSTNAME": "n3"}
    assert task_base(service, own) == {
        "PATH": "/mods/bin:/usr/bin", "LD_LIBRARY_PATH": "/mods/lib", "MYMARK": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "SLURM_JOB_ID": "17", "SLURM_NNODES": "4", "SLURMD_NODENAME": "n3",       # Slurm's: the agent's
        "HOSTNAME": "n3", "SSH_CONNECTION": "10.0.0.1 5 10.0.0.3 22"}             # the node's session, not the manager's
    # HOME is the node login's only when the service has none; the manager's TMPDIR, agent socket, runtime dir
    # and display are dropped where the node has none of its own


def test_a_slurm_variable_the_agent_lacks_comes_from_the_service():
    """Too long to be carried on the ssh command line (allocation_env.SSH_CARRY_LIMIT): srun would pass it."""
    assert task_base({"SLURM_BIG": "x" * 70_000}, {"SLURMD_NODENAME": "n2"}) == \
        {"SLURM_BIG": "x" * 70_000, "SLURMD_NODENAME": "n2"}


def test_what_is_sent_and_what_is_the_nodes():
    assert service_environment({"A": "1", ENV_VAR: "{}"}) == {"A": "1"}
    assert all(map(node_owned, ["SLURM_NODEID", "SLURMD_NODENAME", "SRUN_DEBUG", "SSH_TTY", "TMPDIR",
                                "XDG_SESSION_ID", "HOSTNAME"]))
    assert not any(map(node_owned, ["PATH", "LD_LIBRARY_PATH", "HOME", "OMPI_ALLOW_RUN_AS_ROOT", "MODULEPATH"]))


def test_a_manager_started_by_ssh_adopts_the_governors_environment_file(tmp_path, capsys):
    """Governor mode with `--nl-start-method ssh`: the governor writes its environment to a private file,
    the manager (a fresh ssh login) takes it as its own, keeping its node's variables; a file it cannot
    read leaves the login's environment with one warning line."""
    path = tmp_path / "service-env.json"
    write_file(str(path), {"PATH": "/mods/bin", "MYMARK": "1", "HOSTNAME": "gov", ENV_VAR: "{}"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    login = {"PATH": "/usr/bin", "SHLVL": "1", "HOSTNAME": "n2", "SLURMD_NODENAME": "n2", FILE_VAR: str(path)}
    adopt_file(login)
    assert login == {"PATH": "/mods/bin", "MYMARK": "1", "HOSTNAME": "n2", "SLURMD_NODENAME": "n2"}

    login = {"PATH": "/usr/bin", FILE_VAR: str(tmp_path / "missing.json")}
    adopt_file(login)
    assert login == {"PATH": "/usr/bin"}
    assert "cannot be read" in capsys.readouterr().err
    unchanged = {"PATH": "/usr/bin"}
    adopt_file(unchanged)
    assert unchanged == {"PATH": "/usr/bin"}
