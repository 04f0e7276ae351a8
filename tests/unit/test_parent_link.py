"""The manager's end of the governor link (governor/parent_link.py) against a stand-in parent on a real
ZMQ socket (issue 6 "Protocol"; DESIGN "Messages between the layers": unknown or malformed messages are
logged and dropped -- never a crash): after garbage, a malformed dispatch and an unknown message type,
the link still takes work and still ends on the parent's `exit`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import zmq
import zmq.asyncio

from qcg.pilotjob.api import curve, protocol
from qcg.pilotjob.api.jobdesc import Execution
from qcg.pilotjob.governor import parent_link
from qcg.pilotjob.governor.keys import RunKeys
from qcg.pilotjob.governor.parent_link import ParentLink
from qcg.pilotjob.partition import wire
from qcg.pilotjob.partition.local_nodes import local_resources
from qcg.pilotjob.partition.task import ResourceRequest, TaskSpec

TIMEOUT = 20.0


class FakePort:
    """What the link needs of a partition: its size and credit, and where dispatched tasks go."""

    def __init__(self) -> None:
        self.resources = local_resources("a:2")
        self.queue_limit = 6
        self.submitted: list[TaskSpec] = []

    def submit(self, tasks: list[TaskSpec]) -> None:
        self.submitted.extend(tasks)

    def cancel(self, task_ids: list[str]) -> None:
        pass

    def never_fits(self, request: ResourceRequest) -> str | None:
        return None

    def totals(self) -> tuple[int, int, int]:
        return (2, 1, 1)

    def info(self) -> dict:
        return self.resources.info()


@contextlib.asynccontextmanager
async def _registered(port: FakePort) -> AsyncIterator[tuple[zmq.asyncio.Socket, ParentLink, bytes, dict]]:
    """A stand-in parent (ROUTER) and a link registered with it: (parent, link, its ident, register); both
    closed afterwards."""
    loop = asyncio.get_running_loop()
    ctx = zmq.asyncio.Context()
    parent = ctx.socket(zmq.ROUTER)
    port_no = parent.bind_to_random_port("tcp://127.0.0.1")
    link = ParentLink(loop, port, address=f"tcp://127.0.0.1:{port_no}", member_id="m1", keys=None)
    try:
        connecting = asyncio.ensure_future(link.connect())
        ident, frame = await asyncio.wait_for(parent.recv_multipart(), TIMEOUT)
        register, _ = protocol.decode(frame)
        await parent.send_multipart([ident, protocol.encode({"type": "registered", "id": "m1"})])
        await asyncio.wait_for(connecting, TIMEOUT)
        yield parent, link, ident, register
    finally:
        await link.close()
        parent.close(linger=0)
        ctx.term()


def test_malformed_parent_messages_are_dropped_and_the_link_goes_on() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        port = FakePort()
        async with _registered(port) as (parent, link, ident, register):
            assert register["type"] == "register" and register["id"] == "m1"

            task = TaskSpec("t", "t", None, Execution(exec="/bin/true"), ResourceRequest(1, 1), walltime=None,
                            seq=1)
            for bad in (b"\xc1 not msgpack",                                   # not a protocol message
                        protocol.encode({"type": "dispatch", "execs": [], "tasks": [["x"]]}),   # bad rows
                        protocol.encode({"type": "no-such-type"})):
                await parent.send_multipart([ident, bad])
            await parent.send_multipart([ident, protocol.encode({"type": "dispatch", **wire.encode_tasks([task])})])
            deadline = loop.time() + TIMEOUT
            while not port.submitted:
                assert loop.time() < deadline, "the good dispatch after the bad messages never arrived"
                await asyncio.sleep(0.01)
            assert [t.task_id for t in port.submitted] == ["t"]

            await parent.send_multipart([ident, protocol.encode({"type": "exit"})])
            assert await asyncio.wait_for(link.wait(), TIMEOUT) == "the parent asked to exit"

    asyncio.run(main())


def test_a_lost_node_is_taken_out_of_what_the_parent_is_offered() -> None:
    """Issue 6 "Dispatch" / issue 5 "node lost": the governor places work by the resources its managers
    sent; a manager whose node is lost tells it (`update` without that node), and one with no node left
    leaves (its tasks go elsewhere) instead of being sent tasks that cannot run."""
    async def main() -> None:
        port = FakePort()
        port.resources = local_resources("a:2,b:2")
        async with _registered(port) as (parent, link, ident, register):
            assert [n["name"] for n in register["resources"]["nodes"]] == ["a", "b"]

            async def next_message() -> dict:
                while True:
                    _, frame = await asyncio.wait_for(parent.recv_multipart(), TIMEOUT)
                    msg, _ = protocol.decode(frame)
                    if msg["type"] != "hb":
                        return msg

            port.resources.set_node_lost("b")
            link.capacity_changed()
            update = await next_message()
            assert update["type"] == "update" and [n["name"] for n in update["resources"]["nodes"]] == ["a"]
            port.resources.set_node_lost("a")
            link.capacity_changed()
            assert (await next_message())["type"] == "leave"

    asyncio.run(main())


def test_a_second_registered_keeps_one_watch_of_the_parents_process() -> None:
    """README "Faults": a manager on the governor's host watches its process (a pidfd). The register is
    sent again when the answer is slow, so `registered` may come twice: a second watch left the first
    pidfd registered with the loop, which then fired without end once the governor had ended (found in
    review: thousands of 'parent lost' lines a second)."""
    import socket
    import subprocess

    async def main() -> None:
        stand_in = subprocess.Popen(["sleep", "60"])
        port = FakePort()
        ended: list[int] = []
        try:
            async with _registered(port) as (parent, link, ident, _):
                original = link._parent_ended
                link._parent_ended = lambda: (ended.append(1), original())   # type: ignore[method-assign]
                for _ in range(2):
                    await parent.send_multipart([ident, protocol.encode(
                        {"type": "registered", "id": "m1", "host": socket.gethostname(), "pid": stand_in.pid})])
                deadline = asyncio.get_running_loop().time() + TIMEOUT
                while link._parent_pidfd is None:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)            # the second `registered` has arrived too
                stand_in.kill()
                stand_in.wait(TIMEOUT)
                assert "ended" in await asyncio.wait_for(link.wait(), TIMEOUT)
                await asyncio.sleep(0.2)
                assert len(ended) == 1
        finally:
            stand_in.kill()

    asyncio.run(main())


def test_a_parent_refusing_our_keys_ends_the_connect_with_a_clear_error(monkeypatch) -> None:
    """README "Attaching" / DESIGN principle 5: a manager given keys of another run is refused by the
    parent's CURVE handshake. Its registration must still end -- "no answer ... keys that do not match" --
    instead of a send waiting for ever on a socket that has no pipe (found by a helper: the manager hung
    with no message)."""
    monkeypatch.setattr(parent_link, "REGISTER_TIMEOUT", 0.5)
    monkeypatch.setattr(parent_link, "REGISTER_ATTEMPTS", 2)

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        parent = ctx.socket(zmq.ROUTER)
        server_public, server_secret = zmq.curve_keypair()
        curve.make_server(parent, server_secret)
        authenticator = curve.start_authenticator(ctx, {zmq.curve_keypair()[0]})   # only someone else's key
        port_no = parent.bind_to_random_port("tcp://127.0.0.1")
        ours = zmq.curve_keypair()
        keys = RunKeys("unused", server_public, b"", ours[0], ours[1])
        link = ParentLink(asyncio.get_running_loop(), FakePort(), address=f"tcp://127.0.0.1:{port_no}",
                          member_id="m1", keys=keys)
        try:
            with pytest.raises(parent_link.ParentError, match="no answer from the parent .* keys that do not match"):
                await asyncio.wait_for(link.connect(), TIMEOUT)
        finally:
            await link.close()
            authenticator.stop()        # type: ignore[attr-defined]
            parent.close(linger=0)
            ctx.term()

    asyncio.run(main())
