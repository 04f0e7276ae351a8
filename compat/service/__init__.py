"""`python -m qcg.pilotjob.service`: the documented entry point, a thin re-export of the governor CLI."""

from qcg.pilotjob.governor.cli import main

__all__ = ["main"]
