"""`qcg.pilotjob.executor_api.templates.qcgpj_template` (reference 23.1.1): re-export."""

from qcg.pilotjob.api.executor.templates import QCGPJTemplate

__all__ = ["QCGPJTemplate"]
