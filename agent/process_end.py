"""Ending one of our programs without the interpreter's teardown.

At exit CPython tears down every module and collects what is left: with the
~300 modules of a service that took 50-65 ms on the test VM (an agent: about
30 ms), and the end of every run waits for it once per level -- a governor
for its partition managers, a manager for its agents, `salloc` for the
governor. The programs close and flush their own files before they return,
so their entry points end the process as soon as they have.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, NoReturn


def run_then_exit(main: Callable[[], object]) -> NoReturn:
    """Run `main` (a program's whole work) and end the process with its status, as `sys.exit` would.

    An exception other than SystemExit is not caught: it ends the process the usual way, traceback included.
    """
    try:
        status = main()
    except SystemExit as exc:
        status = exc.code
    exit_now(status)


def exit_now(status: object) -> NoReturn:
    """`sys.exit(status)` semantics (None = 0, a message = printed and 1), minus the teardown."""
    if status is None:
        code = 0
    elif isinstance(status, int):
        code = status
    else:
        print(status, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):    # closed or replaced: nothing left to write
            pass
    os._exit(code & 0xFF)
