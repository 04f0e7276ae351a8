"""Node agents started before the partition manager has loaded its code.

A partition manager started by a governor knows its nodes from its
resources file. Starting the agents (srun/ssh, a few hundred ms each to come
up) only after the manager has imported everything put the two start-ups
one after the other; `start_early` runs first thing in the process
(`governor/manager_boot.py`). It spawns one agent per node before importing
anything beyond the standard library (the agents wait for the address in a
file of the keys directory: `--address-file`), then creates the agent keys,
binds the CURVE ROUTER socket the agents connect to, starts the ZAP handler
that admits only the agent key and writes the address. The `AgentLauncher`
then adopts the socket and the processes (`take`), as if it had started them.

The agent of the node the manager itself runs on (`own_node`: the manager's
srun step is on that node) is not started through srun: the manager forks it
once the agent's modules are loaded (the manager needs them too) and before
any thread or ZMQ context exists. It is then a complete agent in the same
step as the manager, with the same CPUs, and it stops its tasks when the
manager falls silent, as every agent does, or dies; but it costs no interpreter start
or imports: on a small allocation those start-ups, not the manager's work,
were what made a partitioned run start later than a flat one.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from qcg.pilotjob.partition.agent_command import agent_args, agent_command

if TYPE_CHECKING:
    import zmq

ADDRESS_FILE = "address"       # in the keys directory: where the early agents connect to

_PENDING: "EarlyAgents | None" = None


@dataclass
class EarlyAgents:
    context: "zmq.Context"
    sock: "zmq.Socket"
    address: str
    auth: Any                          # zmq.auth.thread.ThreadAuthenticator, stopped by the launcher
    keys_dir: str
    start_method: str
    processes: dict[str, tuple[int, float]] = field(default_factory=dict)   # node -> (pid, start time)
    errors: dict[str, str] = field(default_factory=dict)                   # node -> why it did not start
    forked: str | None = None          # the node whose agent is this process's child (stops on PARENT_GONE)


def start_early(nodes: list[str], *, start_method: str, keys_dir: str, err_dir: str,
                bind_host: str = "0.0.0.0", own_node: str | None = None,
                proc_stats_dir: str | None = None) -> EarlyAgents:
    """Spawn every agent, then bind their socket and publish its address; kept for `take` (one per process).

    The agent of `own_node` (one of `nodes`: where this process runs) is forked from this process.
    With `proc_stats_dir` the agents record their tasks' processes (`--enable-proc-stats`).
    """
    global _PENDING
    os.makedirs(keys_dir, mode=0o700, exist_ok=True)
    address_file = os.path.join(keys_dir, ADDRESS_FILE)
    try:
        os.unlink(address_file)          # an earlier attempt's address must not be read
    except FileNotFoundError:
        pass
    own = own_node if own_node in nodes else None
    processes, errors = _spawn_agents([n for n in nodes if n != own], start_method, keys_dir, err_dir,
                                      address_file, proc_stats_dir)
    try:
        if own is not None:
            try:
                processes[own] = _fork_agent(own, keys_dir, err_dir, address_file, proc_stats_dir)
            except (OSError, ImportError) as exc:      # that agent alone starts the usual way
                errors[own] = f"cannot fork it: {exc}"
        early = _listen(keys_dir, start_method, bind_host, address_file, processes, errors)
    except BaseException:
        # the agents would wait for an address that never comes: end them (the manager starts its own)
        for node, (pid, _) in processes.items():
            try:
                os.killpg(pid, stop_signal(node, own))
            except OSError:
                pass
        raise
    early.forked = own if own in processes else None
    _PENDING = early
    return early


def _listen(keys_dir: str, start_method: str, bind_host: str, address_file: str,
            processes: dict[str, tuple[int, float]], errors: dict[str, str]) -> EarlyAgents:
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

    from qcg.pilotjob.api import curve, protocol

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
    curve.write_private(address_file, address.encode())   # atomic: an agent never reads half of it
    return EarlyAgents(ctx, sock, address, auth, keys_dir, start_method, processes, errors)


def _spawn_agents(nodes: list[str], start_method: str, keys_dir: str, err_dir: str, address_file: str,
                  proc_stats_dir: str | None = None) -> tuple[dict[str, tuple[int, float]], dict[str, str]]:
    processes: dict[str, tuple[int, float]] = {}
    errors: dict[str, str] = {}
    env = dict(os.environ)
    for node in nodes:
        argv = agent_command(start_method, node, None, keys_dir, address_file=address_file,
                             proc_stats_dir=proc_stats_dir)
        err = os.path.join(err_dir, f"agent-{node}.err")
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)]
        try:
            exe = _which(argv[0], env.get("PATH", os.defpath))
            pid = os.posix_spawn(exe, argv, env, file_actions=actions, setpgroup=0)
        except OSError as exc:
            errors[node] = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
            continue
        processes[node] = (pid, time.time())
    return processes, errors


PARENT_GONE = signal.SIGHUP     # what the kernel sends a forked agent when its manager dies


def stop_signal(node: str, forked: str | None) -> int:
    """What asks `node`'s agent to stop (before SIGKILL): the forked agent ignores SIGTERM (`_fork_agent`)."""
    return PARENT_GONE if node == forked else signal.SIGTERM


