"""Job descriptions: the data model of a submitted job, as immutable objects, and its wall time format.

`qcg.pilotjob.api.jobparse` builds them from the reference's "standard" JSON
job description (reference 10.3.1 submit), validating it;
`JobDescription.to_dict` turns them back into that JSON form.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "MODELS",
    "SCHEDULERS",
    "IterSchedulerSpec",
    "ResourceSize",
    "Resources",
    "Execution",
    "Iteration",
    "JobDescription",
    "DEFAULT_RESOURCES",
    "EXEC_STR_KEYS",
    "EXECUTION_FIELDS",
    "execution_from_values",
    "parse_walltime",
    "format_walltime",
    "type_name",
    "new_execution",
    "new_iteration",
    "new_job",
    "new_resources",
    "new_size",
]

MODELS = ("default", "threads", "openmpi", "intelmpi", "srunmpi")
SCHEDULERS = ("maximum-iters", "split-into")

# the optional string fields of `execution`
EXEC_STR_KEYS = ("stdin", "stdout", "stderr", "wd", "venv")

# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class IterSchedulerSpec:
    """An iteration resource scheduler: `maximum-iters` or `split-into` (with `parts`)."""

    name: str
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        if self.params:
            return {"name": self.name, "params": dict(self.params)}
        return {"name": self.name}


@dataclass(frozen=True, slots=True)
class ResourceSize:
    """Number of cores or nodes: `exact`, or a range `min`..`max` (either end optional)."""

    exact: int | None = None
    min: int | None = None
    max: int | None = None
    scheduler: IterSchedulerSpec | None = None

    @property
    def is_exact(self) -> bool:
        return self.exact is not None

    @property
    def minimum(self) -> int:
        """The least amount that satisfies this size."""
        if self.exact is not None:
            return self.exact
        return self.min if self.min is not None else 1

    def to_dict(self) -> dict:
        result: dict = {}
        if self.exact is not None:
            result["exact"] = self.exact
        if self.min is not None:
            result["min"] = self.min
        if self.max is not None:
            result["max"] = self.max
        if self.scheduler is not None:
            result["scheduler"] = self.scheduler.to_dict()
        return result


@dataclass(frozen=True, slots=True)
class Resources:
    """Resource requirements; `wt` is the wall time limit in seconds."""

    num_cores: ResourceSize | None = None
    num_nodes: ResourceSize | None = None
    wt: float | None = None
    node_crs: dict | None = None  # consumable resources per node, e.g. {"gpu": 1}

    @property
    def min_cores(self) -> int:
        """Least number of cores the job can run on (cores per node times nodes)."""
        cores = self.num_cores.minimum if self.num_cores is not None else 1
        if self.num_nodes is not None:
            cores *= self.num_nodes.minimum
        return cores

    def to_dict(self) -> dict:
        result: dict = {}
        if self.num_cores is not None:
            result["numCores"] = self.num_cores.to_dict()
        if self.num_nodes is not None:
            result["numNodes"] = self.num_nodes.to_dict()
        if self.wt is not None:
            result["wt"] = format_walltime(self.wt)
        if self.node_crs:
            result["nodeCrs"] = dict(self.node_crs)
        return result


@dataclass(frozen=True, slots=True)
class Execution:
    """What to run and how: exactly one of `exec` and `script`."""

    exec: str | None = None
    args: tuple[str, ...] = ()
    script: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    wd: str | None = None
    modules: tuple[str, ...] = ()
    venv: str | None = None
    model: str = "default"
    model_opts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        result: dict = {}
        if self.exec is not None:
            result["exec"] = self.exec
        if self.args:
            result["args"] = list(self.args)
        if self.script is not None:
            result["script"] = self.script
        if self.env:
            result["env"] = dict(self.env)
        for key in EXEC_STR_KEYS:
            value = getattr(self, key)
            if value is not None:
                result[key] = value
        if self.modules:
            result["modules"] = list(self.modules)
        if self.model != "default":
            result["model"] = self.model
        if self.model_opts:
            result["model_opts"] = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                                    for k, v in self.model_opts.items()}
        return result


@dataclass(frozen=True, slots=True)
class Iteration:
    """Iterations `start`..`stop-1`, or one iteration per element of `values`.

    As in the original, `${it}` is always the iteration index and `${itval}`
    is the element of `values` (or the index as text for a range).
    """

    start: int = 0
    stop: int = 0
    values: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def indices(self) -> range:
        return range(self.start, self.stop)

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self.start <= index < self.stop

    def value_of(self, index: int) -> str:
        """The iteration's value (`${itval}`): `values[index]`, or the index itself as text."""
        if not self.start <= index < self.stop:
            raise IndexError(f"iteration {index} outside {self.start}..{self.stop - 1}")
        if self.values is not None:
            return self.values[index - self.start]
        return str(index)

    def substitutions(self, index: int) -> dict[str, str]:
        """Placeholder values of one iteration: `it` (index) and `itval` (value)."""
        return {"it": str(index), "itval": self.value_of(index)}

    def to_dict(self) -> dict:
        if self.values is not None:
            return {"values": list(self.values)}
        return {"start": self.start, "stop": self.stop}


