"""The request file of `--file-path`: a JSON list of requests, read before anything starts."""

from __future__ import annotations

import json
from typing import Any


_JSON_NAMES = {type(None): "null", bool: "true or false", int: "a number", float: "a number", str: "a string",
               dict: "an object"}


class RequestFileError(Exception):
    """The file cannot be used; the message says which file and why."""


def load_requests(path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise RequestFileError(f"request file '{path}': cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RequestFileError(f"request file '{path}': not UTF-8 text ({exc.reason})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestFileError(f"request file '{path}': malformed JSON at line {exc.lineno} column {exc.colno}: "
                               f"{exc.msg}") from None
    except RecursionError:
        raise RequestFileError(f"request file '{path}': JSON nested too deeply") from None
    except ValueError as exc:     # e.g. an integer of more digits than Python converts (4 300)
        raise RequestFileError(f"request file '{path}': malformed JSON: {str(exc).split('; use sys.')[0]}") from None
    if isinstance(data, dict) and "request" in data:
        data = [data]
    if not isinstance(data, list):
        raise RequestFileError(f"request file '{path}': must hold a JSON list of requests, "
                               f"got {_JSON_NAMES.get(type(data), type(data).__name__)}")
    return data
