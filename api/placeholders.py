"""`${name}` placeholders of job descriptions.

Substitution works on one string at a time, never on serialised JSON, so
quotes, backslashes and `$$` in values or in the text survive unchanged
(the original ran `string.Template` over the JSON text and corrupted them).
Unknown names are left as they are: a later stage may know them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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


def tree_has_placeholders(obj: Any) -> bool:
    if isinstance(obj, str):
        return has_placeholders(obj)
    if isinstance(obj, dict):
        return any(tree_has_placeholders(k) or tree_has_placeholders(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return any(tree_has_placeholders(v) for v in obj)
    return False


def substitute_fields(obj: Any, values: Mapping[str, Any]) -> Any:
    """A copy of the frozen dataclass `obj` with placeholders substituted in every field.

    Returns `obj` itself when nothing changes, so callers can share the
    immutable original between many tasks.
    """
    import dataclasses

    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or isinstance(value, (int, float, bool)):
            continue
        if isinstance(value, str):
            if "${" not in value:
                continue
            new = substitute(value, values)
        else:
            new = substitute_tree(value, values)
        if new != value:
            changes[f.name] = new
    return dataclasses.replace(obj, **changes) if changes else obj
