"""The node agent: one process per node, started by srun or ssh, spawning the tasks of that node.

It keeps one CURVE-authenticated DEALER connection to its partition (its
identity is the node name), announces itself with the CPUs it can really
use, runs what it is told through `ProcessSpawner`, and reports starts and
exits in batches. Heartbeats go both ways: when the partition falls silent
the agent kills its tasks and exits, so a lost partition leaves no orphans.

Where to connect is `--address`, or `--address-file` when the agent is started
together with its partition manager, before the manager has bound its socket.

Messages (msgpack maps with "v", see api/protocol.py), partition -> agent:
`run` (task, argv, env, cwd, stdin, stdout, stderr, cpus, walltime),
`cancel` (task), `exit`, `hb`, and to an agent started by ssh, once, right
after its `ready`, `env` (env: the service's environment, the base of its
tasks' environment, see agent/service_env.py); agent -> partition: `ready` (node, cpus,
pid), `events` (list of `started`/`exited` records), `hb`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import time
from typing import Any

import zmq
import zmq.asyncio

from qcg.pilotjob.agent.allocation_env import restore as restore_allocation_env
from qcg.pilotjob.agent.run_lock import RunLock
from qcg.pilotjob.agent.service_env import task_base
from qcg.pilotjob.agent.spawner import ProcessExit, ProcessSpawner, ProcessSpec
from qcg.pilotjob.api import curve, protocol
from qcg.pilotjob.api.private_files import read_private
from qcg.pilotjob.api.socket_batches import receive_frames
from qcg.pilotjob.api.unless_stopped import unless_stopped

HEARTBEAT = 2.0
MISSED_HEARTBEATS = 5


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Agent:
    def __init__(self, node: str, address: str, keys_dir: str | None, heartbeat: float = HEARTBEAT,
                 stop_signals: tuple[int, ...] = STOP_SIGNALS, proc_stats_dir: str | None = None) -> None:
        self.node = node
        self.proc_stats_dir = proc_stats_dir     # --proc-stats-dir: record the tasks' processes (reference 16)
        self.stop_signals = stop_signals
        self.address = address
        self.keys_dir = keys_dir
        self.heartbeat = heartbeat
        self._events: list[list[Any]] = []
        self._flush_pending = False
        self._last_heard = time.monotonic()
        self._done: asyncio.Event | None = None
        # the tasks' environment: the agent's own, read once (`dict(os.environ)` decodes every variable
        # again: 67 us for the ~100 of a Slurm step, per task, against 0.3 us for a copy of this); an agent
        # started by ssh replaces it with the service's once that arrives (`env`, before any `run`)
        self._base_env = dict(os.environ)
        self._own_env = self._base_env      # what the node's own variables are taken from (agent/service_env.py)

    async def run(self) -> int:
        stats = None
        if self.proc_stats_dir is not None:
            from qcg.pilotjob.agent.process_stats import start_collector

            stats = start_collector(self.proc_stats_dir, self.node)
        try:
            return await self._serve()
        finally:
            if stats is not None:     # however the agent ends: exit, a stop signal, an error
                stats.stop()

    async def _take_run_lock(self, lock: RunLock) -> None:
        """The run's lock on this node (agent/run_lock.py), before the agent says it is ready: the tasks an
        agent of a killed service left here end before any of ours starts. A stop signal ends the wait."""
        def waiting() -> None:
            print(f"agent {self.node}: waiting for the tasks of the interrupted run on this node to end",
                  file=sys.stderr)

        assert self._done is not None
        if await unless_stopped(lock.acquire(waiting=waiting), self._done) is False:
            print(f"agent {self.node}: run lock {lock.path} not taken: tasks of an interrupted run may still "
                  f"run here", file=sys.stderr)

    async def _serve(self) -> int:
        # named after the keys directory, which is in the run's aux dir (the same for a resume)
        run_lock = RunLock(self.keys_dir, self.node) if self.keys_dir else None
        loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.node.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        if self.keys_dir:
            public, secret = curve.load_pair(self.keys_dir, "agent")
            server_public = curve.read_private_key(self.keys_dir, "partition.key")
            curve.make_client(self.sock, public, secret, server_public)
        self.sock.connect(self.address)
        self.spawner = ProcessSpawner(loop, orphan_guard=True, run_lock=run_lock)
        for sig in self.stop_signals:
            loop.add_signal_handler(sig, self._done.set)
        if run_lock is not None:
            await self._take_run_lock(run_lock)
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except OSError:
            cpus = list(range(os.cpu_count() or 1))
        await self._send({"type": "ready", "node": self.node, "cpus": cpus, "pid": os.getpid()})
        receiver = loop.create_task(self._receive())
        beater = loop.create_task(self._beat())
        await self._done.wait()
        receiver.cancel()
        beater.cancel()
        await self.spawner.shutdown(timeout=5.0)
        last = self._flush()
        if last is not None:     # the last events are with ZeroMQ; the linger below lets them leave
            try:
                await asyncio.wait_for(last, 1.0)
            except (asyncio.TimeoutError, zmq.ZMQError):
                pass
        self.sock.close(linger=1000)
        self.ctx.term()
        return 0

    async def _send(self, msg: dict[str, Any]) -> None:
        await self.sock.send(protocol.encode(msg))

    async def _receive(self) -> None:
        while True:
            for frame in await receive_frames(self.sock):
                self._handle(frame)

    def _handle(self, frame: bytes) -> None:
        self._last_heard = time.monotonic()
        try:
            msg, _ = protocol.decode(frame)
        except protocol.ProtocolError as exc:
            print(f"agent {self.node}: dropped a malformed message: {exc}", file=sys.stderr)
            return
        kind = msg.get("type")
        if kind == "run":
            self._run(msg)
        elif kind == "cancel":
            self.spawner.cancel(msg.get("task"), msg.get("reason") or "canceled")
        elif kind == "exit":
            assert self._done is not None
            self._done.set()
        elif kind == "env":
            self._take_service_env(msg.get("env"))

    def _take_service_env(self, env: Any) -> None:
        """The service's environment (sent to an agent started by ssh): the base of the tasks' environment from
        now on, with the node's own variables kept (agent/service_env.py; reference "Execution environments")."""
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            print(f"agent {self.node}: dropped a malformed service environment", file=sys.stderr)
            return
        self._base_env = task_base(env, self._own_env)

    def _run(self, msg: dict[str, Any]) -> None:
        task = msg["task"]
        env = self._base_env.copy()
        env.update(msg.get("env") or {})
        spec = ProcessSpec(argv=list(msg["argv"]), env=env, cwd=msg["cwd"], stdin=msg.get("stdin"),
                           stdout=msg.get("stdout"), stderr=msg.get("stderr"), cpus=msg.get("cpus"),
                           walltime=msg.get("walltime"))
        started = time.time()
        pid = self.spawner.spawn(task, spec, self._exited)
        if pid is not None:
            self._queue(["started", task, pid, started])

    def _exited(self, task: Any, ex: ProcessExit) -> None:
        self._queue(["exited", task, ex.exit_code, ex.reason, ex.killed, ex.started_at, ex.finished_at])

    def _queue(self, event: list[Any]) -> None:
        self._events.append(event)
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> "asyncio.Future[Any] | None":
        self._flush_pending = False
        if self._events:
            events, self._events = self._events, []
            return self.sock.send(protocol.encode({"type": "events", "node": self.node, "events": events}))
        return None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            await self._send({"type": "hb", "node": self.node, "running": self.spawner.running})
            if time.monotonic() - self._last_heard > self.heartbeat * MISSED_HEARTBEATS:
                print(f"agent {self.node}: partition silent for "
                      f"{time.monotonic() - self._last_heard:.0f}s, stopping its tasks", file=sys.stderr)
                assert self._done is not None
                self._done.set()
                return


