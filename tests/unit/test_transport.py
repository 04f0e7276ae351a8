"""The client's connection (api/transport.py) against a bare ROUTER socket (issue 4 "Client calls to a dead
or unreachable service ... never hang"; reference 22.1.4 `finish`)."""

from __future__ import annotations

import threading
import time

import msgpack
import pytest
import zmq

from qcg.pilotjob.api.transport import NoKeysFound, ServiceConnection


def _server():
    """A ROUTER on loopback that takes one request and then closes without answering.

    (A test of an answer sent just before the close is left out: with this bare server the answer was
    lost in 4 of 20 runs, before this session's change as after it.)"""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    got: list[dict] = []

    def serve() -> None:
        try:
            if sock.poll(20_000, zmq.POLLIN):
                ident, *rest = sock.recv_multipart()
                request = msgpack.unpackb(rest[-1], raw=False)
                got.append(request)
        finally:
            sock.close(linger=1000)
            ctx.term()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"tcp://127.0.0.1:{port}", got, thread


def _finish() -> tuple[dict, list[dict]]:
    address, got, thread = _server()
    conn = ServiceConnection(address, None, timeout=15.0, insecure=True)  # the bare server has no CURVE
    try:
        response = conn.request({"request": "finish"}, ends_service=True)
    finally:
        conn.close()
    thread.join(5)
    return response, got


def test_a_service_that_closes_after_finish_counts_as_answered():
    """`finish` ends the service: a connection closed after the request is its answer, noticed from the
    disconnection itself (no alive check, a timeout far away: waiting for either would fail the test)."""
    response, got = _finish()
    assert [r["request"] for r in got] == ["finish"]
    assert response == {"code": 0, "message": "the service closed the connection after the request"}


def test_no_keys_without_the_opt_in_sends_nothing():
    """DESIGN.md principle 5: a connection without CURVE keys is made only with the explicit opt-in;
    without it the constructor raises and the server gets nothing."""
    address, got, thread = _server()
    with pytest.raises(NoKeysFound, match="insecure=True"):
        ServiceConnection(address, None, timeout=15.0)
    thread.join(0.5)
    assert got == []


def test_unread_events_are_drained_in_order_and_the_drain_stops_with_the_connection(monkeypatch):
    """Events nobody reads are copied out of the SUB socket by a thread of the connection (api/event_drain.py:
    unread, they kept libzmq's 8 KiB read buffers, one each); a reader gets the drained ones first, then
    the socket's, all in order; the drain's thread ends with the connection."""
    from qcg.pilotjob.api import event_drain

    monkeypatch.setattr(event_drain, "DRAIN_INTERVAL", 0.05)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    conn = ServiceConnection(f"tcp://127.0.0.1:{port + 1}", None, timeout=15.0, insecure=True)
    try:
        conn.subscribe(f"tcp://127.0.0.1:{port}", topics=(b"task.",))
        drain = conn._drain
        assert drain is not None and drain._thread.is_alive()
        body = msgpack.packb({"job": "j", "it": -1, "state": "SUCCEED"})
        for _ in range(200):                  # the subscription reaches the publisher a moment later
            pub.send_multipart([b"task.probe", body])
            if conn.next_event(0.05) is not None:
                break
        else:
            raise AssertionError("no event ever came through")
        while conn.next_event(0.2) is not None:
            pass

        def send(first: int, last: int) -> None:
            for i in range(first, last):
                pub.send_multipart([b"task.SUCCEED", msgpack.packb({"job": "j", "it": i, "state": "SUCCEED"})])
                if i % 100 == 0:
                    time.sleep(0.001)         # events one at a time, as a service sends them

        with drain.lock:                      # as a reader waiting on the socket: the drain keeps off
            send(0, 500)
            time.sleep(0.3)
            assert not drain.kept, "the drain took events from under a reader"
        send(500, 1000)
        deadline = time.monotonic() + 10
        while len(drain.kept) < 1000:         # nobody reads: the drain takes them all out
            assert time.monotonic() < deadline, f"the drain took {len(drain.kept)} of 1000 events"
            time.sleep(0.05)
        send(1000, 2000)                      # in the socket, or taken out while the reader below reads
        pub.send_multipart([b"other", b"x"])  # not subscribed: never seen
        got = []
        while (event := conn.next_event(2.0)) is not None:
            got.append(event)
        got = [(t, d["it"]) for t, d in got if t != b"task.probe"]
        assert got == [(b"task.SUCCEED", i) for i in range(2000)]
    finally:
        conn.close()
        pub.close(linger=0)
        ctx.term()
    assert not drain._thread.is_alive(), "the drain outlived its connection"


