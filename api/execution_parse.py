"""Validating the `execution` element of a job description (reference 10.3.1): program, arguments, environment, model.

Part of `jobparse` (see there for the message format and the other rules
where the original is lax). `env` together with `script` is allowed (the
reference only makes `script` exclusive with `exec` and `args`; the original
also refused `env`).
"""

from __future__ import annotations

from qcg.pilotjob.api.jobdesc import (
    EXEC_STR_KEYS,
    MODELS,
    Execution,
    new_execution,
    type_name,
)
from qcg.pilotjob.api.parse_problems import Problems, key_repr, str_list

_EXEC_KEYS = frozenset({"exec", "args", "script", "env", "stdin", "stdout", "stderr", "wd",
                        "modules", "venv", "model", "model_opts"})
_MODEL_OPTS_KEYS = frozenset({"mpirun", "mpirun_args", "srun_args"})


def _parse_env(raw: object, p: Problems) -> dict[str, str]:
    env: dict[str, str] = {}
    if not isinstance(raw, dict):
        p.add("execution.env", f"must be a dict of strings, got {type_name(raw)}")
        return env
    for key, value in raw.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            p.add(f"execution.env.{key_repr(key)}",
                  "variable name must be a non-empty string without '='")
        elif isinstance(value, str):
            env[key] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            env[key] = str(value)
        else:
            p.add(f"execution.env.{key}", f"must be a string, got {type_name(value)}")
    return env


def _parse_model_opts(raw: object, p: Problems) -> dict:
    model_opts: dict = {}
    if not isinstance(raw, dict):
        p.add("execution.model_opts", f"must be a dict, got {type_name(raw)}")
        return model_opts
    p.unknown_keys(raw, _MODEL_OPTS_KEYS, "execution.model_opts.")
    value = raw.get("mpirun")
    if value is not None:
        if isinstance(value, str) and value:
            model_opts["mpirun"] = value
        else:
            p.add("execution.model_opts.mpirun",
                  f"must be a non-empty string, got {type_name(value)!s}"
                  if not isinstance(value, str) else "must not be empty")
    for key in ("mpirun_args", "srun_args"):
        value = raw.get(key)
        if value is not None:
            lst = str_list(value, f"execution.model_opts.{key}", p, convert_numbers=True)
            if lst is not None:
                model_opts[key] = list(lst)
    return model_opts


def parse_execution(data: object, p: Problems) -> Execution | None:
    if data.__class__ is not dict:
        if data is None:
            p.add("execution", "is required")
            return None
        if not isinstance(data, dict):
            p.add("execution", f"must be a dict, got {type_name(data)}")
            return None
    start = len(p.items)
    exe = script = None
    args: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    env: dict[str, str] = {}
    model_opts: dict = {}
    model = "default"
    strs: dict[str, str] = {}
    # one pass over the keys present (most jobs give two or three)
    for key, value in data.items():  # type: ignore[union-attr]
        if value is None:
            continue  # null means "not given"
        if key == "exec":
            if value.__class__ is str or isinstance(value, str):
                exe = value
            else:
                p.add("execution.exec", f"must be a string, got {type_name(value)}")
        elif key == "args":
            args = str_list(value, "execution.args", p, convert_numbers=True) or ()
        elif key == "script":
            if isinstance(value, str):
                script = value
            else:
                p.add("execution.script", f"must be a string, got {type_name(value)}")
        elif key in EXEC_STR_KEYS:
            if isinstance(value, str):
                strs[key] = value
            else:
                p.add(f"execution.{key}", f"must be a string, got {type_name(value)}")
        elif key == "env":
            env = _parse_env(value, p)
        elif key == "modules":
            modules = str_list(value, "execution.modules", p, convert_numbers=False,
                                allow_single=True) or ()
        elif key == "model":
            if not isinstance(value, str):
                p.add("execution.model", f"must be one of {', '.join(MODELS)}, got {type_name(value)}")
            else:
                model = value.lower()  # case-insensitive, as in the original
                if model not in MODELS:
                    p.add("execution.model", f"must be one of {', '.join(MODELS)}, got {value!r}")
        elif key == "model_opts":
            model_opts = _parse_model_opts(value, p)
        else:
            p.add(f"execution.{key_repr(key)}", f"unknown key (allowed: {', '.join(sorted(_EXEC_KEYS))})")

    if exe:
        if script:
            p.add("execution", "'exec' and 'script' are mutually exclusive")
    elif not script:
        if exe is None and script is None:
            # null counts as not given (reference 10.3.1: a String); a value of a wrong type was named above
            if not any(data.get(k) is not None for k in ("exec", "script")):  # type: ignore[union-attr]
                p.add("execution", "one of 'exec' or 'script' is required")
        else:
            p.add("execution.exec" if exe is not None else "execution.script", "must not be empty")
    elif args:
        p.add("execution.args", "not allowed with 'script'")

    if len(p.items) != start:
        return None
    get = strs.get
    # an empty stream name is not given, as in the original (it opened the working directory itself)
    return new_execution(exe or None, args, script or None, env, get("stdin") or None, get("stdout") or None,
                         get("stderr") or None, get("wd"), modules, get("venv"), model, model_opts)
