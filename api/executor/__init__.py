"""Executor API (reference 11, 23): `QCGPJExecutor`, `QCGPJFuture`, templates.

Documented import paths `qcg.pilotjob.executor_api.*` re-export these names.
"""

from qcg.pilotjob.api.executor.executor import ClientLogLevel, QCGPJExecutor, ServiceLogLevel
from qcg.pilotjob.api.executor.future import QCGPJFuture
from qcg.pilotjob.api.executor.templates import BasicTemplate, QCGPJTemplate, render_template

__all__ = ["QCGPJExecutor", "QCGPJFuture", "ServiceLogLevel", "ClientLogLevel", "QCGPJTemplate",
           "BasicTemplate", "render_template"]