def test_the_drain_of_a_connection_dropped_unclosed_ends():
    """A connection dropped without close() (a Manager never finished) is collected as before the drain
    existed: its thread holds it weakly, and ends."""
    import gc

    conn = ServiceConnection("tcp://127.0.0.1:9", None, timeout=15.0, insecure=True)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    try:
        conn.subscribe(f"tcp://127.0.0.1:{port}")
        thread = conn._drain._thread          # type: ignore[union-attr]
        del conn
        gc.collect()
        thread.join(5)
        assert not thread.is_alive(), "the drain of a dropped connection runs on"
    finally:
        pub.close(linger=0)
        ctx.term()


def test_a_reply_of_another_protocol_version_is_refused():
    """A service of another protocol version answers: the client raises, naming both versions, rather than
    go on with a service whose events it would miss (api/protocol.py PROTOCOL_VERSION)."""
    from qcg.pilotjob.api import errors, protocol

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        if router.poll(20_000, zmq.POLLIN):
            ident, *rest = router.recv_multipart()
            request = msgpack.unpackb(rest[-1], raw=False)
            router.send_multipart([ident, b"", msgpack.packb({"v": protocol.PROTOCOL_VERSION - 1,
                                                               "id": request["id"], "code": 0})])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    conn = ServiceConnection(f"tcp://127.0.0.1:{port}", None, timeout=15.0, insecure=True)
    try:
        with pytest.raises(errors.InternalError, match=f"protocol version {protocol.PROTOCOL_VERSION - 1}, "
                                                       f"this client speaks {protocol.PROTOCOL_VERSION}"):
            conn.request({"request": "resourcesInfo"})
    finally:
        conn.close()
        thread.join(5)
        router.close(linger=0)
        ctx.term()


def _answering(ctx: zmq.Context, port: int | None = None) -> tuple[zmq.Socket, int, threading.Event, threading.Thread]:
    """A ROUTER answering every request with code 0 until the event is set (bound to `port`, retried while
    the last one's port is being released)."""
    sock = ctx.socket(zmq.ROUTER)
    if port is None:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
    else:
        for _ in range(400):
            try:
                sock.bind(f"tcp://127.0.0.1:{port}")
                break
            except zmq.ZMQError:
                time.sleep(0.005)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if sock.poll(50, zmq.POLLIN):
                frames = sock.recv_multipart()
                req = msgpack.unpackb(frames[-1], raw=False)
                sock.send_multipart([frames[0], b"", msgpack.packb({"v": 2, "code": 0, "id": req["id"]})])
        sock.close(linger=0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock, port, stop, thread


def test_a_service_back_on_its_address_at_once_is_not_taken_for_gone():
    """A disconnect is followed by one scheduled reconnect at once (libzmq); only a refused reconnect after
    it says the service has ended. Taking the first for the second failed a request to a service that
    came back on the same address right away (found in review)."""
    ctx = zmq.Context()
    _, port, stop, thread = _answering(ctx)
    conn = ServiceConnection(f"tcp://127.0.0.1:{port}", None, timeout=10.0, insecure=True)
    try:
        assert conn.request({"request": "x"})["code"] == 0
        stop.set()
        thread.join(5)
        _, _, stop, thread = _answering(ctx, port)
        assert conn.request({"request": "x"})["code"] == 0
    finally:
        stop.set()
        thread.join(5)
        conn.close()
        ctx.term()
