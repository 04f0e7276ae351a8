"""The allocation's environment, carried past `srun` and `ssh` to the processes we start on its nodes.

srun gives a process the variables of the step it makes for it:
``SLURM_NNODES=1``, ``SLURM_PROCID``, ``SLURM_STEP_ID``, ``SLURM_TASK_PID``,
``SLURM_SRUN_COMM_PORT``, ``SRUN_DEBUG``, a ``TMPDIR``... A node agent or a
partition manager started that way handed them to every task, which must
see the allocation's instead, as the original's tasks see its service's
environment: a 2-node task read ``SLURM_NNODES=1``. ssh gives none of the
allocation's variables at all.

So the starting side passes its own values of those variables
(`step_owned`) in ``QCG_PM_ALLOCATION_ENV`` (JSON; `command_prefix`), and
the started process puts them back before anything else (`restore`).
``SLURMD_NODENAME`` is kept: it names the node the process (and a task)
runs on.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping

ENV_VAR = "QCG_PM_ALLOCATION_ENV"


def step_owned(key: str) -> bool:
    """Whether srun sets `key` for the step it starts (so the allocation's value would be lost)."""
    return key.startswith(("SLURM_", "SRUN_")) or key == "TMPDIR"


def command_prefix(env: MutableMapping[str, str] = os.environ) -> list[str]:
    """`env ENV_VAR=<json>`: put before a command srun or ssh runs, so that it can `restore`."""
    values = {k: v for k, v in env.items() if step_owned(k)}
    return ["env", f"{ENV_VAR}={json.dumps(values, separators=(',', ':'), sort_keys=True)}"]


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
    if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str) and step_owned(k)
                                               for k, v in values.items()):
        return False
    for key in [k for k in env if step_owned(k)]:
        del env[key]
    env.update(values)
    return True
