"""`${name}` placeholders of job descriptions.

Substitution works on one string at a time, never on serialised JSON, so
quotes, backslashes and `$$` in values or in the text survive unchanged
(the original ran `string.Template` over the JSON text and corrupted them).
Unknown names are left as they are: a later stage may know them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

PLACEHOLDER = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")


def has_placeholders(text: str) -> bool:
    return "${" in text and PLACEHOLDER.search(text) is not None


def substitute(text: str, values: Mapping[str, Any]) -> str:
    """Replace every known `${name}` in `text` with `str(values[name])`."""
    if "${" not in text:
        return text

    def repl(m: re.Match[str]) -> str:
        key = m.group(1)
        return str(values[key]) if key in values else m.group(0)

    return PLACEHOLDER.sub(repl, text)


def substitute_tree(obj: Any, values: Mapping[str, Any]) -> Any:
    """Apply `substitute` to every string inside nested dicts, lists and tuples.

    Dictionary keys are substituted too (environment variable names may hold
    placeholders); anything that is not a string is returned unchanged.
    """
    if isinstance(obj, str):
        return substitute(obj, values)
    if isinstance(obj, dict):
        return {substitute(k, values) if isinstance(k, str) else k: substitute_tree(v, values)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(substitute_tree(v, values) for v in obj)
    return obj


# Known only where the task is launched (its allocation and the partition's working dir).
RUNTIME_PLACEHOLDERS = frozenset({"root_wd", "ncores", "nnodes", "nlist"})


class FieldTemplate(NamedTuple):
    """Where the placeholders of a frozen dataclass are: worked out once, used for every task.

    A sweep of 100 000 iterations substitutes its execution 100 000 times;
    looking only at the fields that hold placeholders, and computing only the
    values that are referenced (a `uniq` is a fresh UUID), keeps that cheap.
    """

    fields: tuple[str, ...]       # fields holding at least one `${name}`
    names: frozenset[str]         # every name referenced, in values and dictionary keys
    # a string also holds a `${` that is no placeholder yet ("${n${itval}}"): a value may complete it
    partial: bool = False


def placeholder_names(obj: Any) -> set[str]:
    """The `${name}` names inside a string or nested dicts, lists and tuples (keys included)."""
    found: set[str] = set()
    _collect(obj, found)
    return found


def _collect(obj: Any, found: set[str]) -> bool:
    """Add the names in `obj` to `found`; True if a string with a placeholder has another, open `${`."""
    if isinstance(obj, str):
        if "${" not in obj:
            return False
        names = PLACEHOLDER.findall(obj)
        found.update(names)
        return bool(names) and obj.count("${") > len(names)
    partial = False
    if isinstance(obj, dict):
        for k, v in obj.items():
            partial = _collect(k, found) | _collect(v, found) | partial
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            partial = _collect(v, found) | partial
    return partial


def field_template(obj: Any) -> FieldTemplate | None:
    """The fields of the dataclass `obj` that hold placeholders, or None when none does."""
    fields: list[str] = []
    names: set[str] = set()
    partial = False
    for f in _field_names(type(obj)):
        value = getattr(obj, f)
        if not value or isinstance(value, (int, float, bool)) or (isinstance(value, str) and "${" not in value):
            continue          # None, empty, a number or a plain string: nothing to substitute
        found: set[str] = set()
        partial = _collect(value, found) or partial
        if found:
            fields.append(f)
            names |= found
    return FieldTemplate(tuple(fields), frozenset(names), partial) if fields else None


def substitute_fields(obj: Any, values: Mapping[str, Any], template: FieldTemplate | None = None) -> Any:
    """A copy of the frozen dataclass `obj` with placeholders substituted in every field.

    With `template` (from `field_template(obj)`), only its fields are looked
    at. Returns `obj` itself when nothing changes, so callers can share the
    immutable original between many tasks.
    """
    changes: dict[str, Any] = {}
    for name in template.fields if template is not None else _field_names(type(obj)):
        value = getattr(obj, name)
        if value is None or isinstance(value, (int, float, bool)):
            continue
        if isinstance(value, str):
            if "${" not in value:
                continue
            new = substitute(value, values)
        else:
            new = substitute_tree(value, values)
        if new != value:
            changes[name] = new
    return _replaced(obj, changes) if changes else obj


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _replaced(obj: Any, changes: dict[str, Any]) -> Any:
    """`dataclasses.replace` for values of the same types: a field-by-field copy, no `__init__` run.

    `replace` calls `fields()` and the generated `__init__` on every use;
    this copy sets each field directly (frozen classes included).
    """
    new = object.__new__(type(obj))
    for name in _field_names(type(obj)):
        object.__setattr__(new, name, changes[name] if name in changes else getattr(obj, name))
    return new
