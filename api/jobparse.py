"""Validating a submitted job description (reference 10.3.1 submit) into `jobdesc` objects.

`parse_job` / `parse_jobs` turn the reference's "standard" JSON job
description into the immutable objects of `qcg.pilotjob.api.jobdesc`; the
`execution` element is checked in `execution_parse`, the `resources`
element in `resources_parse`.

Validation collects every problem of every job instead of stopping at the
first one; each problem names the job, the dotted field path and the reason:

    job 'sim': field 'execution.args': must be a list of strings, got int
    job #3: field 'name': is required

(`#N` is the 1-based position of the job when its name is unusable).

Choices where the original implementation is lax or inconsistent:

* Unknown keys at the top level and inside `execution`, `resources`,
  `numCores`/`numNodes`, `iteration` and `dependencies` are rejected: the
  original rejects them too (it passes those dicts as keyword arguments).
  `model_opts` and scheduler `params`, which the original accepts blindly,
  are checked as well so that a typo does not silently lose an option.
* JSON `null` for an optional field means "not given" (the original's own
  serialisation writes `"exec": null`, `"script": null`, ...).
* `resources` without `numCores` and `numNodes` (e.g. only `wt`) means one
  core, like a missing `resources` element (the original refused it).
* Counts must be positive integers (the original accepted 0 and floats).
* An unknown iteration scheduler name is an error (the original silently
  used `maximum-iters`). A bare string is accepted as the scheduler name,
  because the original client API (`Jobs.add`) produces that form.
* Placeholders `${...}` are kept verbatim in every string except `name`,
  where they are refused (reference: the job name "cannot contain any
  variable or special character").
"""

from __future__ import annotations

import re
from typing import Any, Callable

import msgpack

from qcg.pilotjob.api.errors import InvalidJobDescriptionError
from qcg.pilotjob.api.execution_parse import parse_execution
from qcg.pilotjob.api.jobdesc import (
    Iteration,
    JobDescription,
    new_iteration,
    new_job,
    type_name,
)
from qcg.pilotjob.api.parse_problems import Problems, int_in_range, str_list
from qcg.pilotjob.api.resources_parse import parse_resources

__all__ = ["parse_job", "parse_jobs"]

# Characters the original refuses in a job name (after its variable
# substitution) plus ':' which addresses iterations ("name:N").
_NAME_FORBIDDEN = frozenset("$:{}()'\"")

_TOP_KEYS = frozenset({"name", "execution", "resources", "iteration", "dependencies", "attributes"})
_ITER_KEYS = frozenset({"start", "stop", "values"})
_DEPS_KEYS = frozenset({"after"})

_NAME_BAD = re.compile(r"[\s$:{}()'\"]")


def _name_problem(name: object) -> str | None:
    """Why `name` cannot be a job name, or None if it can."""
    if not isinstance(name, str):
        return "is required" if name is None else f"must be a string, got {type_name(name)}"
    if name and _NAME_BAD.search(name) is None and name.isprintable():
        return None
    if not name:
        return "must not be empty"
    if "${" in name:
        return "must not contain placeholders (${...})"
    shown = [repr(c) for c in sorted(_NAME_FORBIDDEN.intersection(name))]
    if not name.isprintable() or any(c.isspace() for c in name):
        shown.append("whitespace or control characters")
    return f"must not contain {', '.join(shown)}"


def _int(value: object, path: str, p: Problems) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return int_in_range(value, path, p)
    p.add(path, f"must be an integer, got {type_name(value)}")
    return None


def _parse_iteration(data: object, p: Problems) -> Iteration | None:
    if not isinstance(data, dict):
        p.add("iteration", f"must be a dict with 'stop' (and optional 'start') or 'values', "
                           f"got {type_name(data)}")
        return None
    p.unknown_keys(data, _ITER_KEYS, "iteration.")
    raw_start, raw_stop, raw_values = data.get("start"), data.get("stop"), data.get("values")
    if raw_values is not None:
        if raw_stop is not None:
            p.add("iteration", "'stop' and 'values' are mutually exclusive")
            return None
        if raw_start is not None and (raw_start.__class__ is not int or raw_start != 0):
            p.add("iteration.start", "not allowed with 'values'")
            return None
        values = str_list(raw_values, "iteration.values", p, convert_numbers=True)
        if values is None:
            return None
        if not values:
            p.add("iteration.values", "must not be empty")
            return None
        return new_iteration(0, len(values), values)
    if raw_stop is None:
        p.add("iteration", "one of 'stop' or 'values' is required")
        return None
    stop = _int(raw_stop, "iteration.stop", p)
    start = 0 if raw_start is None else _int(raw_start, "iteration.start", p)
    if start is None or stop is None:
        return None
    if start >= stop:
        p.add("iteration", f"'start' ({start}) must be less than 'stop' ({stop})")
        return None
    return new_iteration(start, stop, None)


def _parse_after(data: object, p: Problems) -> tuple[str, ...] | None:
    if not isinstance(data, dict):
        p.add("dependencies", f"must be a dict with 'after', got {type_name(data)}")
        return None
    p.unknown_keys(data, _DEPS_KEYS, "dependencies.")
    raw = data.get("after")
    if raw is None:
        return ()
    after = str_list(raw, "dependencies.after", p, convert_numbers=False)
    if after is None:
        return None
    for i, name in enumerate(after):
        if not name:
            p.add(f"dependencies.after[{i}]", "must not be empty")
            return None
    return after