ADDRESS_WAIT = 120.0      # seconds an agent waits for its --address-file


def wait_for_address(path: str, timeout: float) -> str:
    """The partition's address, once its manager has written it to `path` (polled; a shared file system).

    An agent started together with its manager (not after it) reads where to
    connect from this file; the manager writes it atomically once bound.
    """
    deadline = time.monotonic() + timeout
    directory, name = os.path.split(os.path.abspath(path))
    while True:
        try:
            # only from a directory of this user's that nobody else can write into
            text = read_private(directory, name).decode("utf-8", "replace").strip()
            if text.startswith("tcp://"):
                return text
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no partition address in {path} after {timeout:g}s")
        time.sleep(0.005)


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (`nan` made the agent wait for ever, `-1` stop at once)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def main(argv: list[str] | None = None, stop_signals: tuple[int, ...] = STOP_SIGNALS) -> int:
    """The agent's command line; `stop_signals` end it (a forked agent gives its own, see early_agents)."""
    ap = argparse.ArgumentParser(prog="python -m qcg.pilotjob.agent", description=__doc__.split("\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", help="partition endpoint, tcp://host:port")
    where.add_argument("--address-file", help="file the partition writes its endpoint to (waited for)")
    ap.add_argument("--address-wait", type=_seconds, default=ADDRESS_WAIT,
                    help="seconds to wait for --address-file (default %(default)s)")
    ap.add_argument("--node", default=None, help="node name (default: $SLURMD_NODENAME or the host name)")
    ap.add_argument("--keys", default=None, help="directory with agent.key(_secret) and partition.key")
    ap.add_argument("--heartbeat", type=_seconds, default=HEARTBEAT)
    ap.add_argument("--proc-stats-dir", default=None,
                    help="record the processes of the tasks and write a ptrace_*.log file here at the end")
    args = ap.parse_args(argv)
    restore_allocation_env()        # the tasks' base environment: the allocation's, not srun's step's
    node = args.node or os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    # an agent started by ssh has no Slurm step environment: tasks still learn their node
    os.environ.setdefault("SLURMD_NODENAME", node)
    try:
        address = args.address or wait_for_address(args.address_file, args.address_wait)
        return asyncio.run(Agent(node, address, args.keys, args.heartbeat, stop_signals,
                                 proc_stats_dir=args.proc_stats_dir).run())
    except (OSError, ValueError, zmq.ZMQError) as exc:
        print(f"agent {node}: cannot run: {exc}", file=sys.stderr)
        return 1
