"""Starting a helper process (node agent, partition manager) again when it dies before it registers."""

from __future__ import annotations

from typing import Awaitable, Callable

import tenacity

START_ATTEMPTS = 3


async def start_with_retries(run_once: Callable[[], Awaitable[None]], closing: Callable[[], bool]) -> str | None:
    """Await `run_once` until it returns; an OSError (did not start, ended before registering) is retried
    with exponential backoff (tenacity). Returns None, or the last error after `START_ATTEMPTS`."""
    try:
        async for attempt in tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(START_ATTEMPTS),
                wait=tenacity.wait_exponential(multiplier=0.5, max=8),
                retry=tenacity.retry_if_exception_type(OSError), reraise=True):
            with attempt:
                if closing():
                    return None
                await run_once()
    except OSError as exc:
        return str(exc)
    return None
