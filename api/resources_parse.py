"""Validating the `resources` element of a job description (reference 10.3.1): sizes, walltime, schedulers.

Part of `jobparse` (see there for the rules where the original is lax):
counts must be positive integers, an unknown iteration scheduler is an
error, a bare string names a scheduler. The most common sizes and resources
are shared immutable objects, so 100 000 jobs of one shape hold one.
"""

from __future__ import annotations

from typing import Any

from qcg.pilotjob.api.jobdesc import (
    DEFAULT_RESOURCES,
    SCHEDULERS,
    IterSchedulerSpec,
    Resources,
    ResourceSize,
    new_resources,
    new_size,
    parse_walltime,
    type_name,
)
from qcg.pilotjob.api.parse_problems import LARGEST_INT, Problems, int_in_range, key_repr

_SCHEDULER_ALIASES = {
    "maximum-iters": "maximum-iters",
    "maximumiters": "maximum-iters",
    "maximum_iters": "maximum-iters",
    "split-into": "split-into",
    "splitinto": "split-into",
    "split_into": "split-into",
}
# parameters each iteration scheduler understands
_SCHEDULER_PARAMS = {"maximum-iters": frozenset(), "split-into": frozenset({"parts"})}

# consumable resources per node known by the original (`nodeCrs`)
_NODE_CRS = ("GPU", "MEM")

_RES_KEYS = frozenset({"numCores", "numNodes", "wt", "nodeCrs"})
_SIZE_KEYS = frozenset({"exact", "min", "max", "scheduler"})
_SCHED_KEYS = frozenset({"name", "params"})


def _positive_int(value: object, path: str, p: Problems) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 1:
            return int_in_range(value, path, p, low=1)
        p.add(path, f"must be a positive integer, got {value}")
    else:
        p.add(path, f"must be a positive integer, got {type_name(value)}")
    return None


def _parse_scheduler(data: object, path: str, p: Problems) -> IterSchedulerSpec | None:
    if isinstance(data, str):
        name, params = data, None
    elif isinstance(data, dict):
        p.unknown_keys(data, _SCHED_KEYS, path + ".")
        name, params = data.get("name"), data.get("params")
    else:
        p.add(path, f"must be a dict with 'name' and optional 'params', got {type_name(data)}")
        return None
    if not isinstance(name, str):
        p.add(f"{path}.name" if isinstance(data, dict) else path,
              "is required" if name is None else f"must be a string, got {type_name(name)}")
        return None
    canonical = _SCHEDULER_ALIASES.get(name.strip().lower())
    if canonical is None:
        p.add(f"{path}.name" if isinstance(data, dict) else path,
              f"unknown scheduler {name!r} (known: {', '.join(SCHEDULERS)})")
        return None
    out: dict = {}
    if params is not None:
        if not isinstance(params, dict):
            p.add(f"{path}.params", f"must be a dict, got {type_name(params)}")
            return None
        allowed = _SCHEDULER_PARAMS[canonical]
        for key, value in params.items():
            if key not in allowed:
                p.add(f"{path}.params.{key_repr(key)}",
                      f"unknown parameter of {canonical}"
                      + (f" (allowed: {', '.join(sorted(allowed))})" if allowed else " (it takes none)"))
            elif key == "parts":
                # the original converts with int(), so "4" is accepted as well
                if isinstance(value, str) and value.strip().isdigit():
                    value = int(value)
                parts = _positive_int(value, f"{path}.params.parts", p)
                if parts is not None:
                    out["parts"] = parts
    return IterSchedulerSpec(canonical, out)


# Shared immutable objects for the most common sizes and resources (frozen, so
# sharing is safe); bounded so that hostile input cannot grow them for ever.
_EXACT_SIZES: dict[int, ResourceSize] = {}
_SIMPLE_RESOURCES: dict[tuple, Resources] = {}
_WALLTIMES: dict[str, float] = {}
_CACHE_LIMIT = 4096


def _keep(cache: dict, key: object, value: Any) -> Any:
    """`value`, remembered under `key` while the cache has room (called on misses only)."""
    if len(cache) < _CACHE_LIMIT:
        cache[key] = value
    return value


def _exact_size(n: int) -> ResourceSize:
    size = _EXACT_SIZES.get(n)
    if size is None:
        size = _keep(_EXACT_SIZES, n, new_size(n, None, None, None))
    return size


