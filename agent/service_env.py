"""The service's environment as the base of the tasks of an agent started by ssh.

Reference, "Execution environments": a task's environment is the service's
own, then the job's ``env``, then the ``QCG_PM_*`` (and with the slurm
schema ``SLURM_*``) variables. srun exports the service's environment to the
agents it starts (``--export=ALL``), so their tasks get it for free. ssh
gives an agent a fresh login instead: no ``export MYMARK=1``, no ``PATH`` or
``LD_LIBRARY_PATH`` of a ``module load``, no ``OMPI_ALLOW_RUN_AS_ROOT*`` made
before ``salloc``. So the partition manager sends its environment to each
ssh-started agent once, in its answer to the agent's ``ready`` (the CURVE
channel: not on the ssh command line, where ``ps`` shows it to every user of
the node and one argument holds 128 KiB at most), and the agent builds its
tasks' base from it with `task_base`. A partition manager started by ssh
(governor mode) is such a fresh login itself: its governor writes its
environment to a private file in its aux dir (`write_file`, on the shared
file system where the managers already find their node groups) and names it
on the ssh command line; the manager adopts it (`adopt_file`) before it
starts its agents, which then get it as above.

What the agent keeps of its own:

* Slurm's variables (``SLURM_*``, ``SLURMD_*``, ``SRUN_*``): they reached
  the agent through `allocation_env` (the allocation's values, carried on
  the command line and put back by `restore`) plus what is the node's own
  (``SLURMD_NODENAME``); that path already decides, as for srun, which
  values are the allocation's and which the node's. A Slurm variable the
  agent lacks (too long to be carried) comes from the service, as srun
  would pass it.
* Variables that name something of one host's login session or of the host
  itself: ``HOSTNAME``, ``TMPDIR`` (``TEMP``, ``TMP``), ``SSH_*`` (the connection, its agent
  socket, its tty), ``XDG_RUNTIME_DIR`` and ``XDG_SESSION_*``,
  ``DBUS_SESSION_BUS_ADDRESS``, ``DISPLAY``. The service's values point at
  the manager's host: a socket or a directory that does not exist on the
  node (``/run/user/0``, a node-local ``TMPDIR`` made by a job prolog), a
  display forwarded by the manager's ssh session, or a name that is wrong
  here. So the node's own value wins, and where the node has none the
  service's is dropped rather than passed on: a task then falls back to the
  default (``/tmp`` for a missing ``TMPDIR``) instead of failing on a path
  of another host. (srun would pass them on verbatim; over ssh we know
  better, because the node's login tells us its own.)

Everything else -- ``PATH``, ``LD_LIBRARY_PATH``, ``HOME``, user variables,
``OMPI_*`` -- is the service's. The agent's own process environment
(``os.environ``: its run lock's ``TMPDIR``, its Python) is not changed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, MutableMapping

from qcg.pilotjob.agent.allocation_env import ENV_VAR

FILE_VAR = "QCG_PM_SERVICE_ENV_FILE"    # names the governor's environment file to an ssh-started manager

# Slurm's variables: the agent's own, as `allocation_env` left them
_SLURM_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_")
# what names a resource of one host or of its login session: the node's value or none (see the docstring)
_HOST_NAMES = frozenset({"HOSTNAME", "TMPDIR", "TEMP", "TMP", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS",
                         "DISPLAY"})
_HOST_PREFIXES = ("SSH_", "XDG_SESSION_")


def host_owned(key: str) -> bool:
    """Whether `key` names something of one host or login session: the node's value or none, never the
    service's."""
    return key in _HOST_NAMES or key.startswith(_HOST_PREFIXES)


def node_owned(key: str) -> bool:
    """Whether a task of an ssh-started agent gets the node's value of `key` when the node has one."""
    return key.startswith(_SLURM_PREFIXES) or host_owned(key)


def task_base(service: Mapping[str, str], own: Mapping[str, str]) -> dict[str, str]:
    """The base environment of an ssh-started agent's tasks: `service`'s, with the node's own (`node_owned`)
    variables of `own` (the agent's environment) instead of the service's; see the module docstring."""
    base = {k: v for k, v in service.items() if not host_owned(k) and k != ENV_VAR}
    base.update((k, v) for k, v in own.items() if node_owned(k))
    return base


def service_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What a partition manager sends its ssh-started agents: its environment, strings only, without the
    carrier of the allocation's variables (the agent has those already)."""
    return {k: v for k, v in env.items() if isinstance(k, str) and isinstance(v, str) and k != ENV_VAR}


def write_file(path: str, env: Mapping[str, str] = os.environ) -> None:
    """The service's environment (`service_environment`) as JSON in a new file only its user may read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as fh:
        json.dump(service_environment(env), fh)


def adopt_file(environ: MutableMapping[str, str] = os.environ) -> None:
    """In a process started by ssh with FILE_VAR: the environment becomes `task_base` of the file's and its
    own. A file that cannot be read leaves the login's environment, with a warning: the run goes on, as
    it did before the file existed."""
    path = environ.pop(FILE_VAR, None)
    if not path:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, encoding="utf-8") as fh:
            service = json.load(fh)
        if not isinstance(service, dict) or not all(isinstance(v, str) for v in service.values()):
            raise ValueError("not a JSON object of strings")
    except (OSError, ValueError) as exc:
        print(f"Warning: the governor's environment '{path}' cannot be read ({exc}): the tasks get this "
              f"login's environment", file=sys.stderr)
        return
    base = task_base(service, environ)
    environ.clear()
    environ.update(base)
