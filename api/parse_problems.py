"""How job validation reports its problems: every problem of a job, each naming the field and the reason.

Shared by `jobparse` (the job description) and `resources_parse` (its
`resources` element); see `jobparse` for the message format.
"""

from __future__ import annotations


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
