"""The network interface: a ROUTER socket serving requests inside the service's asyncio loop.

Issue 4 ("Service side"): `--net` opens a ROUTER socket so that many clients are
served concurrently; requests are msgpack maps with a protocol version, or the
original's JSON envelope (`{"request": ...}` answered with `{"code", "message",
"data"}` in JSON) -- see `api/protocol.py`. Every request goes through the one
`RequestHandler` of the service, exactly like the request file.

Both envelopes are served: a REQ peer's message arrives as `[id, b"", payload]`
and gets `[id, b"", response]`; a DEALER peer's as `[id, payload]` and gets
`[id, response]`.

Why it never blocks: the socket's FD is watched by the event loop; when it
fires, the pending requests are read without blocking and each is answered
right away (the handler is synchronous and fast; sends are non-blocking, a
ROUTER drops rather than blocks), at most `BATCH` per loop turn so tasks keep
being launched under load. No per-request coroutine, future or await.

Bad input never crashes the service (issue 4, "Bad input and faults"):
garbage bytes, truncated msgpack, invalid JSON, wrong types, a wrong number of
frames each get an error response and are counted and logged; frames above
`protocol.MAX_MESSAGE_BYTES` are refused by libzmq itself (ZMQ_MAXMSGSIZE:
the connection is dropped, the peer reconnects).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any, Callable

import structlog
import zmq

from qcg.pilotjob.api import protocol

if TYPE_CHECKING:
    from qcg.pilotjob.governor.keys import RunKeys

log = structlog.get_logger("zmq")

BATCH = 256                   # requests served per loop turn before yielding to the loop
LINGER_MS = 1000              # how long a reply (e.g. to `finish`) may take to leave at close
HWM = 100_000                 # queued messages per peer before ROUTER drops replies
DEFAULT_PORT_MIN, DEFAULT_PORT_MAX = 2222, 9999   # the reference's range for a random port
LOG_FIRST_BAD = 20            # bad frames logged one by one; then every 1000th




class BindError(Exception):
    """No socket could be bound; the message says where and why."""


def external_host(host: str) -> str:
    """The host clients should use for a socket bound to `host` (wildcards become this host's IP)."""
    if host in ("0.0.0.0", "*", "", "::"):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return host


def _tcp(host: str) -> str:
    return f"tcp://[{host}]" if ":" in host and not host.startswith("[") else f"tcp://{host}"


def bind_tcp(sock: zmq.Socket, host: str, port: int | None, port_min: int | None, port_max: int | None,
             what: str) -> str:
    """Bind `sock` to `host` on `port`, or on a random free port in [port_min, port_max]; returns the address."""
    if ":" in host:
        sock.ipv6 = True
    base = _tcp(host)
    if port is not None:
        if not 0 < port < 65536:
            raise BindError(f"{what}: port {port} is not a valid TCP port")
        try:
            sock.bind(f"{base}:{port}")
        except zmq.ZMQError as exc:
            raise BindError(f"{what}: cannot listen on {host}:{port}: {exc.strerror}") from None
    else:
        low = DEFAULT_PORT_MIN if port_min is None else port_min
        high = DEFAULT_PORT_MAX if port_max is None else port_max
        if not 0 < low <= high < 65536:
            raise BindError(f"{what}: invalid port range {low}-{high}")
        try:
            # bind_to_random_port's upper bound is exclusive
            port = sock.bind_to_random_port(base, min_port=low, max_port=high + 1, max_tries=200)
        except zmq.ZMQBindError:
            raise BindError(f"{what}: no free port on {host} in the range {low}-{high}") from None
        except zmq.ZMQError as exc:
            raise BindError(f"{what}: cannot listen on {host}: {exc.strerror}") from None
    return f"{_tcp(external_host(host))}:{port}"


class ZmqInterface:
    """ROUTER socket answering requests with `handle(request) -> response`."""

    def __init__(self, context: zmq.Context, keys: "RunKeys | None", *, host: str = "127.0.0.1",
                 port: int | None = None, port_min: int | None = None, port_max: int | None = None) -> None:
        self.host = host
        self._want = (port, port_min, port_max)
        self.keys = keys
        # a plain (synchronous) socket: its FD is watched by the asyncio loop directly (see module doc)
        self.sock: zmq.Socket = zmq.Context.shadow(context.underlying).socket(zmq.ROUTER)
        self.address: str | None = None
        self.requests = 0
        self.bad_frames = 0
        self.dropped_replies = 0
        self._handle: Callable[[Any], dict[str, Any]] | None = None
        self._replied: Callable[[], None] | None = None
        self._answered = 0                      # client requests answered in the current drain
        self._peer_handler: Callable[[bytes, dict[str, Any]], None] | None = None
        self._held: list[list[bytes]] = []      # client requests that came before `start`
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._accepting = True
        self._drain_scheduled = False
        self._closed = False

    # --------------------------------------------------------------- set-up
    def bind(self) -> str:
        sock = self.sock
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        if self.keys is not None:
            from qcg.pilotjob.governor.keys import make_server
            make_server(sock, self.keys)
        port, port_min, port_max = self._want
        try:
            self.address = bind_tcp(sock, self.host, port, port_min, port_max, "--net")
        except BindError:
            sock.close(linger=0)
            self._closed = True
            raise
        return self.address

    def start(self, loop: asyncio.AbstractEventLoop, handle: Callable[[Any], dict[str, Any]],
              replied: Callable[[], None] | None = None) -> None:
        """Serve requests from now on; requests that arrived since `bind` are served at once.

        `replied` is called after each batch of client requests was answered
        (the replies are with ZeroMQ, on their way out).
        """
        self._handle = handle
        self._replied = replied
        self._watch(loop)
        held, self._held = self._held, []
        for frames in held:
            self._serve(frames)

    def serve_peers(self, loop: asyncio.AbstractEventLoop, handler: Callable[[bytes, dict[str, Any]], None]) -> None:
        """Pass partition-protocol messages (msgpack maps with a `type`) to `handler(routing id, message)`.

        May come before `start`: partition managers register while client
        requests are still held back.
        """
        self._peer_handler = handler
        self._watch(loop)

    def send_peer(self, ident: bytes, frame: bytes) -> bool:
        """Send one frame to a partition manager; never blocks (a full or gone peer drops it)."""
        if self._closed:
            return False
        try:
            self.sock.send_multipart([ident, frame], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:
            log.warning("partition message dropped", error=str(exc))
            return False
        finally:
            # any operation on a ZMQ socket may consume the FD's edge: look for input on the next turn,
            # or messages that arrived meanwhile would wait for the next edge (which may never come)
            self._schedule_drain()

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._fd is None:
            self._loop = loop
            self._fd = self.sock.getsockopt(zmq.FD)
            loop.add_reader(self._fd, self._drain)
        # the FD is edge-triggered: anything already queued would never wake us
        self._schedule_drain()

    def stop_accepting(self) -> None:
        """Later requests get an error (the service is finishing); the current reply still goes out."""
        self._accepting = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and self._fd is not None:
            try:
                self._loop.remove_reader(self._fd)
            except Exception:
                pass
        # pending replies (the answer to `finish`) leave during LINGER_MS
        self.sock.close(linger=LINGER_MS)
        log.info("network interface closed", address=self.address, requests=self.requests,
                 bad_frames=self.bad_frames, dropped_replies=self.dropped_replies)

    # -------------------------------------------------------------- serving
    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def serve_pending(self) -> None:
        """Answer the requests waiting on the socket now (never blocks); safe at the top of any callback."""
        self._drain()

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self._closed:
            return
        sock = self.sock
        served = 0
        self._answered = 0
        try:
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._serve(frames)
                served += 1
                if served >= BATCH:
                    # let the loop launch tasks and deliver events; continue on the next turn
                    self._schedule_drain()
                    break
        except zmq.ZMQError as exc:
            if not self._closed:
                log.error("network interface receive failed", error=str(exc))
        if self._answered and self._replied is not None:
            self._replied()

    def _serve(self, frames: list[bytes]) -> None:
        # envelope: REQ peers put an empty delimiter after the routing id, DEALER peers do not
        if len(frames) >= 3 and frames[1] == b"":
            envelope, body = frames[:2], frames[2:]
        else:
            envelope, body = frames[:1], frames[1:]
        payload = body[0] if body else b""
        as_json = payload[:1] in protocol.JSON_FIRST_BYTES
        request_id = None
        if len(body) != 1:
            response = self._bad(f"a request is one frame, got {len(body)}", len(payload))
        else:
            try:
                message, as_json = protocol.decode(payload)
            except protocol.ProtocolError as exc:
                response = self._bad(str(exc), len(payload))
            else:
                if self._peer_handler is not None and "type" in message and not as_json and len(envelope) == 1:
                    self._peer_handler(envelope[0], message)
                    return
                if not as_json:
                    request_id = message.get("id")
                if not self._accepting:
                    # a `finish` asks for what is happening already (a Ctrl-C reached the service and its
                    # client together, whose `finally: finish()` then failed): done, not refused
                    response = ({"code": 0, "message": "the service is finishing already"}
                                if message.get("request") == "finish" else
                                {"code": 1, "message": "processing stopped: the service is finishing"})
                elif self._handle is None:
                    self._held.append(frames)
                    return
                else:
                    self.requests += 1
                    response = self._handle(message)
        try:
            out = protocol.encode_response(response, as_json, request_id)
        except Exception as exc:  # e.g. an unencodable id echoed back
            out = protocol.encode_response({"code": 1, "message": f"response cannot be encoded: {exc}"},
                                           as_json)
        try:
            self.sock.send_multipart(envelope + [out], zmq.NOBLOCK)
            self._answered += 1
        except zmq.ZMQError as exc:  # peer gone or over its HWM: the reply is dropped, never waited for
            self.dropped_replies += 1
            log.warning("reply dropped", error=str(exc), dropped=self.dropped_replies)

    def _bad(self, reason: str, size: int) -> dict[str, Any]:
        self.bad_frames += 1
        n = self.bad_frames
        if n <= LOG_FIRST_BAD or n % 1000 == 0:
            log.warning("malformed request refused", reason=reason, size=size, bad_frames=n)
        return {"code": 1, "message": f"invalid request: {reason}"}
