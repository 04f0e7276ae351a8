"""Node agents started before the partition manager has loaded its code.

A partition manager started by a governor knows its nodes from its
resources file. Starting the agents (srun/ssh, a few hundred ms each to come
up) only after the manager has imported everything put the two start-ups
one after the other; `start_early` runs first thing in the process
(`governor/manager_boot.py`): it creates the agent keys, binds the CURVE
ROUTER socket the agents connect to, starts the ZAP handler that admits only
the agent key, and spawns one agent per node. The `AgentLauncher` then
adopts the socket and the processes (`take`), as if it had started them.
Imports are kept to the standard library, pyzmq and `api.curve`.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from qcg.pilotjob.api import curve, protocol
from qcg.pilotjob.partition.agent_command import agent_command

_PENDING: "EarlyAgents | None" = None


@dataclass
class EarlyAgents:
    context: zmq.Context
    sock: zmq.Socket
    address: str
    auth: Any                          # zmq.auth.thread.ThreadAuthenticator, stopped by the launcher
    keys_dir: str
    start_method: str
    processes: dict[str, tuple[int, float]] = field(default_factory=dict)   # node -> (pid, start time)
    errors: dict[str, str] = field(default_factory=dict)                   # node -> why it did not start


def start_early(nodes: list[str], *, start_method: str, keys_dir: str, err_dir: str,
                bind_host: str = "0.0.0.0") -> EarlyAgents:
    """Bind the agents' socket and spawn every agent; kept for `take` (one per process)."""
    global _PENDING
    from zmq.auth.thread import ThreadAuthenticator

    _, secret = curve.create_pair(keys_dir, "partition")
    agent_public, _ = curve.create_pair(keys_dir, "agent")
    ctx = zmq.Context()
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=curve.allowed_keys({agent_public}))
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
    curve.make_server(sock, secret)
    port = sock.bind_to_random_port(f"tcp://{bind_host}")
    address = f"tcp://{reachable_address() if bind_host in ('0.0.0.0', '*') else bind_host}:{port}"
    early = EarlyAgents(ctx, sock, address, auth, keys_dir, start_method)
    env = dict(os.environ)
    for node in nodes:
        argv = agent_command(start_method, node, address, keys_dir)
        err = os.path.join(err_dir, f"agent-{node}.err")
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)]
        try:
            exe = _which(argv[0], env.get("PATH", os.defpath))
            pid = os.posix_spawn(exe, argv, env, file_actions=actions, setpgroup=0)
        except OSError as exc:
            early.errors[node] = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
            continue
        early.processes[node] = (pid, time.time())
    _PENDING = early
    return early


def take() -> EarlyAgents | None:
    """The agents started early in this process, once."""
    global _PENDING
    early, _PENDING = _PENDING, None
    return early


def reachable_address() -> str:
    """An address of this host that other nodes can reach (the host name's address)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _which(name: str, path: str) -> str:
    if os.sep in name:
        return name
    for d in path.split(os.pathsep):
        cand = os.path.join(d or ".", name)
        if os.access(cand, os.X_OK) and os.path.isfile(cand):
            return cand
    raise FileNotFoundError(2, "No such file or directory", name)