def _parse_size(data: object, path: str, p: Problems) -> ResourceSize | None:
    cls = data.__class__
    if cls is dict and len(data) == 1:  # type: ignore[arg-type]
        exact = data.get("exact")  # type: ignore[union-attr]
        if exact.__class__ is int and 0 < exact <= LARGEST_INT:
            return _exact_size(exact)  # fast path: {"exact": N}
    elif cls is int:
        # shorthand of {"exact": N}, as the original accepts
        exact = _positive_int(data, path, p)
        return _exact_size(exact) if exact is not None else None
    if not isinstance(data, dict):
        p.add(path, f"must be a dict with 'exact' or 'min'/'max', got {type_name(data)}")
        return None
    start = len(p.items)
    if not _SIZE_KEYS.issuperset(data):
        p.unknown_keys(data, _SIZE_KEYS, path + ".")
    vals: dict[str, int | None] = {}
    for key in ("exact", "min", "max"):
        value = data.get(key)
        vals[key] = None if value is None else _positive_int(value, f"{path}.{key}", p)
    exact, lo, hi = vals["exact"], vals["min"], vals["max"]
    raw_sched = data.get("scheduler")
    sched = None if raw_sched is None else _parse_scheduler(raw_sched, f"{path}.scheduler", p)
    if len(p.items) != start:
        return None
    if exact is not None and (lo is not None or hi is not None):
        p.add(path, "'exact' and 'min'/'max' are mutually exclusive")
    elif exact is not None and sched is not None:
        p.add(f"{path}.scheduler", "not allowed with 'exact' (use 'min')")
    elif exact is None and lo is None and hi is None:
        p.add(path, "one of 'exact', 'min' or 'max' is required")
    elif lo is not None and hi is not None and lo > hi:
        p.add(path, f"'min' ({lo}) must not be greater than 'max' ({hi})")
    elif sched is not None and hi is not None:
        # both schedulers of the original refuse a maximum
        p.add(f"{path}.scheduler", f"{sched.name} cannot be combined with 'max'")
    elif exact is not None:
        return _exact_size(exact)
    else:
        return new_size(None, lo, hi, sched)
    return None


def _walltime(raw: object, p: Problems) -> float | None:
    if raw.__class__ is str:
        wt = _WALLTIMES.get(raw)  # type: ignore[call-overload]
        if wt is not None:
            return wt
    try:
        wt = parse_walltime(raw)
    except ValueError as exc:
        p.add("resources.wt", str(exc))
        return None
    if raw.__class__ is str:
        _keep(_WALLTIMES, raw, wt)
    return wt


def _parse_node_crs(raw: object, p: Problems) -> dict[str, int] | None:
    if not isinstance(raw, dict):
        p.add("resources.nodeCrs", f"must be a dict, got {type_name(raw)}")
        return None
    crs: dict[str, int] = {}
    for key, value in raw.items():
        cr = key.upper() if isinstance(key, str) else None
        if cr not in _NODE_CRS:
            p.add(f"resources.nodeCrs.{key_repr(key)}",
                  f"unknown consumable resource (known: {', '.join(_NODE_CRS)})")
        elif cr in crs:
            p.add(f"resources.nodeCrs.{key}", "defined twice")
        else:
            count = _positive_int(value, f"resources.nodeCrs.{key}", p)
            if count is not None:
                crs[cr] = count
    return crs or None


def parse_resources(data: object, p: Problems) -> Resources | None:
    if data is None:
        return DEFAULT_RESOURCES
    if not isinstance(data, dict):
        p.add("resources", f"must be a dict, got {type_name(data)}")
        return None
    start = len(p.items)
    cores = nodes = wt = crs = None
    for key, value in data.items():
        if value is None:
            continue
        if key == "numCores":
            cores = _parse_size(value, "resources.numCores", p)
        elif key == "numNodes":
            nodes = _parse_size(value, "resources.numNodes", p)
        elif key == "wt":
            wt = _walltime(value, p)
        elif key == "nodeCrs":
            crs = _parse_node_crs(value, p)
        else:
            p.add(f"resources.{key_repr(key)}", f"unknown key (allowed: {', '.join(sorted(_RES_KEYS))})")
    if len(p.items) != start:
        return None
    if cores is None and nodes is None:
        cores = DEFAULT_RESOURCES.num_cores
    if crs is None and (cores is None or cores.scheduler is None) \
            and (nodes is None or nodes.scheduler is None):
        key = (cores, nodes, wt)  # hashable: sizes without scheduler hold only ints
        res = _SIMPLE_RESOURCES.get(key)
        if res is None:
            res = _keep(_SIMPLE_RESOURCES, key, new_resources(cores, nodes, wt, None))
        return res
    return new_resources(cores, nodes, wt, crs)
