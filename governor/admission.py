"""Admitting a batch of job descriptions: the checks that reject it whole, and the records it becomes.

A submit either registers every job of the batch or none, so every problem
(a taken name, an unknown or cyclic dependency, an invalid size) is
collected before anything is created. A job too big for the resources is no
such problem: the reference (7.2) registers it and fails it at once, and the
rest of its batch runs. Sizing is cached per resource
shape and templates per execution object, because a request of 100 000 jobs
usually repeats both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from qcg.pilotjob.api.errors import InvalidJobDescriptionError
from qcg.pilotjob.api.jobdesc import ResourceSize
from qcg.pilotjob.api.placeholders import FieldTemplate, field_template
from qcg.pilotjob.governor.dependencies import BatchDeps, check_submission
from qcg.pilotjob.governor.registry import IterationRecord, JobRecord, Registry
from qcg.pilotjob.governor.states import JobState
from qcg.pilotjob.partition.iter_schedulers import DoesNotFit, iteration_request
from qcg.pilotjob.partition.task import ResourceRequest

if TYPE_CHECKING:
    from qcg.pilotjob.api.jobdesc import Execution, JobDescription


ONE_NODE = ONE_CORE = ResourceSize(exact=1)


def _sizes(desc: "JobDescription") -> tuple[ResourceSize | None, ResourceSize | None]:
    """(numCores, numNodes) as scheduled: a `threads` job runs on a single node (reference 9), so
    without numNodes its cores come from one node, never spread over several (it would fail to start)."""
    res = desc.resources
    cores, nodes = res.num_cores, res.num_nodes
    if desc.execution.model == "threads" and (cores is None or cores.scheduler is None):
        # (cores sized by an iteration scheduler share the allocation's cores out: left as they are)
        if nodes is None:
            # numCores with numNodes counts cores per node, and no numCores at all would mean whole nodes
            return cores or ONE_CORE, ONE_NODE
        if nodes.scheduler is None and nodes.exact is None:
            return cores, ONE_NODE      # a range from 1 (the parser refused a larger minimum)
    return cores, nodes


class SizingPort(Protocol):
    """The partition's answers admission needs."""

    def never_fits(self, request: ResourceRequest) -> str | None: ...
    def totals(self) -> tuple[int, int, int]: ...  # total cores, total nodes, cores per node


@dataclass(slots=True)
class Admitted:
    """What a checked job brings to its record: its first size and its split dependencies."""

    desc: "JobDescription"
    request: ResourceRequest
    sized_per_iteration: bool
    static_deps: tuple
    per_iteration_deps: tuple[str, ...]
    never_fits: str | None          # why it can never run here: it is FAILED at once (reference 7.2)


class Admission:
    def __init__(self, registry: Registry, partition: SizingPort) -> None:
        self.registry = registry
        self.partition = partition
        self._size_cache: dict[tuple, tuple[ResourceRequest, str | None, bool]] = {}
        self._templates: dict[int, tuple["Execution", FieldTemplate | None]] = {}

    def check(self, descs: list["JobDescription"]) -> list[Admitted]:
        """The batch, checked; raise InvalidJobDescriptionError naming every problem."""
        registry = self.registry
        problems = [f"job '{d.name}': field 'name': a job with this name already exists"
                    for d in descs if d.name in registry]
        deps = BatchDeps([], [])
        if not problems:
            problems, deps = check_submission(descs, lambda n: (j.desc if (j := registry.get(n)) else None))
        sizes: list[tuple[ResourceRequest, str | None, bool]] = []
        for desc in descs:
            try:
                sizes.append(self._sized(desc))
            except ValueError as exc:
                problems.append(f"job '{desc.name}': field 'resources': {exc}")
        if problems:
            raise InvalidJobDescriptionError(problems)
        admitted = [Admitted(desc, req, per_iteration, static, templated, reason)
                    for desc, (req, reason, per_iteration), static, templated
                    in zip(descs, sizes, deps.static, deps.templated)]
        return admitted

    def record(self, job: Admitted, rcnt: int, when: datetime, ts: float, base: dict[str, Any]) -> JobRecord:
        """The registered record of a checked job, QUEUED."""
        desc = job.desc
        rec = JobRecord(desc, self.registry.next_seq(), rcnt, when, IterationRecord(JobState.QUEUED, ts))
        rec.static_deps = job.static_deps
        rec.per_iteration_deps = job.per_iteration_deps
        template = rec.exec_template = self._template(desc.execution)
        if template is not None:
            rec.base_vars = dict(base, jname=desc.name)
        rec.request = job.request
        rec.sized_per_iteration = job.sized_per_iteration
        self.registry.jobs[rec.name] = rec
        return rec

    def request_of(self, desc: "JobDescription", position: int) -> ResourceRequest:
        """Resources of one task; iteration schedulers give each iteration its own size."""
        cores, nodes = _sizes(desc)
        total_cores, total_nodes, per_node = self.partition.totals()
        return iteration_request(cores, nodes, len(desc.iteration) if desc.iteration else 1,
                                 total_cores, total_nodes, per_node, index=position)

    def never_fits(self, desc: "JobDescription") -> str | None:
        """Why the job can never run on these resources (None: it can), without admitting it."""
        try:
            return self._sized(desc)[1]
        except ValueError as exc:
            return str(exc)

    def forget_sizes(self) -> None:
        """Whether a size can ever fit depends on the partitions there are."""
        self._size_cache.clear()

    def _sized(self, desc: "JobDescription") -> tuple[ResourceRequest, str | None, bool]:
        """(request of the first task, reason it can never fit, sized per iteration).

        Plain sizes are computed once per shape; an iteration scheduler
        sizes each iteration, so its first request is computed here.
        """
        cores, nodes = _sizes(desc)
        if (cores is not None and cores.scheduler is not None) or (nodes is not None and nodes.scheduler is not None):
            try:
                req = self.request_of(desc, 0)
            except ValueError as exc:
                if self.partition.totals()[0]:
                    if isinstance(exc, DoesNotFit):
                        return ResourceRequest(), str(exc), True     # FAILED alone, as a job too big is
                    raise
                # no partition yet (--governor, none attached): nothing to size against; every iteration is
                # sized when it is handed out, which waits for a partition (or fails: none will come)
                req = ResourceRequest()
            return req, self.partition.never_fits(req), True
        key = (cores, nodes)
        hit = self._size_cache.get(key)
        if hit is not None:
            return hit
        req = self.request_of(desc, 0)
        hit = self._size_cache[key] = (req, self.partition.never_fits(req), False)
        return hit

    def _template(self, execution: "Execution") -> FieldTemplate | None:
        """`field_template` once per execution object (jobs of a request share equal ones)."""
        hit = self._templates.get(id(execution))
        if hit is not None and hit[0] is execution:
            return hit[1]
        value = field_template(execution)
        if len(self._templates) >= 4096:
            self._templates.clear()
        self._templates[id(execution)] = (execution, value)   # kept, so the id is not reused meanwhile
        return value