def _fork_agent(node: str, keys_dir: str, err_dir: str, address_file: str,
                proc_stats_dir: str | None = None) -> tuple[int, float]:
    """Fork the agent of this process's own node; call before any thread or ZMQ context exists.

    Slurm signals a step as a whole (`scancel --signal`, srun passing on a
    TERM): the manager takes a first SIGTERM as "leave once our tasks have
    ended", so its forked agent ignores SIGTERM and SIGINT and ends on its
    manager's `exit`, or on SIGHUP, which the kernel sends it when the manager
    dies (PR_SET_PDEATHSIG) -- a manager killed outright does not leave its
    agent and tasks running outside the step.
    """
    from qcg.pilotjob.agent import agent as agent_module

    argv = agent_args(node, None, keys_dir, address_file, proc_stats_dir)
    err = os.path.join(err_dir, f"agent-{node}.err")
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    # no signal handler may run in the child before it is set up (it would run the manager's code)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, PARENT_GONE})
    try:
        pid = os.fork()
        if pid == 0:
            _be_forked_agent(agent_module, argv, node, err, parent, mask)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        os.setpgid(pid, pid)     # as the child does itself: whichever runs first, killpg finds the group
    except OSError:
        pass
    return pid, time.time()


def _be_forked_agent(agent_module: Any, argv: list[str], node: str, err: str, parent: int,
                     mask: set[signal.Signals]) -> NoReturn:
    code = 1
    try:
        os.setpgid(0, 0)         # its own group, as a spawned agent: killpg reaches it and its tasks only
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # started under nohup (or by a shell that ignores SIGHUP) the manager passes SIG_IGN on for
        # PARENT_GONE: the agent would drop its manager's stop signal and the kernel's death signal
        signal.signal(PARENT_GONE, signal.SIG_DFL)
        _prctl(PR_SET_PDEATHSIG, int(PARENT_GONE))
        _prctl(PR_SET_NAME, b"qcg-pj-agent")          # `ps`/`top` tell it from its manager
        signal.pthread_sigmask(signal.SIG_SETMASK, mask - {PARENT_GONE})     # nor blocked, for the same reason
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), 2)
        if os.getppid() == parent:                  # else the manager died before PR_SET_PDEATHSIG took effect
            code = agent_module.main(argv, stop_signals=(PARENT_GONE,))
    except BaseException as exc:  # noqa: BLE001 - whatever happens, this process must not go on
        print(f"agent {node}: {exc!r}", file=sys.stderr)
    finally:
        sys.stderr.flush()
        os._exit(code)


PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15


def _prctl(option: int, value: int | bytes) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")


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