class _SharedParts:
    """Equal `execution` / `resources` maps of one request parse to one (frozen) object.

    A sweep submitted as thousands of separate jobs usually repeats the same
    execution and resources: sharing them saves the parsing, the memory of a
    copy per job, and lets the report and the partition wire encode each once.
    The key is the map's msgpack encoding (equal maps in the same key order);
    only maps that parsed without a problem are kept.
    """

    LIMIT = 4096

    __slots__ = ("_seen", "_pack")

    def __init__(self) -> None:
        self._seen: dict[bytes, Any] = {}
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def get(self, data: object, parse: Callable[[object, "Problems"], Any], p: "Problems") -> Any:
        if data.__class__ is not dict:
            return parse(data, p)
        try:
            key = self._pack(data) + (b"e" if parse is parse_execution else b"r")
        except Exception:  # not msgpack-encodable: parsing reports what is wrong with it
            return parse(data, p)
        hit = self._seen.get(key)
        if hit is not None:
            return hit
        start = len(p.items)
        value = parse(data, p)
        if value is not None and len(p.items) == start:
            if len(self._seen) >= self.LIMIT:
                self._seen.clear()
            self._seen[key] = value
        return value


# `attributes` is the one free-form part of a job: it is journaled and sent on with msgpack, whose packer
# gives up past ~1000 levels, and walked by recursive code. How deep json.loads goes before its own
# RecursionError depends on the interpreter (about 1000 on 3.11, 1500 on 3.12, 10 000 on 3.13): the bound
# is ours, the same on every version.
MAX_ATTRIBUTE_NESTING = 100


def _parse(data: object, position: int, problems: list[str],
           shared: _SharedParts | None = None) -> JobDescription | None:
    """Parse one job; append its problems to `problems`; return None if there were any."""
    if not isinstance(data, dict):
        problems.append(f"job #{position}: must be a dict (JSON object), got {type_name(data)}")
        return None
    name = data.get("name")
    why = _name_problem(name)
    p = Problems(f"job #{position}" if why else f"job '{name}'")
    if why:
        p.add("name", why)
    if not _TOP_KEYS.issuperset(data):
        p.unknown_keys(data, _TOP_KEYS, "")

    if shared is None:
        execution = parse_execution(data.get("execution"), p)
        resources = parse_resources(data.get("resources"), p)
    else:
        execution = shared.get(data.get("execution"), parse_execution, p)
        resources = shared.get(data.get("resources"), parse_resources, p)
    raw = data.get("iteration")
    iteration = None if raw is None else _parse_iteration(raw, p)
    raw = data.get("dependencies")
    after: tuple[str, ...] | None = () if raw is None else _parse_after(raw, p)
    if after and not why and name in after:
        p.add("dependencies.after", "a job cannot depend on itself")
    nodes = getattr(resources, "num_nodes", None)
    if getattr(execution, "model", None) == "threads" and nodes is not None and nodes.scheduler is None \
            and nodes.minimum > 1:
        p.add("resources.numNodes", f"model 'threads' runs on a single node, but at least {nodes.minimum} are "
                                    f"asked for")
    attributes = data.get("attributes")
    if attributes is None:
        attributes = {}
    elif not isinstance(attributes, dict):
        p.add("attributes", f"must be a dict, got {type_name(attributes)}")
    elif _deeper_than(attributes, MAX_ATTRIBUTE_NESTING):
        p.add("attributes", f"nested deeper than {MAX_ATTRIBUTE_NESTING} levels")
    else:
        attributes = dict(attributes)

    if p.items:
        problems.extend(p.items)
        return None
    return new_job(name, execution, resources, iteration, after, attributes)


def _deeper_than(value: object, levels: int) -> bool:
    """Whether lists/dicts inside `value` go more than `levels` deep (iterative: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, (list, tuple)):
            continue
        if depth > levels:
            return True
        stack.extend((sub, depth + 1) for sub in item)
    return False


def parse_job(data: object) -> JobDescription:
    """Validate one standard job description; raise InvalidJobDescriptionError with all problems."""
    problems: list[str] = []
    job = _parse(data, 1, problems)
    if job is None:
        raise InvalidJobDescriptionError(problems)
    return job


def parse_jobs(data: object) -> list[JobDescription]:
    """Validate a list of job descriptions (a submit request's `jobs`).

    All problems of all jobs, and names used twice within the list, are
    reported together in one InvalidJobDescriptionError; on any problem no
    job is returned (a submit is all or nothing, as in the original).
    """
    if not isinstance(data, list | tuple):
        raise InvalidJobDescriptionError(
            [f"jobs: must be a list of job descriptions, got {type_name(data)}"])
    if not data:
        raise InvalidJobDescriptionError(["jobs: the list of jobs is empty"])
    problems: list[str] = []
    jobs: list[JobDescription] = []
    first_position: dict[str, int] = {}
    shared = _SharedParts() if len(data) > 1 else None
    for position, item in enumerate(data, 1):
        job = _parse(item, position, problems, shared)
        if job is not None:
            name = job.name
        elif isinstance(item, dict) and isinstance(item.get("name"), str) \
                and _name_problem(item["name"]) is None:
            name = item["name"]  # an otherwise broken job still claims its name
        else:
            continue
        first = first_position.setdefault(name, position)
        if first != position:
            problems.append(f"job '{name}': field 'name': duplicate name "
                            f"(also job #{first} of this request)")
        if job is not None:
            jobs.append(job)
    if problems:
        raise InvalidJobDescriptionError(problems)
    return jobs
