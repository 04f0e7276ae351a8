"""`qcg.pilotjob.executor_api.templates` (reference 23.1.1): re-export of `qcg.pilotjob.api.executor.templates`."""
