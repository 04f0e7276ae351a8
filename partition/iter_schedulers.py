"""Iteration resource schedulers (reference: "Iteration resources schedulers").

An iterative job may give ``numCores`` and/or ``numNodes`` a ``scheduler``
(``maximum-iters`` or ``split-into``) instead of a fixed size; each iteration
then gets an exact size computed from the number of iterations and the
resources available. The numbers are those of QCG-PilotJob 0.14:

* the cores scheduler works on the cores tasks can get (``total_cores``
  less a core reserved by ``--system-core`` and the cores of lost nodes) and
  the nodes scheduler on ``total_nodes`` (also when both ``numCores`` and
  ``numNodes`` are given — the cores figure is then a per-node count, as in
  the original);
* ``maximum-iters`` (min = ``pmin``, default 1; ``max`` not allowed):
  if ``iterations * pmin <= avail`` one round: ``avail`` split over all
  iterations as evenly as possible, the later iterations getting the one
  extra unit (``floor(rest / iterations_left)`` in turn). Otherwise
  ``rounds = ceil(iterations / floor(avail / pmin))``; the iterations are
  split over the rounds as evenly as possible, the earlier rounds getting the
  extra iteration (``ceil(left / rounds_left)``), and within each round
  ``avail`` is split over its iterations as in a single round;
* ``split-into`` (param ``parts``, default = iterations; ``max`` not
  allowed): every iteration gets ``floor(avail / parts)``.

So sizes can differ between iterations: ``index`` is the 0-based position of
the iteration in the job's iteration range (``iteration - start``). Sizes are
computed in O(1) per iteration (closed form of the original's generator).

Differences from the original (all turn a silent hang or crash into an
error): unknown scheduler names, ``exact`` combined with a scheduler,
``parts`` < 1 raise ValueError (the submit is refused); a ``min`` larger
than the available resources (the original divides by zero), ``split-into``
giving less than ``min`` (the original ignores ``min``) and a per-node core
count larger than ``cores_per_node`` raise its subclass DoesNotFit (the job
FAILS, the rest of the submit runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qcg.pilotjob.partition.task import ResourceRequest

if TYPE_CHECKING:
    from qcg.pilotjob.api.jobdesc import ResourceSize

__all__ = ["iteration_request", "maximum_iters_size", "split_into_size", "SCHEDULERS", "DoesNotFit"]

MAXIMUM_ITERS = "maximum-iters"
SPLIT_INTO = "split-into"
SCHEDULERS = (MAXIMUM_ITERS, SPLIT_INTO)


class DoesNotFit(ValueError):
    """A valid scheduler whose size cannot be met by these resources: the job FAILS alone (reference 7.2),
    as a job too big for them does; the other errors are mistakes in the description and refuse it."""


@dataclass(frozen=True, slots=True)
class _Exact:
    exact: int | None
    min: int | None = None
    max: int | None = None


def _even_share(total: int, parts: int, pos: int, extra_first: bool) -> int:
    """Share of part ``pos`` when ``total`` is split into ``parts`` near-equal parts."""
    q, r = divmod(total, parts)
    if extra_first:
        return q + 1 if pos < r else q
    return q + 1 if pos >= parts - r else q


def maximum_iters_size(iterations: int, avail: int, pmin: int, index: int) -> int:
    """Size of iteration ``index`` (0-based) under ``maximum-iters``."""
    if iterations < 1:
        raise ValueError("maximum-iters: the job has no iterations")
    if pmin < 1:
        raise ValueError(f"maximum-iters: minimum must be at least 1, got {pmin}")
    if pmin > avail:
        raise DoesNotFit(f"maximum-iters: an iteration needs at least {pmin} but only {avail} are available")
    if not 0 <= index < iterations:
        raise ValueError(f"iteration index {index} outside 0..{iterations - 1}")
    if iterations * pmin <= avail:
        return _even_share(avail, iterations, index, extra_first=False)
    per_round = avail // pmin
    rounds = -(-iterations // per_round)
    # iterations per round: the first (iterations % rounds) rounds have one more
    q, r = divmod(iterations, rounds)
    big = r * (q + 1)                   # iterations held by the bigger rounds
    if index < big:
        in_round, pos = q + 1, index % (q + 1)
    else:
        in_round, pos = q, (index - big) % q
    return _even_share(avail, in_round, pos, extra_first=False)


def split_into_size(iterations: int, avail: int, parts: int | None) -> int:
    """Size of every iteration under ``split-into``."""
    if parts is None:
        parts = iterations
    if parts < 1:
        raise ValueError(f"split-into: 'parts' must be at least 1, got {parts}")
    size = avail // parts
    if size < 1:
        raise DoesNotFit(f"split-into: {avail} split into {parts} parts gives less than 1 per part")
    return size


def _parts_param(params: dict[str, Any] | None) -> int | None:
    if not params or "parts" not in params or params["parts"] is None:
        return None
    value = params["parts"]
    if isinstance(value, bool):
        raise ValueError(f"split-into: 'parts' must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"split-into: 'parts' must be an integer, got {value!r}") from None


def _resolve(size: "ResourceSize", what: str, iterations: int, avail: int, index: int) -> _Exact:
    sched = size.scheduler
    name = str(getattr(sched, "name", "") or "").lower()
    params = getattr(sched, "params", None) or {}
    if name not in SCHEDULERS:
        raise ValueError(f"{what}: unknown iteration scheduler {getattr(sched, 'name', None)!r} "
                         f"(known: {', '.join(SCHEDULERS)})")
    if size.exact is not None:
        raise ValueError(f"{what}: 'exact' cannot be combined with the {name} scheduler")
    if size.max is not None:
        raise ValueError(f"{what}: 'max' is not allowed with the {name} scheduler")
    pmin = 1 if size.min is None else size.min
    if name == MAXIMUM_ITERS:
        try:
            return _Exact(maximum_iters_size(iterations, avail, pmin, index))
        except ValueError as exc:
            raise type(exc)(f"{what}: {exc}") from None
    try:
        value = split_into_size(iterations, avail, _parts_param(params))
    except ValueError as exc:
        raise type(exc)(f"{what}: {exc}") from None
    if value < pmin:
        raise DoesNotFit(f"{what}: split-into gives {value} per iteration, less than the minimum {pmin}")
    return _Exact(value)


def iteration_request(cores: "ResourceSize | None", nodes: "ResourceSize | None", iterations: int,
                      total_cores: int, total_nodes: int, cores_per_node: int,
                      index: int = 0) -> ResourceRequest:
    """The ResourceRequest of iteration ``index`` (0-based) of an iterative job.

    ``cores``/``nodes`` are the job's ``numCores``/``numNodes``; a size
    without a scheduler is used as it is. ``cores_per_node`` is the largest
    node's core count, used only to reject a scheduled per-node core count
    (``numCores`` with a scheduler plus ``numNodes``) that can never fit.
    """
    if iterations is None or iterations < 1:
        raise ValueError(f"iteration resources: number of iterations must be at least 1, got {iterations!r}")
    cores_scheduled = cores is not None and getattr(cores, "scheduler", None) is not None
    if cores_scheduled:
        cores = _resolve(cores, "numCores", iterations, total_cores, index)
    if nodes is not None and getattr(nodes, "scheduler", None) is not None:
        nodes = _resolve(nodes, "numNodes", iterations, total_nodes, index)
    req = ResourceRequest.from_sizes(cores, nodes)
    if cores_scheduled and nodes is not None and cores_per_node and req.cores_min > cores_per_node:
        raise DoesNotFit(f"numCores: {req.cores_min} cores per node requested but nodes have at most "
                         f"{cores_per_node}")
    return req
