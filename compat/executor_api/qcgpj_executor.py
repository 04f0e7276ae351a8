"""`qcg.pilotjob.executor_api.qcgpj_executor` (reference 23.2.1): re-export of `qcg.pilotjob.api.executor`."""

from qcg.pilotjob.api.executor.executor import ClientLogLevel, QCGPJExecutor, ServiceLogLevel

__all__ = ["QCGPJExecutor", "ServiceLogLevel", "ClientLogLevel"]
