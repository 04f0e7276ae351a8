"""Dependencies between jobs: parsing, submit-time checks, and the index of waiters.

The index maps a target (job, or one iteration of a job) to whoever waits
for it, so a finished task costs O(its dependants) — never a rescan of the
queue, which made the original quadratic in dependency chains.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from qcg.pilotjob.api.placeholders import has_placeholders, substitute
from qcg.pilotjob.governor.registry import split_task_name

if TYPE_CHECKING:
    from qcg.pilotjob.api.jobdesc import JobDescription
    from qcg.pilotjob.governor.registry import JobRecord

Target = tuple[str, "int | None"]          # (job name, iteration or None for the whole job)
Waiter = tuple["JobRecord", "int | None"]  # (dependant job, its iteration or None for the whole job)


@dataclass(frozen=True, slots=True)
class SplitDeps:
    static: tuple[Target, ...]        # the same for every iteration
    templated: tuple[str, ...]        # hold ${it}: resolved per iteration


def split_dependencies(desc: "JobDescription") -> SplitDeps:
    """Separate `after` entries into fixed targets and per-iteration templates."""
    static: list[Target] = []
    templated: list[str] = []
    for dep in desc.after:
        if has_placeholders(dep):
            templated.append(dep)
        else:
            static.append(split_task_name(dep))
    return SplitDeps(tuple(static), tuple(templated))


def resolve_template(template: str, iteration: int, values: dict[str, str] | None = None) -> Target:
    """The target of a per-iteration dependency for one iteration (`${it}` is the index)."""
    return split_task_name(substitute(template, values or {"it": iteration}))


def check_submission(descs: list["JobDescription"], known: Callable[[str], "JobDescription | None"]) -> list[str]:
    """Problems with the dependencies of a batch: unknown jobs or iterations, and cycles.

    `known(name)` returns the description of an already registered job.
    A batch may depend on itself in any order; a cycle anywhere in the
    batch rejects the whole batch, as does any unknown target.
    """
    batch = {d.name: d for d in descs}
    problems: list[str] = []
    edges: dict[str, set[str]] = defaultdict(set)

    def lookup(name: str) -> "JobDescription | None":
        return batch.get(name) or known(name)

    for desc in descs:
        for dep in desc.after:
            samples: list[Target] = []
            try:
                if has_placeholders(dep):
                    if desc.iteration is None:
                        problems.append(f"job '{desc.name}': field 'dependencies.after': '{dep}' uses "
                                        f"placeholders but the job has no iterations")
                        continue
                    idx = desc.iteration.indices()
                    for i in {idx[0], idx[-1]}:
                        samples.append(resolve_template(dep, i, desc.iteration.substitutions(i)))
                else:
                    samples.append(split_task_name(dep))
            except ValueError as exc:
                problems.append(f"job '{desc.name}': field 'dependencies.after': {exc}")
                continue
            for name, it in samples:
                target = lookup(name)
                if target is None:
                    problems.append(f"job '{desc.name}': field 'dependencies.after': depends on "
                                    f"unknown job '{name}'")
                    break
                if it is not None:
                    if target.iteration is None:
                        problems.append(f"job '{desc.name}': field 'dependencies.after': '{dep}' names "
                                        f"iteration {it} of job '{name}', which has no iterations")
                        break
                    if it not in target.iteration.indices():
                        problems.append(f"job '{desc.name}': field 'dependencies.after': job '{name}' "
                                        f"has no iteration {it}")
                        break
                if name in batch:
                    edges[desc.name].add(name)
    if not problems:
        cycle = _find_cycle(list(batch), edges)
        if cycle:
            problems.append("dependency cycle: " + " -> ".join(f"'{n}'" for n in cycle))
    return problems


def _find_cycle(names: list[str], edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle among `names` (iterative DFS, O(V+E)), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(names, WHITE)
    for root in names:
        if color[root] != WHITE:
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(edges.get(root, ())))]
        path = [root]
        color[root] = GREY
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                color[node] = BLACK
                continue
            nxt = todo.pop()
            if color.get(nxt, BLACK) == GREY:
                return path[path.index(nxt):] + [nxt]
            if color.get(nxt) == WHITE:
                color[nxt] = GREY
                path.append(nxt)
                stack.append((nxt, sorted(edges.get(nxt, ()))))
    return None


class WaiterIndex:
    """target -> dependants waiting for it to finish."""

    def __init__(self) -> None:
        self._waiters: dict[Target, list[Waiter]] = {}

    def add(self, target: Target, waiter: Waiter) -> None:
        lst = self._waiters.get(target)
        if lst is None:
            self._waiters[target] = [waiter]
        else:
            lst.append(waiter)

    def pop(self, target: Target) -> list[Waiter]:
        return self._waiters.pop(target, [])

    def __len__(self) -> int:
        return sum(len(v) for v in self._waiters.values())
