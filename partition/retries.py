"""Starting a helper process (node agent, partition manager) again when it dies before it registers,
and saying how each attempt ended (exit code or signal, the tail of its stderr) when it does."""

from __future__ import annotations

import os
from typing import Awaitable, Callable

import tenacity

from qcg.pilotjob.agent.spawner import ProcessExit
from qcg.pilotjob.partition.launcher import exit_description

START_ATTEMPTS = 3
STDERR_TAIL = 5            # lines of a helper's stderr quoted when its start fails


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


def exit_text(ex: ProcessExit | None) -> str:
    """' (exit code N)', ' (killed by signal N (NAME))', ' (<why it never started>)', or '' when not known."""
    if ex is None or ex.exit_code is None:
        return f" ({ex.reason})" if ex is not None and ex.reason else ""
    return f" ({exit_description(ex.exit_code)})"


def attempt_state(attempt: int, running: bool, last_exit: ProcessExit | None) -> str:
    """'attempt N still running', or 'attempt N ended (<how>), next one pending': where an unregistered
    helper's start is, for the error that gives up on it."""
    if running:
        return f"attempt {attempt} still running"
    return f"attempt {attempt} ended{exit_text(last_exit)}, next one pending"


def stderr_tail(path: str, lines: int = STDERR_TAIL, limit: int = 4096) -> str:
    """'; stderr <path>: <its last lines>' (joined by ' | '), '; stderr <path>: empty', or '' when unreadable.

    Quoted in start errors: the user sees why a helper died without looking for its file, which
    the next attempt truncates.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return f"; stderr {path}: {' | '.join(tail) if tail else 'empty'}"
