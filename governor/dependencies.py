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


@dataclass(slots=True)
class BatchDeps:
    """The `after` of each job of a batch, parsed; by position in the batch.

    Two lists rather than an object per job: the static tuples are kept by
    the jobs anyway, and the templated ones are almost always the shared `()`.
    """

    static: list[tuple[Target, ...]]      # the same for every iteration
    templated: list[tuple[str, ...]]      # hold ${it}: resolved per iteration


def resolve_template(template: str, iteration: int, values: dict[str, str] | None = None) -> Target:
    """The target of a per-iteration dependency for one iteration (`${it}` is the index)."""
    return split_task_name(substitute(template, values or {"it": iteration}))


def check_submission(descs: list["JobDescription"], known: Callable[[str], "JobDescription | None"]
                     ) -> tuple[list[str], BatchDeps]:
    """Problems with the dependencies of a batch (unknown jobs or iterations, cycles), and each job's split.

    `known(name)` returns the description of an already registered job.
    A batch may depend on itself in any order; a cycle anywhere in the
    batch rejects the whole batch, as does any unknown target. The split
    `after` of each job comes back too, so it is parsed once per submit.
    """
    position = {d.name: i for i, d in enumerate(descs)}
    problems: list[str] = []
    deps = BatchDeps([()] * len(descs), [()] * len(descs))
    forward = False         # an edge to the same or a later job of the batch: only then can there be a cycle

    for pos, desc in enumerate(descs):
        if not desc.after:
            continue
        static: list[Target] = []
        templated: list[str] = []
        for dep in desc.after:
            try:
                if has_placeholders(dep):
                    if desc.iteration is None:
                        problems.append(f"job '{desc.name}': field 'dependencies.after': '{dep}' uses "
                                        f"placeholders but the job has no iterations")
                        continue
                    idx = desc.iteration.indices()
                    samples = [resolve_template(dep, i, desc.iteration.substitutions(i)) for i in {idx[0], idx[-1]}]
                    templated.append(dep)
                else:
                    samples = [split_task_name(dep)]
                    static.append(samples[0])
            except ValueError as exc:
                problems.append(f"job '{desc.name}': field 'dependencies.after': {exc}")
                continue
            for name, it in samples:
                at = position.get(name)
                target = descs[at] if at is not None else known(name)
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
                if at is not None and at >= pos:
                    forward = True
        deps.static[pos] = tuple(static)
        if templated:
            deps.templated[pos] = tuple(templated)
    if not problems and forward:
        cycle = _find_cycle(list(position), _batch_edges(descs, deps, position))
        if cycle:
            problems.append("dependency cycle: " + " -> ".join(f"'{n}'" for n in cycle))
    return problems, deps


def _batch_edges(descs: list["JobDescription"], deps: BatchDeps, position: dict[str, int]) -> dict[str, set[str]]:
    """job -> the jobs of the same batch it depends on (only built when a cycle is possible)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for desc, static, templated in zip(descs, deps.static, deps.templated):
        targets = [name for name, _ in static]
        if templated:
            assert desc.iteration is not None       # checked above
            idx = desc.iteration.indices()
            targets += [resolve_template(dep, i, desc.iteration.substitutions(i))[0]
                        for dep in templated for i in {idx[0], idx[-1]}]
        edges[desc.name].update(name for name in targets if name in position)
    return edges


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
    """target -> dependants waiting for it to finish.

    Also which iterations of a job are waited for: a job that ends as a
    whole (omitted, canceled while queued) ends the iterations that never
    ran, and no end of their own will come for those.
    """

    def __init__(self) -> None:
        self._waiters: dict[Target, list[Waiter]] = {}
        self._iterations: dict[str, set[int]] = {}   # job name -> its iterations in `_waiters`

    def add(self, target: Target, waiter: Waiter) -> None:
        lst = self._waiters.get(target)
        if lst is None:
            self._waiters[target] = [waiter]
            name, it = target
            if it is not None:
                self._iterations.setdefault(name, set()).add(it)
        else:
            lst.append(waiter)

    def pop(self, target: Target) -> list[Waiter] | tuple[()]:
        lst = self._waiters.pop(target, ())
        if lst and target[1] is not None:
            its = self._iterations[target[0]]
            its.discard(target[1])
            if not its:
                del self._iterations[target[0]]
        return lst

    def iterations(self, name: str) -> list[int]:
        """The iterations of job `name` somebody waits for, in order."""
        its = self._iterations.get(name)
        return sorted(its) if its else []

    def __len__(self) -> int:
        return sum(len(v) for v in self._waiters.values())
