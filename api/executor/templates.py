"""Templates of the Executor API and their `${...}` substitution (reference 11.2.2, 11.2.3, 23.1.1).

A template is a callable returning `(text, defaults)` (or only `text`): the
text is one job description of the `submit` request (reference 10.3.1)
written as a Python literal (as `BasicTemplate` does, with single quotes) or
as JSON, holding `$name` / `${name}` placeholders; `defaults` gives values
for some of them. `render_template` fills the placeholders — keyword
arguments over the dicts of positional arguments over the defaults — and
returns the description as a dict.

How values are inserted (the original ran `string.Template` over the text
and then `ast.literal_eval`, which broke on a value holding a quote, a
backslash or a newline):

* a placeholder *inside a quoted string* of the template gets `str(value)`
  escaped for that string literal, so any text survives unchanged;
* a placeholder *outside quotes* (e.g. `'args': ${args}`) gets the value as
  a Python literal: `repr(value)` for lists, dicts, numbers, booleans and
  None; a string is inserted as written when it is itself a literal
  (`args='["-v", "x"]'` works, as in the original), otherwise as a quoted
  string (`count=''`, `name=word`).

The result is parsed with `ast.literal_eval` — never `eval` — after JSON's
`true`/`false`/`null` outside strings have been mapped to Python's. As in the
original, a placeholder without a value raises `KeyError` (name in the
message) and `$$` stands for one `$`; a `$` not followed by a name is kept
as it is (the original raised ValueError), so shell text such as `$1` may
appear inside strings.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Callable, Mapping
from typing import Any, Dict, Tuple, Union

__all__ = ["QCGPJTemplate", "BasicTemplate", "render_template", "substitute_placeholders"]

TemplateResult = Union[str, Tuple[str, Dict[str, Any]]]

_IDENT = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_BRACED = re.compile(r"\{\s*([_a-zA-Z][_a-zA-Z0-9]*)\s*\}")
_JSON_WORDS = {"true": "True", "false": "False", "null": "None"}


class QCGPJTemplate:
    """Base of Executor API templates (reference 23.1.1): `template()` returns `(text, defaults)`."""

    @staticmethod
    def template() -> Tuple[str, Dict[str, Any]]:
        raise NotImplementedError("a template class must implement template()")


class BasicTemplate(QCGPJTemplate):
    """One job running `exec` with `args` (default `[]`), output to `stdout`/`stderr` files (reference 11.2.3).

    Placeholders: `name` and `exec` (required), `args`, `stdout`, `stderr`.
    """

    @staticmethod
    def template() -> Tuple[str, Dict[str, Any]]:
        template = """
            {
                'name': '${name}',
                'execution': {
                    'exec': '${exec}',
                    'args': ${args},
                    'stdout': '${stdout}',
                    'stderr': '${stderr}'
                }
            }
            """
        defaults = {"args": [], "stdout": "stdout", "stderr": "stderr"}
        return template, defaults


def _escape_in_string(text: str, quote: str) -> str:
    """`text` written so that, inside a string literal closed by `quote`, it reads back as `text`."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == quote[0]:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable():
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def _is_literal(text: str) -> bool:
    try:
        ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return bool(text.strip())


def _literal(value: Any) -> str:
    """`value` as Python literal source text."""
    if isinstance(value, str):
        if _is_literal(value):
            return value
        return repr(value)
    text = repr(value)
    if _is_literal(text):
        return text
    return repr(str(value))


def substitute_placeholders(text: str, values: Mapping[str, Any]) -> str:
    """Fill `$name` / `${name}` in the literal source `text` (see the module documentation)."""
    out: list[str] = []
    i, n = 0, len(text)
    quote: str | None = None  # the delimiter of the string literal we are in: ', ", ''' or """
    while i < n:
        ch = text[i]
        if ch == "$":
            if text.startswith("$$", i):
                out.append("$")
                i += 2
                continue
            match = _BRACED.match(text, i + 1) or _IDENT.match(text, i + 1)
            if match is None:
                out.append("$")
                i += 1
                continue
            name = match.group(1) if match.re is _BRACED else match.group(0)
            if name not in values:
                raise KeyError(name)
            value = values[name]
            out.append(_escape_in_string(str(value), quote) if quote else _literal(value))
            i = match.end()
            continue
        if quote is None:
            if ch in "'\"":
                quote = text[i:i + 3] if text.startswith(ch * 3, i) else ch
                out.append(quote)
                i += len(quote)
                continue
            if ch.isalpha():
                match = _IDENT.match(text, i)
                word = match.group(0) if match else ch
                out.append(_JSON_WORDS.get(word, word))
                i += len(word)
                continue
            out.append(ch)
            i += 1
            continue
        # inside a string literal
        if ch == "\\" and i + 1 < n:
            out.append(text[i:i + 2])
            i += 2
            continue
        if text.startswith(quote, i):
            out.append(quote)
            i += len(quote)
            quote = None
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def render_template(fn: Callable[..., TemplateResult], *args: Mapping[str, Any] | None,
                    **kwargs: Any) -> Any:
    """Call the template `fn`, fill its placeholders and return the parsed description.

    Values: `kwargs` over the dicts in `args` (later ones win) over the template's defaults.
    Raises KeyError for a placeholder without a value and ValueError when the
    filled text is not a literal.
    """
    result = fn()
    if isinstance(result, tuple):
        text, defaults = result[0], (result[1] if len(result) > 1 and result[1] else {})
    else:
        text, defaults = result, {}
    if not isinstance(text, str):
        raise ValueError(f"a template must return a string (and a dict of defaults), got {type(text).__name__}")
    values: dict[str, Any] = dict(defaults)
    for extra in args:
        if extra is not None:
            values.update(extra)
    values.update(kwargs)
    source = substitute_placeholders(textwrap.dedent(text), values).strip()
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"the filled template is not a job description literal: {exc}") from exc
