"""The signals that stop a service or a partition manager gracefully, as SIGTERM does.

SIGHUP is among them: a `qcg-gov` started from an interactive shell gets it when
the terminal or the ssh connection goes away, and Python's default for it is to
die on the spot -- no final status, no record of what was interrupted, tasks
left to the orphan guards. Taken like SIGTERM, the run stops cleanly and
`--resume` finishes it. A SIGHUP that was ignored when the process started
(`nohup`, a batch system that sets it so) stays ignored: that is the caller's
explicit wish to outlive its terminal.
"""

from __future__ import annotations

import signal


def stop_signals() -> tuple[int, ...]:
    """SIGINT and SIGTERM, and SIGHUP unless this process inherited it ignored."""
    hangup = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hangup)
