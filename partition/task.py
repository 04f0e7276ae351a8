"""What a partition receives from the governor and reports back, per task.

A task is one runnable unit: a job without iterations, or one iteration of
an iterative job. The governor has already substituted the request-time
placeholders (`${it}`, `${jname}`, `${rcnt}`, ...); the partition fills in
the allocation-time ones (`${root_wd}`, `${ncores}`, `${nnodes}`, `${nlist}`)
when it knows where the task runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qcg.pilotjob.api.jobdesc import Execution, ResourceSize


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """Resolved size of one task.

    `cores` without `nodes`: that many cores anywhere. With `nodes`: that many
    nodes and `cores` cores on each of them. `None` for a maximum means "as
    many as are free"; `None` for `cores` with `nodes` means whole nodes.
    """

    cores_min: int | None = 1
    cores_max: int | None = 1
    nodes_min: int | None = None
    nodes_max: int | None = None

    @classmethod
    def from_sizes(cls, cores: "ResourceSize | None", nodes: "ResourceSize | None") -> "ResourceRequest":
        def bounds(size: "ResourceSize | None") -> tuple[int | None, int | None]:
            if size is None:
                return None, None
            if size.exact is not None:
                return size.exact, size.exact
            return (size.min if size.min is not None else 1), size.max

        cmin, cmax = bounds(cores)
        nmin, nmax = bounds(nodes)
        if cores is None and nodes is None:
            cmin, cmax = 1, 1
        return cls(cmin, cmax, nmin, nmax)


@dataclass(slots=True)
class TaskSpec:
    """One task as handed to a partition."""

    task_id: str                     # "job" or "job:iteration", unique in the run
    job_name: str
    iteration: int | None
    execution: "Execution"           # request-time placeholders already substituted
    resources: ResourceRequest
    walltime: float | None = None    # seconds
    seq: int = 0                     # submission order (FIFO key across jobs)
    templated: bool = False          # execution may still hold allocation-time placeholders
    attributes: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Allocation:
    """Cores given to one task: an ordered list of (node name, core ids)."""

    nodes: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def ncores(self) -> int:
        return sum(len(c) for _, c in self.nodes)

    @property
    def nnodes(self) -> int:
        return len(self.nodes)

    @property
    def node_names(self) -> list[str]:
        return [n for n, _ in self.nodes]

    def describe(self) -> str:
        """The reference's allocation string: `node[0:1],node2[4]`."""
        return ",".join(f"{n}[{':'.join(map(str, c))}]" for n, c in self.nodes)


@dataclass(slots=True)
class TaskStarted:
    task_id: str
    allocation: Allocation
    wd: str
    scheduled_at: float              # time.time() when resources were assigned
    started_at: float                # time.time() when the process was spawned
    pid: int | None = None
    partition: str | None = None     # which partition ran it (set by the governor's partition set)


@dataclass(slots=True)
class TaskFinished:
    """Final word of a partition on a task.

    state is "SUCCEED", "FAILED" or "CANCELED". `message` explains anything
    but a zero exit (OS error text, walltime, node lost, never fits ...).
    `requeue` asks the governor to run the task again elsewhere.
    """

    task_id: str
    state: str
    exit_code: int | None = None
    message: str | None = None
    allocation: Allocation | None = None
    wd: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    requeue: bool = False
    partition: str | None = None     # which partition had it (set by the governor's partition set)
