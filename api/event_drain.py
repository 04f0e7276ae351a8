"""The SUB side of a client connection: events read as they come, or taken out of the socket ten times a
second by a thread of the client when nobody reads them.

libzmq reads a TCP connection into 8 KiB buffers and hands out the messages
it decodes as views into them: a buffer is freed only when every message
cut from it is. Events come one at a time, so each unread event kept a
buffer of its own -- 8.5 KiB per event, measured: a client that submitted
20 000 tasks and looked at them only with `status` grew by 122 MiB. Every
`DRAIN_INTERVAL` the drain copies the waiting events into a queue of bytes
(about their size each) -- unless a reader holds the socket, which then
takes the events itself as they come. A reader (`next`, called by
`ServiceConnection.next_event`) takes the queue first, then the socket,
holding `lock` all the while: the socket is used by one thread at a time,
as libzmq requires, and a reader waiting on it is never robbed of an event.
Nothing is dropped.

A thread that forwarded every event as it came (tried first) cost the
client's requests time while many tasks ended: a one-job submit while 1 000
tasks start took 1.13 ms against 0.91 ms without it (medians of 4 alternating
runs). Draining ten times a second, 16 events per hold of the interpreter,
made no difference there (1.01 against 1.06 ms; p99 1.57-2.17 against
1.68-2.29 ms), and the client of the 20 000 tasks above grew by 7 MiB.

Also here: connecting the SUB socket (`connect_subscriber`) and decoding an event's
frames (`decode_event`), and `monitor`, which the request socket uses too.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from typing import Any

import msgpack
import zmq
import zmq.utils.monitor

DRAIN_INTERVAL = 0.1      # seconds between two looks at the socket
BATCH = 16                # events taken out per hold of the lock (and of the interpreter)
STOP_TIMEOUT = 5.0        # seconds `close` waits for the drain's thread
_ids = itertools.count()
_monitor_ids = itertools.count()

_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def monitor(sock: zmq.Socket, events: int) -> zmq.Socket:
    """A monitor of `sock` on an address of its own: pyzmq's default one is named after the socket, and
    libzmq releases it only some time after the previous monitor of the socket is closed."""
    return sock.get_monitor_socket(events, addr=f"inproc://qcgpj-monitor-{next(_monitor_ids)}")


def connect_subscriber(sub: zmq.Socket, pub_address: str, topics: tuple[bytes, ...], timeout: float) -> "EventDrain":
    """Connect `sub` (a new SUB socket, keys set) to the publisher and drain it.

    A subscription works only once the connection is up, so this waits up
    to `timeout` seconds for the handshake: events of jobs submitted right
    after connecting are not lost (the "slow joiner"). A handshake that
    fails or does not come in time is not fatal: the waits re-check the
    states with requests. A connect that raises closes `sub`.
    """
    sub.setsockopt(zmq.RCVHWM, 0)  # never drop an event on our side
    for topic in topics:
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    watch = monitor(sub, zmq.EVENT_HANDSHAKE_SUCCEEDED | _HANDSHAKE_FAILED)
    connected = False
    try:
        sub.connect(pub_address)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not watch.poll(remaining * 1000.0, zmq.POLLIN):
                break
            event = zmq.utils.monitor.recv_monitor_message(watch)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED or event & _HANDSHAKE_FAILED:
                break
        connected = True
    finally:
        sub.disable_monitor()
        watch.close(linger=0)
        if not connected:
            sub.close(linger=0)         # the error goes on to the caller
    return EventDrain(sub)


def decode_event(frames: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    """`(topic, map)` of an event; a malformed body gives an empty map, never an error."""
    if len(frames) < 2:
        return frames[0] if frames else b"", {}
    try:
        data = msgpack.unpackb(frames[-1], raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several unrelated types for garbage
        data = {}
    return frames[0], data if isinstance(data, dict) else {}


class EventDrain:
    def __init__(self, sub: zmq.Socket) -> None:
        self.sub = sub
        self.lock = threading.Lock()                  # held by whoever uses `sub`
        self.kept: deque[list[bytes]] = deque()       # events taken out, oldest first
        self._stop = threading.Event()
        # the thread holds the drain weakly: a connection dropped without close() is collected (and its
        # socket closed by pyzmq) as before, and the thread then ends
        self._thread = threading.Thread(target=_run, args=(weakref.ref(self), self._stop),
                                        name=f"qcgpj-event-drain-{next(_ids)}", daemon=True)
        self._thread.start()

    def _take(self, most: int) -> int:
        """Up to `most` events out of the socket (none while a reader holds it: it takes them itself)."""
        if not self.lock.acquire(blocking=False):
            return 0
        try:
            for n in range(most):
                try:
                    self.kept.append(self.sub.recv_multipart(zmq.NOBLOCK))    # a copy: the buffer goes
                except zmq.Again:
                    return n
            return most
        finally:
            self.lock.release()

    def next(self, ms: float | None, wake: zmq.Socket | None = None) -> list[bytes] | None:
        """The oldest event's frames: one taken out already, else one from the socket within `ms`
        milliseconds (None: no limit; 0: no wait), a readable `wake` ending the wait early (None then).
        ZMQError (a closed socket or context) goes to the caller."""
        with self.lock:
            if self.kept:
                return self.kept.popleft()
            sub = self.sub
            if ms != 0:
                if wake is None:
                    if not sub.poll(ms, zmq.POLLIN):
                        return None
                else:
                    poller = zmq.Poller()
                    poller.register(sub, zmq.POLLIN)
                    poller.register(wake, zmq.POLLIN)
                    if sub not in dict(poller.poll(ms)):
                        return None
            try:
                return sub.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return None

    def close(self) -> None:
        """Stop the thread, then close the socket (as the connection closed it before: without the lock,
        so that a reader blocked on it cannot hold the close up)."""
        self._stop.set()
        self._thread.join(STOP_TIMEOUT)
        try:
            self.sub.close(linger=0)
        except zmq.ZMQError:
            pass


def _run(ref: "weakref.ref[EventDrain]", stop: threading.Event) -> None:
    while not stop.wait(DRAIN_INTERVAL):
        drain = ref()
        if drain is None:
            return
        try:
            while drain._take(BATCH) == BATCH and not stop.is_set():
                time.sleep(0)           # let the client's own thread in between
        except zmq.ZMQError:
            return                      # the socket or its context is closed
        finally:
            drain = None
