"""The request file of `--file-path`: a JSON list of requests, read before anything starts, then served
in order by the same handler as network requests (reference 10.2: the responses go to the log)."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import structlog

log = structlog.get_logger("service")


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


def serve_requests(requests: list[Any], handle: Callable[[Any], dict[str, Any]], stopped: Callable[[], bool]) -> None:
    """Each request answered in turn: a refusal is one `Error:` line on stderr, a served request a log line.

    `stopped` says a `finish` was served: what follows is not. After `control finishAfterAllTasksDone`
    the rest of the file is, as the original's file listener reads on (that control may come first).
    """
    from qcg.pilotjob.governor.requests import one_line     # loaded by then: it is what `handle` serves with

    for i, request in enumerate(requests, 1):
        response = handle(request)
        if response["code"] != 0:
            name = request.get("request") if isinstance(request, dict) else None
            # one line, whatever the name holds (a newline in it split it)
            shown = one_line(name) if isinstance(name, str) and name else "invalid"
            print(f"Error: request #{i} ({shown}): {one_line(str(response.get('message')))}", file=sys.stderr)
            log.error("request refused", index=i, request=name, message=response.get("message"))
        else:
            log.info("request served", index=i, request=request.get("request"), response=_brief(response))
            data = response.get("data")
            if isinstance(data, dict) and data.get("failed"):
                _print_failed_at_submit(i, data["failed"])
        if stopped():
            if i < len(requests):
                finish = isinstance(request, dict) and request.get("request") == "finish"
                why = f"come after 'finish' (#{i})" if finish else "come after the service was told to stop"
                print(f"Warning: requests #{i + 1}-#{len(requests)} {why} and were not served", file=sys.stderr)
                log.warning("requests after finish not served", first=i + 1, last=len(requests))
            break


def _print_failed_at_submit(index: int, failed: dict[str, str], shown: int = 10) -> None:
    """One line per job too big for the resources (a few, then a count): bad input a user must see."""
    for name, why in list(failed.items())[:shown]:
        print(f"Error: request #{index} (submit): job '{name}' FAILED: {why}", file=sys.stderr)
    if len(failed) > shown:
        print(f"Error: request #{index} (submit): {len(failed) - shown} more jobs FAILED as too big for the "
              f"resources (see jobs.report)", file=sys.stderr)


def _brief(response: dict[str, Any], limit: int = 2000) -> str:
    """A response as one log value; a submit of 100 000 jobs would otherwise log every name."""
    text = json.dumps(response, default=str, separators=(",", ":"))
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
