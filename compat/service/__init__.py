"""`python -m qcg.pilotjob.service`: the documented entry point of the governor CLI.

More than a re-export, because this is where our service process starts:
`program` sets the process up (no ssl: agent/process_setup.py) before the
governor's imports run, so `main` is imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["main", "program"]


def program() -> None:
    """Run the service as this process (`python -m qcg.pilotjob.service`, `qcg-gov`, `qcg-pm-service`).

    Only for a process that is the service: it marks ssl absent for the whole process.
    """
    try:
        from qcg.pilotjob.agent.process_setup import keep_tls_out

        keep_tls_out()
        from qcg.pilotjob.governor.cli import program as cli_program
    except KeyboardInterrupt:       # Ctrl-C while the program still loads: nothing started, no traceback
        raise SystemExit(130) from None
    cli_program()


def __getattr__(name: str) -> Any:
    if name == "main":
        from qcg.pilotjob.governor.cli import main

        globals()["main"] = main
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
