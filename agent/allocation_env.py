"""The allocation's environment, carried past `srun` and `ssh` to the processes we start on its nodes.

srun gives a process the variables of the step it makes for it:
``SLURM_NNODES=1``, ``SLURM_PROCID``, ``SLURM_STEP_ID``, ``SLURM_TASK_PID``,
``SLURM_SRUN_COMM_PORT``, ``SRUN_DEBUG``... A node agent or a partition
manager started that way handed them to every task, which must see the
allocation's instead, as the original's tasks see its service's
environment: a 2-node task read ``SLURM_NNODES=1``. ssh gives none of the
allocation's variables at all.

So the starting side passes its own values of those variables
(`step_owned`) in ``QCG_PM_ALLOCATION_ENV`` (JSON; `command_prefix`), and
the started process puts them back before anything else (`restore`).
Through srun only what srun sets for a step is carried, a few short
values: what describes the node itself stays the node's (``SLURMD_NODENAME``,
``SLURM_CPUS_ON_NODE``, ``SLURM_TOPOLOGY_ADDR``, ``TMPDIR``), and srun
passes the allocation's other variables on unchanged. Through ssh, which
passes none, all ``SLURM_*`` go, as long as they fit one argument (128 KiB
at most).
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping

ENV_VAR = "QCG_PM_ALLOCATION_ENV"


# what srun sets (or changes) for a one-node step of its own, seen on Slurm 22-23: the step's size and place
_STEP_PREFIXES = ("SLURM_STEP_", "SLURM_SRUN_COMM_", "SLURM_CPU_BIND", "SRUN_")
_STEP_NAMES = frozenset({
    "SLURM_NNODES", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_NODELIST", "SLURM_TASKS_PER_NODE",
    "SLURM_NTASKS_PER_NODE", "SLURM_STEPID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_TASK_PID",
    "SLURM_GTIDS", "SLURM_LAUNCH_NODE_IPADDR", "SLURM_DISTRIBUTION", "SLURM_OVERLAP", "SLURM_MEM_PER_CPU",
    "SLURM_CPUS_PER_TASK", "SLURM_UMASK", "SLURM_PRIO_PROCESS", "SLURM_JOB_CPUS_PER_NODE_PACK_GROUP_0",
})


_CARRIED_PREFIXES = ("SLURM_", "SRUN_")


def step_owned(key: str) -> bool:
    """Whether srun sets `key` for the step it starts (so the allocation's value would be lost)."""
    return key in _STEP_NAMES or key.startswith(_STEP_PREFIXES)


SSH_CARRY_LIMIT = 64 * 1024    # characters of the allocation's variables an ssh command line takes along


def command_prefix(env: MutableMapping[str, str] = os.environ, *, everything: bool = False) -> list[str]:
    """`env ENV_VAR=<json>`: put before a command srun or ssh runs, so that it can `restore`.

    srun passes the allocation's other variables on by itself; ssh passes
    none, so with `everything` (ssh) all SLURM_* variables go along -- unless
    they are too long for one argument (128 KiB at most), then the step's only.
    """
    def carried(values: dict[str, str]) -> str:
        return json.dumps(values, separators=(",", ":"), sort_keys=True)

    text = carried({k: v for k, v in env.items() if step_owned(k)})
    if everything:
        whole = carried({k: v for k, v in env.items() if k.startswith(_CARRIED_PREFIXES)})
        if len(whole) <= SSH_CARRY_LIMIT:
            text = whole
    return ["env", f"{ENV_VAR}={text}"]


def restore(env: MutableMapping[str, str] = os.environ) -> bool:
    """Replace the step's variables in `env` with those carried in ENV_VAR (removed); False if none came.

    A value that is not a JSON object of strings is ignored (the step's
    variables stay): the process still runs, as it did before.
    """
    text = env.pop(ENV_VAR, None)
    if text is None:
        return False
    try:
        values = json.loads(text)
    except ValueError:
        return False
    if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str) and
                                               k.startswith(_CARRIED_PREFIXES) for k, v in values.items()):
        return False
    for key in [k for k in env if step_owned(k)]:
        del env[key]
    env.update(values)
    return True
