"""Waiting for a piece of work unless the process is told to stop first.

Shared by the service (its start-up) and the node agent (its run lock):
both wait on work that may take minutes -- a hung `srun`, the tasks of a
killed run -- while a signal must still end them at once (helper reports:
Ctrl-C and SIGTERM were ignored, or killed the process outright, during
such a wait). Here because `api/` is the one layer both may import.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None when `stop` is set first: `work` is then canceled, and awaited so that
    its own clean-up has run."""
    work_task = asyncio.ensure_future(work)
    stop_task = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_task.cancel()
    if work_task.done():
        return work_task.result()
    work_task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work_task
    return None
