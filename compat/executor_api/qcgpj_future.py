"""`qcg.pilotjob.executor_api.qcgpj_future` (reference 23.2.2): re-export of `qcg.pilotjob.api.executor`."""

from qcg.pilotjob.api.executor.future import QCGPJFuture

__all__ = ["QCGPJFuture"]
