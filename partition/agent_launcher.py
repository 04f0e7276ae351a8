"""Launching through node agents: one agent per node, started by srun or ssh, one connection each.

The partition binds a CURVE ROUTER socket; each agent connects with the
run's agent key and registers with its node name and its real CPU set.
Starting an agent is retried with exponential backoff (tenacity). The run
starts once `ready_threshold` of the agents are ready (or fails after
`init_timeout`); nodes without an agent stay out of use and join when their
agent registers late. A node whose agent process ends or falls silent is
lost: it goes out of use and its running tasks end with reason "node lost"
(the partition re-queues or fails them).

An agent started by ssh gets this process's environment once, in an `env`
message sent in answer to its `ready` and before any `run` (one connection
keeps the order): ssh gives the agent a fresh login, while the tasks must
see the service's environment, as srun-started agents' tasks do (reference
"Execution environments"; what the agent keeps of its own: agent/service_env.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import structlog
import zmq
import zmq.asyncio

from qcg.pilotjob.agent.service_env import service_environment
from qcg.pilotjob.agent.spawner import ProcessExit, ProcessSpawner, ProcessSpec
from qcg.pilotjob.api import curve, protocol
from qcg.pilotjob.api.socket_batches import receive_multipart
from qcg.pilotjob.partition.agent_command import AGENT_HEARTBEAT, DEFAULT_SSH, agent_command
from qcg.pilotjob.partition.early_agents import EarlyAgents, reachable_address, stop_signal
from qcg.pilotjob.partition.retries import attempt_state, exit_text, start_with_retries, stderr_tail
from qcg.pilotjob.partition.launcher import ExitCallback, LaunchRequest, LaunchResult, StartedCallback

log = structlog.get_logger("agents")

HEARTBEAT = 1.0            # partition -> agent heartbeat period
LOST_AFTER = 3             # agent heartbeats missed before the node is lost


class AgentStartError(Exception):
    """Too few agents became ready; the message says how many and why."""


@dataclass
class _AgentState:
    node: str
    ready: bool = False
    lost: bool = False
    cpus: list[int] = field(default_factory=list)
    last_seen: float = 0.0
    attempts: int = 0
    proc_key: str | None = None
    tasks: set[str] = field(default_factory=set)
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    last_exit: ProcessExit | None = None    # how its last agent process ended
    failed: str | None = None               # why its start was given up (after the retries)
    earlier: list[str] = field(default_factory=list)   # why each earlier start attempt failed
    heard: int = 0                          # messages received from its identity (ready or not)


class AgentLauncher:
    def __init__(self, loop: asyncio.AbstractEventLoop, nodes: list[str], on_started: StartedCallback,
                 on_exit: ExitCallback, *, keys_dir: str, start_method: str = "slurm",
                 init_timeout: float = 600.0, ready_threshold: float = 1.0,
                 on_node_state: Callable[[str, bool, bool], None] | None = None,
                 ssh_command: list[str] | None = None, bind_host: str | None = None,
                 agent_env: dict[str, str] | None = None, proc_stats_dir: str | None = None) -> None:
        self.loop = loop
        self.nodes = list(nodes)
        self._on_started = on_started
        self._on_exit = on_exit
        self.keys_dir = keys_dir
        self.start_method = start_method
        self.init_timeout = init_timeout
        self.ready_threshold = ready_threshold
        self._on_node_state = on_node_state or (lambda node, up, lost=False: None)    # (node, up, lost)
        self.ssh_command = ssh_command or DEFAULT_SSH
        self.bind_host = bind_host
        self.agent_env = agent_env or {}
        self.proc_stats_dir = proc_stats_dir       # --enable-proc-stats: each agent writes its ptrace file there
        self.agents = {n: _AgentState(n) for n in self.nodes}
        self._task_node: dict[str, str] = {}
        self._procs = ProcessSpawner(loop, kill_grace=2.0)
        self._closing = False
        self._tasks: list[asyncio.Task[Any]] = []
        self.ready_at: float | None = None
        self._early: dict[str, tuple[int, float]] = {}
        self._forked: str | None = None        # the node whose agent was forked (it ignores SIGTERM)
        self._adopted_from: zmq.Socket | None = None    # the early agents' socket `sock` is a view of
        self._env_frame: bytes | None = None   # the `env` message for ssh-started agents, encoded once

    # ------------------------------------------------------------------ start
    async def start(self, early: EarlyAgents | None = None) -> None:
        """Start the agents (or adopt those `early` started) and wait for the ready threshold."""
        t0 = time.monotonic()
        if early is not None:
            self._adopt_socket(early)
        else:
            self.ctx = zmq.asyncio.Context()
            public, secret = curve.create_pair(self.keys_dir, "partition")
            agent_public, _ = curve.create_pair(self.keys_dir, "agent")
            self._auth = curve.start_authenticator(self.ctx, {agent_public})
            self.sock = self.ctx.socket(zmq.ROUTER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
            curve.make_server(self.sock, secret)
            host = self.bind_host or ("127.0.0.1" if self.start_method == "local" else "0.0.0.0")
            port = self.sock.bind_to_random_port(f"tcp://{host}")
            advertised = host if host not in ("0.0.0.0", "*") else reachable_address()
            self.address = f"tcp://{advertised}:{port}"
        self._tasks.append(self.loop.create_task(self._receive()))
        self._tasks.append(self.loop.create_task(self._heartbeats()))
        for node in self.nodes:
            self._on_node_state(node, False, False)
            self._tasks.append(self.loop.create_task(self._start_agent(node)))
        need = max(1, int(round(self.ready_threshold * len(self.nodes) + 1e-9))) if self.nodes else 0
        deadline = t0 + self.init_timeout
        while sum(a.ready for a in self.agents.values()) < need:
            starting = [a for a in self.agents.values() if not a.ready and not a.lost]
            if not starting or time.monotonic() > deadline:
                ready = sum(a.ready for a in self.agents.values())
                failed = [f"{a.node} ({self._not_ready_reason(a, time.monotonic() - t0)})"
                          for a in self.agents.values() if not a.ready]
                await self.shutdown()
                raise AgentStartError(f"only {ready} of {len(self.nodes)} node agents became ready "
                                      f"(threshold {self.ready_threshold:g} needs {need}); not ready: "
                                      f"{', '.join(failed)}")
            await asyncio.sleep(0.02)
        self.ready_at = time.monotonic() - t0
        log.info("node agents ready", ready=sum(a.ready for a in self.agents.values()), total=len(self.nodes),
                 seconds=round(self.ready_at, 3))

    def _adopt_socket(self, early: EarlyAgents) -> None:
        self.ctx = zmq.asyncio.Context.shadow(early.context.underlying)
        self._early_ctx = early.context          # keeps the underlying context alive until shutdown
        self.sock = zmq.asyncio.Socket.from_socket(early.sock)
        self._adopted_from = early.sock
        self._auth = early.auth
        self.address = early.address
        self.keys_dir = early.keys_dir
        self._early = dict(early.processes)
        self._forked = early.forked
        for node, why in early.errors.items():
            log.warning("early start of a node agent failed; starting it again", node=node, error=why)

    def _agent_argv(self, node: str) -> list[str]:
        return agent_command(self.start_method, node, self.address, self.keys_dir, self.ssh_command,
                             proc_stats_dir=self.proc_stats_dir)

    def _stderr_path(self, node: str) -> str:
        """Where an agent's stderr goes (early agents write theirs to the same place)."""
        return os.path.normpath(os.path.join(self.keys_dir, os.pardir, f"agent-{node}.err"))

    def _not_ready_reason(self, state: _AgentState, elapsed: float) -> str:
        """Why `state`'s agent is not ready, for the start error: a failed agent is undiagnosable without it."""
        if state.failed is not None:
            return state.failed
        if state.lost:
            return "lost"
        attempt = attempt_state(state.attempts, not state.exited.is_set(), state.last_exit)
        heard = f"{state.heard} messages from it" if state.heard else "no message from it"
        earlier = "".join(f"; attempt {i}: {why}" for i, why in enumerate(state.earlier, 1))
        return (f"not registered after {elapsed:.1f}s, {attempt}, {heard}"
                f"{stderr_tail(self._stderr_path(state.node))}{earlier}")

    async def _start_agent(self, node: str) -> None:
        state = self.agents[node]
        error = await start_with_retries(lambda: self._run_agent_once(state), lambda: self._closing)
        if error is not None:
            state.failed = error
            state.lost = True
            log.error("node agent did not start", node=node, attempts=state.attempts, error=error)
            if not self._closing:
                # down for good, as a lost node: what needs it fails now instead of waiting for ever
                self._on_node_state(node, False, True)

    async def _run_agent_once(self, state: _AgentState) -> None:
        state.attempts += 1
        state.exited = asyncio.Event()
        key = f"agent:{state.node}:{state.attempts}"
        state.proc_key = key
        state.last_exit = None
        env = dict(os.environ)
        env.update(self.agent_env)
        err = self._stderr_path(state.node)
        spec = ProcessSpec(argv=self._agent_argv(state.node), env=env, cwd=os.getcwd(), stderr=err, own_streams=True)
        started = self._early.pop(state.node, None)
        if started is not None:
            pid = self._procs.adopt(key, started[0], self._agent_process_ended, started[1],
                                    stop_signal(state.node, self._forked))
        else:
            pid = self._procs.spawn(key, spec, self._agent_process_ended)
        if pid is None:
            await state.exited.wait()       # the spawner reports why through the exit callback
            reason = state.last_exit.reason if state.last_exit is not None else None
            why = f"cannot start the agent of node {state.node}" + (f": {reason}" if reason else "")
            state.earlier.append(why)
            raise OSError(why)
        await state.exited.wait()
        if not state.ready and not state.lost and not self._closing:
            why = (f"the agent of node {state.node} ended before registering{exit_text(state.last_exit)}"
                   f"{stderr_tail(err)}")
            state.earlier.append(why)       # the next attempt truncates the stderr file
            raise OSError(why)

    def _agent_process_ended(self, key: Any, ex: ProcessExit) -> None:
        node = str(key).split(":")[1]
        state = self.agents[node]
        if state.proc_key != key:
            return
        state.last_exit = ex
        state.exited.set()
        if state.ready and not self._closing:
            self._lose(state, f"agent process ended{exit_text(ex)}")

    # --------------------------------------------------------------- messages
    async def _receive(self) -> None:
        while True:
            for ident, frame in await receive_multipart(self.sock):
                self._handle(ident, frame)

    def _handle(self, ident: bytes, frame: bytes) -> None:
        try:
            msg, _ = protocol.decode(frame)
        except protocol.ProtocolError as exc:
            log.warning("malformed agent message dropped", error=str(exc))
            return
        node = ident.decode(errors="replace")
        state = self.agents.get(node)
        if state is None:
            log.warning("message from unknown node dropped", node=node)
            return
        state.last_seen = time.monotonic()
        state.heard += 1
        kind = msg.get("type")
        try:
            if kind == "events":
                self._events(state, msg.get("events") or [])
            elif kind == "ready":
                self._ready(state, msg)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            # one bad message must not end the receiving loop (every agent's messages would go unread)
            log.warning("malformed agent message dropped", node=node, type=kind, error=str(exc))

    def _ready(self, state: _AgentState, msg: dict[str, Any]) -> None:
        state.cpus = list(msg.get("cpus") or [])
        if state.lost:
            log.warning("agent of a lost node registered again; node stays out", node=state.node)
            return
        if not state.ready:
            if self.start_method == "ssh" and not self._send(state.node, self._service_env_frame()):
                return          # not reachable: it stays not ready (its start is retried when it ends)
            state.ready = True
            log.info("node agent ready", node=state.node, cpus=state.cpus, pid=msg.get("pid"))
            self._on_node_state(state.node, True, False)

    def _service_env_frame(self) -> bytes:
        """`env` for an ssh-started agent: what an srun-started one inherits (the agent's own environment as
        `_run_agent_once` gives it), built once for all agents."""
        if self._env_frame is None:
            env = dict(os.environ)
            env.update(self.agent_env)
            self._env_frame = protocol.encode({"type": "env", "env": service_environment(env)})
        return self._env_frame

    def _events(self, state: _AgentState, events: list[list[Any]]) -> None:
        if state.lost:
            # its tasks were ended (or sent elsewhere) when it was lost: a late word from it changes nothing
            log.warning("events of a lost node dropped", node=state.node, count=len(events))
            return
        for ev in events:
            task = ev[1]
            if task not in state.tasks:
                # only the agent a task was sent to speaks of it (a holder of the agent key posing as
                # another node cannot end, or start, somebody else's task)
                log.warning("event for a task not on this node dropped", node=state.node, task=str(task)[:100],
                            event=str(ev[0])[:20])
                continue
            if ev[0] == "started":
                _, task, pid, started = ev
                self._on_started(task, pid, started)
            elif ev[0] == "exited":
                _, task, code, reason, killed, started, finished = ev
                self._task_node.pop(task, None)
                state.tasks.discard(task)
                self._on_exit(LaunchResult(task, code, reason, started, finished, None, killed))

    async def _heartbeats(self) -> None:
        hb = protocol.encode({"type": "hb"})
        while True:
            await asyncio.sleep(HEARTBEAT)
            now = time.monotonic()
            for state in self.agents.values():
                if not state.ready or state.lost:
                    continue
                if now - state.last_seen > AGENT_HEARTBEAT * LOST_AFTER:
                    self._lose(state, f"no heartbeat for {now - state.last_seen:.1f}s")
                    continue
                self._send(state.node, hb)

    def _send(self, node: str, frame: bytes) -> bool:
        # through the asyncio socket (a non-blocking send completes at once): a send on a second,
        # plain view of the socket could consume the FD edge the pending receive waits for
        exc = sent_now(self.sock.send_multipart([node.encode(), frame], flags=zmq.NOBLOCK))
        if exc is not None:
            log.warning("cannot reach node agent", node=node, error=str(exc))
            return False
        return True

    def _lose(self, state: _AgentState, why: str) -> None:
        if state.lost:
            return
        state.lost = True
        state.ready = False
        log.error("node lost", node=state.node, reason=why)
        self._on_node_state(state.node, False, True)
        now = time.time()
        for task in list(state.tasks):
            self._task_node.pop(task, None)
            self._on_exit(LaunchResult(task, None, f"node lost: {state.node} ({why})", now, now, None,
                                       "node lost"))
        state.tasks.clear()
        if state.proc_key is not None:
            self._procs.cancel(state.proc_key, "node lost")

    # --------------------------------------------------------------- Launcher
    def launch(self, req: LaunchRequest) -> None:
        state = self.agents.get(req.node)
        if state is None or not state.ready:
            now = time.time()
            self.loop.call_soon(self._on_exit, LaunchResult(
                req.task_id, None, f"node lost: no agent on node {req.node}", now, now, None, "node lost"))
            return
        msg = {"type": "run", "task": req.task_id, "argv": req.argv, "env": req.env, "cwd": req.cwd,
               "stdin": req.stdin, "stdout": req.stdout, "stderr": req.stderr, "cpus": req.cpus,
               "walltime": req.walltime}
        self._task_node[req.task_id] = req.node
        state.tasks.add(req.task_id)
        if not self._send(req.node, protocol.encode(msg)):
            self._lose(state, "send failed")

    def cancel(self, task_id: str) -> None:
        node = self._task_node.get(task_id)
        if node is not None:
            self._send(node, protocol.encode({"type": "cancel", "task": task_id}))

    @property
    def ready_nodes(self) -> list[str]:
        return [a.node for a in self.agents.values() if a.ready]

    async def shutdown(self, timeout: float = 5.0) -> None:
        self._closing = True
        bye = protocol.encode({"type": "exit"})
        for state in self.agents.values():
            if state.ready:
                self._send(state.node, bye)
            elif state.proc_key is not None:
                # not registered: no one could tell it to exit, so waiting for it would only use up the timeout
                self._procs.cancel(state.proc_key, "the partition is shutting down")
        await self._procs.wait_then_shutdown(timeout)
        for t in self._tasks:
            t.cancel()
        try:
            self._auth.stop()  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - best effort at exit
            pass
        self.sock.close(linger=0)
        owner = self._adopted_from
        if owner is not None and not owner.closed:
            # `owner.closed` asks libzmq while the handle is marked dead, and so marks the owner closed.
            # The asyncio socket is only a view of it: left believing itself open, the owner's finaliser
            # (whenever the cyclic GC reaches it) would close whatever socket then reuses the handle --
            # measured: a later ROUTER in the same process, closed in 28 of 50 tries.
            log.warning("adopted agent socket still open after closing its asyncio view")
        # an adopted socket's context is terminated through its owner, not the asyncio shadow
        (getattr(self, "_early_ctx", None) or self.ctx).term()


def sent_now(fut: "asyncio.Future[Any]") -> BaseException | None:
    """The error of a non-blocking send on a zmq.asyncio socket (its future is already done), or None."""
    if not fut.done():
        return None
    return fut.exception()
