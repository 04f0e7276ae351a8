"""How job validation reports its problems: every problem of a job, each naming the field and the reason.

Shared by `jobparse` (the job description), `execution_parse` and
`resources_parse` (its `execution` and `resources` elements); see `jobparse`
for the message format.
"""

from __future__ import annotations

from qcg.pilotjob.api.jobdesc import type_name
from qcg.pilotjob.api.protocol import unencodable


LARGEST_INT = 2 ** 53 - 1
"""The largest integer a job description may hold (core and node counts, iteration bounds): the largest
every JSON reader keeps exact. Python itself has no limit, so a bigger number used to reach `range` and
the journal's msgpack and fail there (OverflowError) instead of here, with a message."""


def int_in_range(value: int, path: str, p: "Problems", low: int = -LARGEST_INT) -> int | None:
    """`value`, or None with a problem added when it is outside `low`..LARGEST_INT."""
    if low <= value <= LARGEST_INT:
        return value
    p.add(path, f"must be between {low} and {LARGEST_INT}, got {value if abs(value) < 10 ** 30 else 'more'}")
    return None


def key_repr(key: object) -> str:
    return key if isinstance(key, str) else repr(key)


class Problems:
    """Collects the problems of one job under a label ("job 'x'" or "job #3")."""

    __slots__ = ("label", "items")

    def __init__(self, label: str) -> None:
        self.label = label
        self.items: list[str] = []

    def add(self, path: str, reason: str) -> None:
        self.items.append(f"{self.label}: field '{path}': {reason}")

    def unknown_keys(self, data: dict, allowed: frozenset, prefix: str) -> None:
        for key in data:
            if key not in allowed:
                self.add(f"{prefix}{key_repr(key)}",
                         f"unknown key (allowed: {', '.join(sorted(allowed))})")


def str_list(value: object, path: str, p: Problems, convert_numbers: bool,
             allow_single: bool = False) -> tuple[str, ...] | None:
    """A list of strings at `path` as a tuple, or None with its problems added (numbers become strings
    where the original accepts them: `convert_numbers`)."""
    cls = value.__class__
    if cls is list or cls is tuple:
        for item in value:  # type: ignore[attr-defined]
            if item.__class__ is not str:
                break
        else:
            return tuple(value)  # type: ignore[arg-type]  # the common case: all strings
    elif allow_single and isinstance(value, str):
        return (value,)
    elif not isinstance(value, list | tuple):
        p.add(path, f"must be a list of strings, got {type_name(value)}")
        return None
    ok = True
    out = []
    for i, item in enumerate(value):  # type: ignore[arg-type]
        if isinstance(item, str):
            out.append(item)
        elif convert_numbers and isinstance(item, (int, float)) and not isinstance(item, bool):
            out.append(str(item))  # as the original does: str(arg)
        else:
            what = "a string or a number" if convert_numbers else "a string"
            p.add(f"{path}[{i}]", f"must be {what}, got {type_name(item)}")
            ok = False
    return tuple(out) if ok else None


def unencodable_jobs(jobs: list) -> list[str]:
    """The problems of job descriptions that cannot be packed (protocol.unencodable), named as a parse
    names them; the client's `submit` and the journal ask when packing has failed."""
    problems: list[str] = []
    for i, job in enumerate(jobs, 1):
        name = job.get("name") if isinstance(job, dict) else None
        p = Problems(f"job '{name}'" if isinstance(name, str) else f"job #{i}")
        for path, reason in unencodable(job):
            p.add(path, reason)
        problems += p.items
    return problems or ["the jobs cannot be packed (msgpack)"]
