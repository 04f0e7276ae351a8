"""`Jobs`: a group of job descriptions to submit (reference 22.1.2, `qcg.pilotjob.api.job`).

Two ways to describe a job (reference 3.1 "Example API application"):

* `add` takes the *simple* format: flat keyword attributes (`name`, `exec`,
  `script`, `args`, `stdin`, `stdout`, `stderr`, `wd`, `modules`, `venv`,
  `model`, `model_opts`, `numCores`, `numNodes`, `wt`, `iteration`, `after`
  and, as an extension, `env`) that are converted to the standard format;
* `add_std` takes the *standard* format of the `submit` request
  (reference 10.3.1) as it is.

Both check the description with the same validator the service uses
(`qcg.pilotjob.api.jobparse`), so a broken job is refused when it is added —
with one message naming the job, the field and the reason — instead of
failing the whole submit later. Errors are the reference's:
`InvalidJobDescriptionError` (bad or duplicate job), `JobNotDefinedError`
(`remove` of an unknown name), `FileError` (`load_from_file` /
`save_to_file` cannot read or write).

Choices where the original client is lax:

* a string `args` is one argument (`args="x"` → `["x"]`); the original
  passed the string on and the service refused it;
* a job without a name gets a generated unique one (uuid4), as in the original.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from qcg.pilotjob.api.errors import FileError, InvalidJobDescriptionError, JobNotDefinedError, WrongArgumentsError
from qcg.pilotjob.api.jobparse import parse_job

__all__ = ["Jobs", "SIMPLE_ATTRS", "MAX_ITERATIONS"]

# attributes of the simple format and their accepted types (reference 22.1.2 `Jobs.add`)
SIMPLE_ATTRS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "exec": (str,),
    "script": (str,),
    "args": (list, tuple, str),
    "stdin": (str,),
    "stdout": (str,),
    "stderr": (str,),
    "wd": (str,),
    "modules": (list, tuple, str),
    "venv": (str,),
    "model": (str,),
    "model_opts": (dict,),
    "numCores": (int, dict),
    "numNodes": (int, dict),
    "wt": (str,),
    "iteration": (int, list, tuple, dict),
    "after": (list, tuple, str),
    "env": (dict,),
}
_RESOURCE_SIZE_KEYS = ("exact", "min", "max", "scheduler")
_ITERATION_KEYS = ("start", "stop", "values")
_EXECUTION_KEYS = ("args", "stdin", "stdout", "stderr", "wd", "modules", "venv", "model", "model_opts", "env")

# upper bound of iterations of one job accepted by the client (as in the original)
MAX_ITERATIONS = 64 * 1024


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def _merge(job_attrs: dict | None, kw_attrs: dict) -> dict:
    if job_attrs is None:
        return dict(kw_attrs)
    if not isinstance(job_attrs, dict):
        raise InvalidJobDescriptionError(f"job description must be a dict, got {type(job_attrs).__name__}")
    return {**job_attrs, **kw_attrs}


def as_job_names(names: Any) -> list[str]:
    """Job names given as one name, a list of names or a `Jobs` (the forms the client methods take)."""
    if isinstance(names, str):
        return [names]
    if isinstance(names, Jobs):
        return names.ordered_job_names()
    try:
        return list(names)
    except TypeError:
        raise WrongArgumentsError(f"job names must be a string or a list of strings, "
                                  f"got {type(names).__name__}") from None


class Jobs:
    """Group of job descriptions to submit, kept in the order they were added.

    Attributes:
        _list (dict(str, dict)): job name -> {"idx": position, "data": standard description}
        _job_idx (int): counter giving each added job its position
    """

    def __init__(self) -> None:
        self._list: dict[str, dict[str, Any]] = {}
        self._job_idx = 0

    # ------------------------------------------------------------------ adding

    @staticmethod
    def _generate_default_name() -> str:
        return str(uuid.uuid4())

    def add(self, job_attrs: dict | None = None, **kw_attrs: Any) -> "Jobs":
        """Add a job in the simple format (reference 22.1.2 `Jobs.add`); return self.

        `job_attrs` and keyword attributes are merged (keywords win).
        `numCores` / `numNodes` take an int or a dict with `exact`, `min`,
        `max`, `scheduler`; `iteration` an int (number of iterations), a list
        (iteration values) or a dict with `start`/`stop` or `values`; `after`
        a job name or a list of them.

        Raises:
            InvalidJobDescriptionError: unknown attribute, wrong type, both or
                neither of `exec`/`script`, a name already in the group, or any
                problem the service's validator finds.
        """
        data = _merge(job_attrs, kw_attrs)
        std = self._convert_simple(data)
        self._validate_std(std)
        self._append_job(std["name"], std)
        return self

    def add_std(self, job_attrs: dict | None = None, **kw_attrs: Any) -> "Jobs":
        """Add a job in the standard `submit` format (reference 22.1.2 `Jobs.add_std`); return self.

        Raises:
            InvalidJobDescriptionError: a name already in the group or an
                invalid description (the message names job, field and reason).
        """
        data = _merge(job_attrs, kw_attrs)
        if data.get("name") is None:
            data["name"] = self._generate_default_name()
        self._validate_std(data)
        self._append_job(data["name"], data)
        return self

    def _validate_std(self, std: dict) -> None:
        name = std.get("name")
        if isinstance(name, str) and name in self._list:
            raise InvalidJobDescriptionError(f"job '{name}': field 'name': already in the group")
        parse_job(std)  # raises InvalidJobDescriptionError listing every problem

    def _append_job(self, name: str, std: dict) -> None:
        self._list[name] = {"idx": self._job_idx, "data": std}
        self._job_idx += 1

    def _convert_simple(self, attrs: dict) -> dict:
        """Check the simple-format attributes and convert them to a standard description."""
        if attrs.get("name") is None:
            attrs["name"] = self._generate_default_name()
        name = attrs["name"]
        label = f"job '{name}'" if isinstance(name, str) else "job"
        problems: list[str] = []
        for key, value in attrs.items():
            types = SIMPLE_ATTRS.get(key)
            if types is None:
                problems.append(f"{label}: unknown attribute '{key}' (allowed: {', '.join(SIMPLE_ATTRS)})")
            elif value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                problems.append(f"{label}: attribute '{key}' must be {_type_names(types)}, "
                                f"got {type(value).__name__}")
        if problems:
            raise InvalidJobDescriptionError(problems)

        has_exec, has_script = attrs.get("exec") is not None, attrs.get("script") is not None
        if not has_exec and not has_script:
            raise InvalidJobDescriptionError(f"{label}: one of 'exec' or 'script' is required")
        if has_exec and has_script:
            raise InvalidJobDescriptionError(f"{label}: 'exec' and 'script' are mutually exclusive")

        execution: dict[str, Any] = {"exec": attrs["exec"]} if has_exec else {"script": attrs["script"]}
        for key in _EXECUTION_KEYS:
            value = attrs.get(key)
            if value is None:
                continue
            if key == "args":
                value = [value] if isinstance(value, str) else list(value)
            elif key == "modules" and isinstance(value, tuple):
                value = list(value)
            execution[key] = value
        std: dict[str, Any] = {"name": name, "execution": execution}

        resources: dict[str, Any] = {}
        for key in ("numCores", "numNodes"):
            value = attrs.get(key)
            if value is None:
                continue
            if isinstance(value, int):
                value = {"exact": value}
            else:
                unknown = [k for k in value if k not in _RESOURCE_SIZE_KEYS]
                if unknown:
                    raise InvalidJobDescriptionError(
                        f"{label}: unknown {key} attribute '{unknown[0]}' (allowed: {', '.join(_RESOURCE_SIZE_KEYS)})")
            resources[key] = value
        if attrs.get("wt") is not None:
            resources["wt"] = attrs["wt"]
        if resources:
            std["resources"] = resources

        iteration = attrs.get("iteration")
        if iteration is not None:
            if isinstance(iteration, int):
                iteration = {"start": 0, "stop": iteration}
            elif isinstance(iteration, (list, tuple)):
                iteration = {"values": list(iteration)}
            else:
                unknown = [k for k in iteration if k not in _ITERATION_KEYS]
                if unknown:
                    raise InvalidJobDescriptionError(
                        f"{label}: unknown iteration attribute '{unknown[0]}' (allowed: start, stop, values)")
                iteration = dict(iteration)
            if "values" in iteration and isinstance(iteration["values"], (list, tuple)):
                count = len(iteration["values"])
            elif isinstance(iteration.get("stop"), int) and isinstance(iteration.get("start", 0), int):
                count = iteration["stop"] - iteration.get("start", 0)
            else:
                count = 0  # the validator below explains what is wrong
            if count > MAX_ITERATIONS:
                raise InvalidJobDescriptionError(
                    f"{label}: too many iterations ({count}, at most {MAX_ITERATIONS} in one job)")
            std["iteration"] = iteration

        after = attrs.get("after")
        if after is not None:
            std["dependencies"] = {"after": [after] if isinstance(after, str) else list(after)}
        return std

    # ----------------------------------------------------------------- queries

    def remove(self, name: str) -> None:
        """Remove the job `name` from the group; JobNotDefinedError if it is not there."""
        if name not in self._list:
            raise JobNotDefinedError(name)
        del self._list[name]

    def clear(self) -> int:
        """Remove every job; return how many there were."""
        count = len(self._list)
        self._list.clear()
        return count

    def job_names(self) -> list[str]:
        """Names of the jobs in the group."""
        return list(self._list)

    def ordered_job_names(self) -> list[str]:
        """Names of the jobs in the order they were added."""
        return [name for name, _ in sorted(self._list.items(), key=lambda item: item[1]["idx"])]

    def jobs(self) -> list[dict]:
        """Job descriptions in the standard format (reference 10.3.1)."""
        return [entry["data"] for entry in self._list.values()]

    def ordered_jobs(self) -> list[dict]:
        """Job descriptions in the standard format, in the order they were added."""
        return [entry["data"] for entry in sorted(self._list.values(), key=lambda entry: entry["idx"])]

    def __len__(self) -> int:
        return len(self._list)

    def __contains__(self, name: object) -> bool:
        return name in self._list

    # ------------------------------------------------------------------- files

    def load_from_file(self, file_path: str) -> None:
        """Add the jobs of a JSON file holding a list of standard descriptions.

        Raises:
            InvalidJobDescriptionError: a job is invalid or its name is already
                in the group (then no job of the file is added).
            FileError: the file cannot be read or is not a JSON list.
        """
        try:
            with open(file_path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise FileError(f'Failed to read job descriptions from "{file_path}": {exc}') from exc
        if not isinstance(data, list):
            raise FileError(f'"{file_path}" must hold a JSON list of job descriptions, '
                            f'got {type(data).__name__}')
        staged = Jobs()
        staged._list = dict(self._list)
        staged._job_idx = self._job_idx
        for job in data:
            staged.add_std(job)
        self._list, self._job_idx = staged._list, staged._job_idx

    def save_to_file(self, file_path: str) -> None:
        """Write the jobs, in order, as a JSON list of standard descriptions; FileError on failure."""
        try:
            text = json.dumps(self.ordered_jobs(), indent=2)
            with open(file_path, "w", encoding="utf-8") as handle:
                handle.write(text)
        except (OSError, TypeError, ValueError) as exc:
            raise FileError(f'Failed to write job descriptions to "{file_path}": {exc}') from exc
