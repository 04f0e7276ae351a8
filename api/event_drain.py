"""Takes the events nobody is reading out of the SUB socket, once a second, in a thread of the client.

libzmq reads a TCP connection into 8 KiB buffers and hands out the messages
it decodes as views into them: a buffer is freed only when every message
cut from it is. Events come one at a time, so each unread event kept a
buffer of its own -- 8.5 KiB per event, measured: a client that submitted
20 000 tasks and looked at them only with `status` grew by 122 MiB. Every
`DRAIN_INTERVAL` the drain copies the waiting events into a queue of bytes
(about their size each) -- unless a reader holds the socket, which then
takes the events itself as they come. A reader (`ServiceConnection.next_event`)
takes the queue first, then the socket, holding `lock` all the while: the
socket is used by one thread at a time, as libzmq requires, and a reader
waiting on it is never robbed of an event. Nothing is dropped.

A thread that forwarded every event as it came (tried first) cost the
client's requests time while many tasks ended: a one-job submit while 1 000
tasks start took 1.13 ms against 0.91 ms without it (medians of 4 alternating
runs). Draining once a second made no difference there (0.88 against 0.96 ms).
"""

from __future__ import annotations

import itertools
import threading
from collections import deque

import zmq

DRAIN_INTERVAL = 1.0      # seconds between two looks at the socket
STOP_TIMEOUT = 5.0        # seconds `close` waits for the drain's thread
_ids = itertools.count()


class EventDrain:
    def __init__(self, sub: zmq.Socket) -> None:
        self.sub = sub
        self.lock = threading.Lock()                  # held by whoever uses `sub`
        self.kept: deque[list[bytes]] = deque()       # events taken out, oldest first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"qcgpj-event-drain-{next(_ids)}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(DRAIN_INTERVAL):
            if not self.lock.acquire(blocking=False):
                continue                # a reader is on the socket: it takes the events itself
            try:
                while True:
                    self.kept.append(self.sub.recv_multipart(zmq.NOBLOCK))    # a copy: the buffer goes
            except zmq.Again:
                pass
            except zmq.ZMQError:
                return                  # the socket or its context is closed
            finally:
                self.lock.release()

    def close(self) -> None:
        """Stop the thread, then close the socket (as the connection closed it before: without the lock,
        so that a reader blocked on it cannot hold the close up)."""
        self._stop.set()
        self._thread.join(STOP_TIMEOUT)
        try:
            self.sub.close(linger=0)
        except zmq.ZMQError:
            pass
