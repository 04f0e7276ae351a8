"""Turning a job (or one of its iterations) into the `TaskSpec` a partition runs.

Request-time placeholders are substituted here, per string field, and only
for jobs whose execution holds any: a sweep of plain `/bin/true` shares one
immutable `Execution` among all its iterations.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qcg.pilotjob.api.placeholders import RUNTIME_PLACEHOLDERS, substitute_fields
from qcg.pilotjob.partition.task import TaskSpec

if TYPE_CHECKING:
    from qcg.pilotjob.governor.registry import JobRecord
    from qcg.pilotjob.partition.task import ResourceRequest


def request_variables(rcnt: int, when: datetime, sname: str = "local") -> dict[str, Any]:
    """Variables known when a request is received (reference 10.3.1)."""
    return {
        "rcnt": rcnt,
        "sname": sname,
        "date": str(when.date()),
        "time": when.strftime("%H:%M:%S"),
        "dateTime": str(when),
    }


def make_task(job: "JobRecord", iteration: int | None, request: "ResourceRequest") -> TaskSpec:
    desc = job.desc
    execution = desc.execution
    template = job.exec_template
    runtime = False
    if template is not None:
        names = template.names
        values = dict(job.base_vars)
        if "uniq" in names:
            values["uniq"] = uuid.uuid4().hex
        if iteration is not None:
            assert desc.iteration is not None
            # ${jname} stays the job's name, as in the original (substituted at submit): the iteration is ${it}
            values.update(desc.iteration.substitutions(iteration))
        execution = substitute_fields(execution, values, template)
        # the partition substitutes again only what it alone knows, or what a value brought in or completed
        runtime = not names.isdisjoint(RUNTIME_PLACEHOLDERS) or template.partial or any(
            "${" in str(values[n]) for n in names if n in values)
    return TaskSpec(
        task_id=job.task_id(iteration),
        job_name=desc.name,
        iteration=iteration,
        execution=execution,
        resources=request,
        walltime=desc.resources.wt,
        seq=job.seq,
        templated=runtime,
        attributes=desc.attributes,
    )
