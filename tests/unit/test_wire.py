"""Wire form of tasks and task events (partition/wire.py) and the governor's handling of partition messages
(governor/partition_server.py), without sockets (issue 6; DESIGN "Messages between the layers":
"unknown or malformed messages are ... logged and dropped (events) -- never a crash").

Every round trip goes through msgpack (`protocol.encode`/`decode`), as on the wire.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from qcg.pilotjob.api import protocol
from qcg.pilotjob.api.jobdesc import Execution
from qcg.pilotjob.governor import partition_server
from qcg.pilotjob.governor.partition_server import PartitionServer
from qcg.pilotjob.governor.partition_set import PartitionSet
from qcg.pilotjob.partition import wire
from qcg.pilotjob.partition.local_nodes import local_resources
from qcg.pilotjob.partition.slurm_resources import resources_to_dict
from qcg.pilotjob.partition.task import Allocation, ResourceRequest, TaskFinished, TaskSpec, TaskStarted


def over_the_wire(message: dict[str, Any]) -> dict[str, Any]:
    decoded, as_json = protocol.decode(protocol.encode(message))
    assert not as_json
    return decoded


FULL = Execution(exec="/bin/prog", args=("a b", "$x", ""), env={"K": "v w"}, stdin="in", stdout="out.${it}",
                 stderr="err", wd="sub/dir", modules=("gcc/12", "odd name"), venv="/v env", model="openmpi",
                 model_opts={"mpirun_args": ["--oversubscribe"]})
SHARED = Execution(exec="/bin/true")


# --------------------------------------------------------------------------- tasks
def test_tasks_round_trip_and_shared_execution_sent_once():
    """A dispatch batch sends each distinct Execution once; tasks come back equal, the shared execution and
    equal resource requests as one object each."""
    sweep = [TaskSpec(f"sweep:{i}", "sweep", i, SHARED, ResourceRequest(1, 1), walltime=None, seq=1)
             for i in range(1000)]
    odd = TaskSpec("odd", "odd", None, FULL, ResourceRequest(2, None, 1, 2), walltime=90.5, seq=2, templated=True,
                   attributes={"k": [1, 2]})
    tasks = sweep[:500] + [odd] + sweep[500:]
    msg = wire.encode_tasks(tasks)
    assert len(msg["execs"]) == 2
    assert len(msg["tasks"]) == 1001
    back = wire.decode_tasks(over_the_wire({"type": "dispatch", **msg}))
    assert back == tasks
    assert len({id(t.execution) for t in back}) == 2
    assert len({id(t.resources) for t in back}) == 2
    assert back[500].execution == FULL and back[500].execution.args == ("a b", "$x", "")
    assert back[500].execution.modules == ("gcc/12", "odd name")
    assert back[500].attributes == {"k": [1, 2]} and back[0].attributes == {}


def test_empty_batch():
    assert wire.decode_tasks(over_the_wire(wire.encode_tasks([]))) == []


@pytest.mark.parametrize("msg", [
    {},
    {"execs": []},
    {"execs": [], "tasks": [["t", "t", None, 0, [1, 1, None, None], None, 0, False, None]]},      # no exec 0
    {"execs": [["/bin/true"]], "tasks": []},                                                      # short exec
    {"execs": [wire._execution_values(SHARED)], "tasks": [["t", "t", None, 0]]},                 # short row
    {"execs": [wire._execution_values(SHARED)], "tasks": [["t", "t", None, 0, [1, 1, None, None, 9], None, 0,
                                                           False, None]]},                       # 5 sizes
    {"execs": [wire._execution_values(SHARED)], "tasks": "garbage"},
    {"execs": None, "tasks": []},
])
def test_malformed_dispatch_raises_wire_error(msg):
    with pytest.raises(wire.WireError, match="malformed dispatch"):
        wire.decode_tasks(msg)


# -------------------------------------------------------------------- allocation
def test_allocation_round_trip():
    alloc = Allocation((("n0", (0, 1)), ("n1", (3,))))
    back = wire.decode_allocation(over_the_wire({"a": wire.encode_allocation(alloc)})["a"])
    assert back == alloc and back.describe() == "n0[0:1],n1[3]" and back.ncores == 3
    assert wire.encode_allocation(None) is None and wire.decode_allocation(None) is None


def test_allocation_travels_as_its_report_text():
    """One short string per event, the text the report shows; names the text cannot carry go as pairs."""
    alloc = Allocation((("n0", (0, 1)), ("n1", (3,))))
    assert wire.encode_allocation(alloc) == "n0[0:1],n1[3]"
    one = wire.decode_allocation(over_the_wire({"a": "n0[0:1],n1[3]"})["a"])
    assert one == alloc and one is wire.decode_allocation("n0[0:1],n1[3]")
    odd = Allocation((("rack[1]", (0,)), ("a,b", (1, 2))))
    sent = wire.encode_allocation(odd)
    assert sent == [["rack[1]", [0]], ["a,b", [1, 2]]]
    assert wire.decode_allocation(over_the_wire({"a": sent})["a"]) == odd


@pytest.mark.parametrize("text", ["n0", "n0[]", "n0[a]", "[1]", "n0[1],", "n0[1],n1", "n0[-1]", "n0[1]]",
                                  "n0[1:2", ""])
def test_malformed_allocation_text_is_a_wire_error(text):
    with pytest.raises(wire.WireError, match="malformed 'started'"):
        wire.decode_started(["t", text, "/wd", 1.0, 1.0, 7])


def test_finished_after_its_start_leaves_out_what_the_start_said():
    """A manager's finished event does not repeat the allocation, wd and start time of its started event;
    the governor takes the run time from the start it recorded."""
    from qcg.pilotjob.api.jobparse import parse_jobs
    from qcg.pilotjob.governor.governor import Governor

    ev = TaskFinished("a", "SUCCEED", 0, None, Allocation((("n0", (0,)),)), "/wd", 10.0, 12.5)
    raw = over_the_wire({"e": wire.encode_finished(ev, start_sent=True)})["e"]
    assert raw == ["a", "SUCCEED", 0, None, None, None, None, 12.5, False]

    class Port:
        queue_limit = 10

        def __init__(self):
            self.sent = []

        def submit(self, tasks):
            self.sent += tasks

        def cancel(self, ids):
            pass

        def never_fits(self, request):
            return None

        def totals(self):
            return (1, 1, 1)

    async def main():
        port = Port()
        gov = Governor(asyncio.get_running_loop(), port, [])
        gov.submit(parse_jobs([{"name": "a", "execution": {"exec": "/bin/true"}}]))
        await asyncio.sleep(0)
        assert [t.task_id for t in port.sent] == ["a"]
        gov.task_started(wire.decode_started(over_the_wire({"e": wire.encode_started(
            TaskStarted("a", ev.allocation, "/wd", 9.5, 10.0, 42))})["e"]))
        gov.task_finished(wire.decode_finished(raw))
        rec = gov.registry.get("a").record
        assert rec.state.value == "SUCCEED" and rec.rtime == 2.5
        assert rec.allocation == "n0[0]" and rec.wd == "/wd" and rec.pid == 42

    asyncio.run(asyncio.wait_for(main(), 10))


def test_equal_allocations_decode_to_one_object():
    """Events of the same cores share one decoded allocation (the governor's text cache hits by identity)."""
    one = wire.decode_allocation(over_the_wire({"a": [["n0", [2]]]})["a"])
    two = wire.decode_allocation(over_the_wire({"a": [["n0", [2]]]})["a"])
    other = wire.decode_allocation(over_the_wire({"a": [["n0", [3]]]})["a"])
    assert one is two and one == Allocation((("n0", (2,)),)) and other != one


@pytest.mark.parametrize("alloc", [[["n0", [[1]]]], [["n0", [1.5]]], [["never-seen", [2.0]]], [[7, [1]]],
                                   [["n0", ["1"]]]])
def test_malformed_allocation_is_a_wire_error(alloc):
    """Unhashable or non-integer core ids, a non-string node: the event is refused (the manager is told why).
    (A float equal to cores seen before, 2.0 after 2, decodes to that earlier, integer allocation.)"""
    with pytest.raises(wire.WireError, match="malformed 'started'"):
        wire.decode_started(["t", alloc, "/wd", 1.0, 1.0, 7])


# ------------------------------------------------------------------------ events
def test_started_round_trip():
    ev = TaskStarted("j:3", Allocation((("a", (1,)),)), "/wd", 10.25, 10.5, pid=4242)
    back = wire.decode_started(over_the_wire({"e": wire.encode_started(ev)})["e"])
    assert back == ev
    assert back.partition is None           # set by the governor's side, never taken from the wire


@pytest.mark.parametrize("ev", [
    TaskFinished("a", "SUCCEED", 0, None, Allocation((("a", (0,)),)), "/wd", 1.0, 2.0),
    TaskFinished("b:1", "FAILED", 7, "exit code 7", Allocation((("a", (0, 1)), ("b", (0,)))), "/wd", 1.0, 2.5),
    TaskFinished("c", "FAILED", -1, "node 'b' lost", None, None, None, None, requeue=True),
    TaskFinished("d", "CANCELED", None, "canceled by user"),
])
def test_finished_round_trip(ev):
    assert wire.decode_finished(over_the_wire({"e": wire.encode_finished(ev)})["e"]) == ev


@pytest.mark.parametrize("raw", [
    None, [], ["t"], ["t", [["a", [0]]], "/wd", 1.0, 2.0],            # too short
    ["t", 5, "/wd", 1.0, 2.0, 1],                                     # allocation not a list
    ["t", [["a"]], "/wd", 1.0, 2.0, 1],                               # node without cores
])
def test_malformed_started_raises_wire_error(raw):
    with pytest.raises(wire.WireError, match="malformed 'started' event"):
        wire.decode_started(raw)


@pytest.mark.parametrize("raw", [
    None, [], ["t", "SUCCEED"],
    ["t", "RUNNING", 0, None, None, None, None, None, False],         # not a final state
    ["t", "SUCCEED", 0, None, 7, None, None, None, False],             # allocation not a list
    ["t", "SUCCEED", 0, None, None, None, None, None, False, "extra"],
])
def test_malformed_finished_raises_wire_error(raw):
    with pytest.raises(wire.WireError, match="malformed 'finished' event"):
        wire.decode_finished(raw)


# ------------------------------------------------ the governor's partition server
class _Sink:
    def __init__(self) -> None:
        self.started: list[TaskStarted] = []
        self.finished: list[TaskFinished] = []

    def task_started(self, ev):
        self.started.append(ev)

    def task_finished(self, ev):
        self.finished.append(ev)

    def task_redispatched(self, task_id, reason):
        pass

    def capacity_changed(self):
        pass


def _register(member_id: str = "p0", **over: Any) -> dict[str, Any]:
    res = local_resources("n0:2")
    msg = {"type": "register", "v": protocol.PROTOCOL_VERSION, "id": member_id, "tags": ["t"],
           "resources": resources_to_dict(res, rtype="LOCAL"), "totals": [2, 1, 2], "credit": 3,
           "info": res.info()}
    msg.update(over)
    return msg


def test_partition_server_register_events_and_bad_messages():
    """Register (refused with a reason for a wrong version or a missing id), events of a registered manager
    reach the governor tagged with the partition, malformed or unknown messages and messages of unregistered
    peers are dropped without an exception, a second register on the same connection is answered again."""

    async def main():
        loop = asyncio.get_running_loop()
        pset = PartitionSet(loop)
        sink = _Sink()
        pset.events = sink
        sent: list[tuple[bytes, dict]] = []
        server = PartitionServer(loop, pset, lambda ident, frame: sent.append((ident, protocol.decode(frame)[0]))
                                 or True)

        def replies(ident: bytes) -> list[dict]:
            return [m for i, m in sent if i == ident]

        server.handle(b"old", _register(v=0))
        assert replies(b"old")[-1]["type"] == "refused" and "version" in replies(b"old")[-1]["reason"]
        server.handle(b"anon", _register(id=""))
        assert replies(b"anon")[-1]["type"] == "refused"
        server.handle(b"badres", _register("x", resources={"nodes": "none"}))
        assert replies(b"badres")[-1]["type"] == "refused" and "'x'" in replies(b"badres")[-1]["reason"]
        assert pset.members == {}

        server.handle(b"id0", over_the_wire(_register("p0")))
        # with the governor's host and pid: a manager on this host watches the process (parent_link)
        assert replies(b"id0")[-1] == {"v": protocol.PROTOCOL_VERSION, "type": "registered", "id": "p0",
                                       "host": socket.gethostname(), "pid": os.getpid()}
        assert list(pset.members) == ["p0"] and pset.members["p0"].tags == ["t"]
        assert server.expect("p0").is_set()
        server.handle(b"id0", _register("p0"))            # retried register on the same connection
        assert replies(b"id0")[-1]["type"] == "registered" and list(pset.members) == ["p0"]

        pset.submit([TaskSpec("t1", "t1", None, SHARED, ResourceRequest(1, 1))])
        # dispatches of one short moment travel together (partition_server.DISPATCH_BATCH_DELAY)
        await asyncio.sleep(partition_server.DISPATCH_BATCH_DELAY * 5)
        dispatch = [m for m in replies(b"id0") if m["type"] == "dispatch"]
        assert len(dispatch) == 1 and [t.task_id for t in wire.decode_tasks(dispatch[0])] == ["t1"]

        # garbage: none of it raises, none of it reaches the governor
        for ident, msg in [(b"id0", {"type": "events", "finished": [["t1", "BOGUS"]]}),
                           (b"id0", {"type": "events", "started": "x"}),
                           (b"id0", {"type": "update", "credit": "many"}),
                           (b"id0", {"type": "what"}),
                           (b"id0", {}),
                           (b"stranger", {"type": "events", "finished": [wire.encode_finished(
                               TaskFinished("t1", "SUCCEED", 0))]})]:
            server.handle(ident, msg)
        assert sink.started == [] and sink.finished == []

        alloc = Allocation((("n0", (0,)),))
        server.handle(b"id0", over_the_wire({"type": "events",
                                             "started": [wire.encode_started(TaskStarted("t1", alloc, "/w", 1, 2, 9))],
                                             "finished": [wire.encode_finished(TaskFinished("t1", "SUCCEED", 0))]}))
        assert [e.partition for e in sink.started] == ["p0"]
        assert [(e.task_id, e.state) for e in sink.finished] == [("t1", "SUCCEED")]

        # leave: drained (no tasks), removed, told to exit
        server.handle(b"id0", {"type": "leave"})
        for _ in range(5):
            await asyncio.sleep(0)
        assert replies(b"id0")[-1]["type"] == "exit"
        assert pset.members == {} and pset.lost == [] and pset.left == ["p0"]    # in order: not lost

    asyncio.run(asyncio.wait_for(main(), 10))


def test_the_client_subscribes_to_every_final_state_the_governor_has():
    """The client API knows the final states by name (api/ does not import the governor): a final state
    added on one side only would leave waits without their event, or `wait4` without its end."""
    from qcg.pilotjob.governor.states import FINAL_STATES, JobState

    assert set(protocol.FINAL_STATE_NAMES) == {s.value for s in FINAL_STATES}
    assert set(protocol.FINAL_EVENT_TOPICS) == {
        protocol.event_topic(kind, s.value) for kind in (protocol.TOPIC_JOB, protocol.TOPIC_TASK)
        for s in FINAL_STATES} | {protocol.TOPIC_NO_JOBS}
    topics = [protocol.event_topic(kind, s.value) for kind in (protocol.TOPIC_JOB, protocol.TOPIC_TASK)
              for s in JobState]
    # ZMQ subscriptions match by prefix: no state's topic may start another's
    assert not [(a, b) for a in topics for b in topics if a != b and b.startswith(a)]
    assert all(protocol.is_state_event(t) for t in topics) and not protocol.is_state_event(protocol.TOPIC_NO_JOBS)


def test_messages_after_the_governor_shut_down_are_dropped_quietly():
    """After `shutdown` forgot the managers, a heartbeat already on its way is not a warning in
    service.log (every normal governor run ended with one); before it, a stranger's message is."""
    from structlog.testing import capture_logs

    async def main():
        loop = asyncio.get_running_loop()
        server = PartitionServer(loop, PartitionSet(loop), lambda ident, frame: True)
        server.handle(b"id0", _register("p0"))
        with capture_logs() as before:
            server.handle(b"stranger", {"type": "hb"})
        await server.shutdown()
        with capture_logs() as after:
            server.handle(b"id0", {"type": "hb"})
            server.handle(b"id0", {"type": "events", "finished": []})
        return before, after

    before, after = asyncio.run(asyncio.wait_for(main(), 10))
    assert [e["log_level"] for e in before] == ["warning"]
    assert [e["log_level"] for e in after] == ["debug", "debug"]
