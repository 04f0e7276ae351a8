"""`python -m qcg.pilotjob.service`: the documented entry point, a thin re-export of the governor CLI.

`main` is imported on first use, so that `program` (and `python -m`) can set up
the process before the governor's imports run.
"""

from __future__ import annotations

from typing import Any

__all__ = ["main", "program"]


def program() -> None:
    """The service's own process (`python -m qcg.pilotjob.service`, `qcg-gov`, `qcg-pm-service`)."""
    from qcg.pilotjob.agent.process_setup import keep_tls_out

    keep_tls_out()
    from qcg.pilotjob.governor.cli import program as cli_program

    cli_program()


def __getattr__(name: str) -> Any:
    if name == "main":
        from qcg.pilotjob.governor.cli import main

        globals()["main"] = main
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
