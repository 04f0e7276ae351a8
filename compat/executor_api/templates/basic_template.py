"""`qcg.pilotjob.executor_api.templates.basic_template` (reference 23.1.1): re-export."""

from qcg.pilotjob.api.executor.templates import BasicTemplate

__all__ = ["BasicTemplate"]
