"""`qcg.pilotjob.executor_api`: documented import path of the Executor API (thin re-export of `qcg.pilotjob.api.executor`)."""
