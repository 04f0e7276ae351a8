"""Output the run can do without: a write that fails is dropped and counted, never raised.

The service's stderr (an `Error: request #N` line, the progress lines), its
stdout and `service.log` may sit on a full disk or a quota, behind a pipe
whose reader quit (`qcg-gov ... 2>&1 | head`) or on a terminal that hung
up. Raised, the failed write ended the run half way, its tasks canceled and
its files unwritten, or stalled it inside a task's start or end. The run's
own record (journal, report, final status) is not written through these:
its failures are handled, and reported, where it is written.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class LossyStream:
    """A text stream whose failed writes are dropped; `lost` counts them."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.lost = 0

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):       # ValueError: the stream was closed under us
            self.lost += 1
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self.lost += 1

    def close(self) -> None:
        try:
            self._stream.close()
        except (OSError, ValueError):
            self.lost += 1

    def __getattr__(self, name: str) -> Any:      # isatty, fileno, encoding, ... of the stream
        return getattr(self._stream, name)


def make_standard_streams_lossy() -> None:
    """sys.stdout and sys.stderr as LossyStreams (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, LossyStream):
            setattr(sys, name, LossyStream(stream))


def standard_streams_lost() -> dict[str, int]:
    """How many writes to sys.stdout and sys.stderr were dropped, for those that lost any."""
    lost = {}
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, LossyStream) and stream.lost:
            lost[name] = stream.lost
    return lost