DEFAULT_RESOURCES = Resources(num_cores=ResourceSize(exact=1))


@dataclass(frozen=True, slots=True)
class JobDescription:
    """One validated job description (reference 10.3.1 submit)."""

    name: str
    execution: Execution
    resources: Resources = DEFAULT_RESOURCES
    iteration: Iteration | None = None
    after: tuple[str, ...] = ()
    attributes: dict = field(default_factory=dict)

    @property
    def has_iterations(self) -> bool:
        return self.iteration is not None

    def to_dict(self) -> dict:
        """The standard JSON form; `jobparse.parse_job(d.to_dict()) == d`."""
        result: dict = {
            "name": self.name,
            "execution": self.execution.to_dict(),
            "resources": self.resources.to_dict(),
        }
        if self.iteration is not None:
            result["iteration"] = self.iteration.to_dict()
        if self.after:
            result["dependencies"] = {"after": list(self.after)}
        if self.attributes:
            result["attributes"] = dict(self.attributes)
        return result


def _fast_constructor(cls: type) -> Any:
    """A positional constructor for a frozen slotted dataclass, about twice as fast.

    The generated `__init__` of a frozen dataclass sets each field through
    `object.__setattr__`; calling the slot descriptors directly is cheaper and
    matters when thousands of jobs arrive in one request. Every field must be
    passed (no defaults, no `__post_init__`).
    """
    names = [f.name for f in fields(cls)]
    setters = {f"_set_{n}": getattr(cls, n).__set__ for n in names}
    body = "".join(f"    _set_{n}(obj, {n})\n" for n in names)
    source = (f"def make({', '.join(names)}):\n    obj = _new(_cls)\n{body}    return obj\n")
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **setters}
    exec(source, namespace)  # noqa: S102 - source built from the dataclass's own field names
    return namespace["make"]


new_execution = _fast_constructor(Execution)
new_job = _fast_constructor(JobDescription)
new_resources = _fast_constructor(Resources)
new_size = _fast_constructor(ResourceSize)
new_iteration = _fast_constructor(Iteration)

EXECUTION_FIELDS = tuple(f.name for f in fields(Execution))


def execution_from_values(values: list | tuple) -> Execution:
    """An `Execution` from its field values in `EXECUTION_FIELDS` order (wire form, already validated)."""
    (exec_, args, script, env, stdin, stdout, stderr, wd, modules, venv, model, model_opts) = values
    return new_execution(exec_, tuple(args), script, env, stdin, stdout, stderr, wd, tuple(modules), venv,
                          model, model_opts)


# --------------------------------------------------------------------------- wall time

# The original's format: any of "<h>h", "<m>m", "<s>s", in this order ("2h30m").
_WT_HMS = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
# Also accepted here: "H:MM:SS" / "MM:SS" clock form.
_WT_CLOCK = re.compile(r"(?:(\d+):)?(\d+):(\d+)")


def type_name(value: object) -> str:
    """A value's type as the JSON it came from calls it, for error messages ("null" for None)."""
    if value is None:
        return "null"
    return type(value).__name__


def parse_walltime(value: object) -> float:
    """Wall time in seconds from "2h30m", "10m", "45s", "1:30:00", or a number of seconds.

    The original accepts only the "XhYmZs" form (at least one part, total
    above zero); the clock form and plain numbers are extensions. A string
    of digits alone is refused because its unit would be a guess.
    """
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '30m' or '1h30m', got bool")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"must be greater than 0 seconds, got {value!r}")
        return seconds
    if not isinstance(value, str):
        raise ValueError(f"must be a duration such as '30m' or '1h30m', got {type_name(value)}")
    text = value.strip().lower()
    m = _WT_HMS.fullmatch(text)
    if m is not None and text:
        h, mi, s = m.groups()
        seconds = float(int(h or 0) * 3600 + int(mi or 0) * 60 + int(s or 0))
    else:
        m = _WT_CLOCK.fullmatch(text)
        if m is None:
            hint = " (add a unit, e.g. '600s')" if text.isdigit() else ""
            raise ValueError(f"must be a duration such as '30m', '1h30m', '45s' or '1:30:00', "
                             f"got {value!r}{hint}")
        h, mi, s = m.groups()
        if int(s) >= 60 or (h is not None and int(mi) >= 60):
            raise ValueError(f"invalid clock time {value!r}")
        seconds = float(int(h or 0) * 3600 + int(mi) * 60 + int(s))
    if seconds <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return seconds


def format_walltime(seconds: float) -> str | float:
    """Inverse of `parse_walltime`: "1h30m" for whole seconds, else the number."""
    if seconds != int(seconds):
        return seconds
    total = int(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "") or "0s"
