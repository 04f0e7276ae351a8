"""Public client side of the pilot-job manager: job model, errors, protocol, client API.

The main client names are importable from here as well as from their
documented modules (reference 22.1): `LocalManager`, `Manager`, `Jobs`,
`JobInfo`. They are loaded on first use, so the service and the agents,
which import other modules of this package, do not pay for the client.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "LocalManager": "qcg.pilotjob.api.manager",
    "Manager": "qcg.pilotjob.api.manager",
    "Jobs": "qcg.pilotjob.api.job",
    "JobInfo": "qcg.pilotjob.api.jobinfo",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
