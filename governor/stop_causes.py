"""What stops a service or a partition manager besides its requests: signals, and a bug.

SIGHUP is among the signals: a `qcg-gov` started from an interactive shell
gets it when the terminal or the ssh connection goes away, and Python's
default for it is to die on the spot -- no final status, no record of what
was interrupted, tasks left to the orphan guards. Taken like SIGTERM, the run
stops cleanly and `--resume` finishes it. A SIGHUP that was ignored when the
process started (`nohup`, a batch system that sets it so) stays ignored:
that is the caller's explicit wish to outlive its terminal.

An exception that nothing caught inside a callback of the event loop is a
bug; asyncio only logs it and goes on, which can leave tasks that never
start in a run that never ends. It stops the run instead, with one line
for the user (`internal_error_line`) and the traceback in the log.
"""

from __future__ import annotations

import os
import signal
from typing import Any


def stop_signals() -> tuple[int, ...]:
    """SIGINT and SIGTERM, and SIGHUP unless this process inherited it ignored."""
    hangup = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hangup)


def internal_error_line(context: dict[str, Any], aux_dir: str) -> str:
    """The `Error:` line for an exception asyncio's exception handler was given (`context`)."""
    exc = context.get("exception")
    what = f"{type(exc).__name__}: {exc}" if exc is not None else str(context.get("message", "unknown"))
    return (f"Error: internal error ({what}); the run stops, and --resume finishes it. The traceback is in "
            f"{os.path.join(aux_dir, 'service.log')}; please report it")
