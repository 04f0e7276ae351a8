"""Shared helpers: run the service on a request file, read what it wrote.

Every helper waits with a timeout; nothing asserts on durations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SERVICE = [sys.executable, "-m", "qcg.pilotjob.service"]
DEFAULT_TIMEOUT = 60


@dataclass
class Run:
    """The outcome of one service run."""

    rc: int
    stdout: str
    stderr: str
    wd: Path
    aux: Path | None
    argv: list[str] = field(default_factory=list)

    # -- aux dir files
    def aux_file(self, name: str) -> Path:
        assert self.aux is not None, f"no aux dir in {self.wd}; stderr: {self.stderr}"
        return self.aux / name

    def report_lines(self, name: str = "jobs.report") -> list[dict[str, Any]]:
        text = self.aux_file(name).read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def report(self, name: str = "jobs.report") -> dict[str, dict[str, Any]]:
        """name -> last report entry of that name."""
        return {e["name"]: e for e in self.report_lines(name)}

    def final_status(self) -> dict[str, Any]:
        return json.loads(self.aux_file("final_status.json").read_text())

    def states(self) -> list[dict[str, Any]]:
        path = self.aux_file("track.states")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log(self) -> str:
        return self.aux_file("service.log").read_text()

    def assert_no_traceback(self) -> None:
        assert "Traceback" not in self.stderr, self.stderr
        assert "Traceback" not in self.stdout, self.stdout


def find_aux(wd: Path) -> Path | None:
    if not wd.is_dir():
        return None
    cands = sorted(wd.glob(".qcgpjm-service-*"), key=lambda p: p.stat().st_mtime)
    return cands[-1] if cands else None


def write_requests(path: Path, requests: Any) -> Path:
    path.write_text(requests if isinstance(requests, str) else json.dumps(requests))
    return path


def run_service(tmp_path: Path, requests: Any = None, *args: str, wd: Path | None = None,
                nodes: str | None = "4", timeout: float = DEFAULT_TIMEOUT, req_name: str = "reqs.json",
                env: dict[str, str] | None = None, file_path: str | None = None) -> Run:
    """Run `python -m qcg.pilotjob.service` on `requests` (a list, or raw text) and wait for it."""
    wd = wd or tmp_path / "wd"
    argv = list(SERVICE)
    if requests is not None or file_path is not None:
        fp = file_path or str(write_requests(tmp_path / req_name, requests))
        argv += ["--file-path", fp]
    argv += ["--wd", str(wd)]
    if nodes is not None:
        argv += ["--nodes", nodes]
    argv += list(args)
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path),
                          env=full_env)
    return Run(proc.returncode, proc.stdout, proc.stderr, wd, find_aux(wd), argv)


def submit(*jobs: dict[str, Any]) -> dict[str, Any]:
    return {"request": "submit", "jobs": list(jobs)}


def job(name: str, exec_: str = "/bin/true", args: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    execution: dict[str, Any] = {"exec": exec_}
    if args is not None:
        execution["args"] = args
    for key in ("stdout", "stderr", "stdin", "wd", "env", "venv", "modules"):
        if key in extra:
            execution[key] = extra.pop(key)
    desc: dict[str, Any] = {"name": name, "execution": execution}
    desc.update(extra)
    return desc


def script_job(name: str, script: str, **extra: Any) -> dict[str, Any]:
    execution: dict[str, Any] = {"script": script}
    for key in ("stdout", "stderr", "stdin", "wd", "venv", "modules"):
        if key in extra:
            execution[key] = extra.pop(key)
    desc: dict[str, Any] = {"name": name, "execution": execution}
    desc.update(extra)
    return desc


@pytest.fixture
def service(tmp_path: Path):
    """`service(requests, *args, **kw)` runs the service in this test's tmp dir."""

    def _run(requests: Any = None, *args: str, **kw: Any) -> Run:
        return run_service(tmp_path, requests, *args, **kw)

    return _run


# ------------------------------------------------------- real services (Slurm, sshd)
# Session fixtures for the tests marked `slurm` / `ssh`: they use a running
# test cluster / loopback sshd, or start it once per session through deploy/
# (see tests/slurm_env.py), or skip with the reason. A test marked `slurm` or
# `ssh` gets the fixture even when it does not ask for it.
from tests import slurm_env as _slurm_env  # noqa: E402


@pytest.fixture(scope="session")
def slurm_cluster() -> "_slurm_env.SlurmCluster":
    """The Slurm test cluster (at least 4 usable virtual nodes)."""
    try:
        return _slurm_env.ensure_slurm()
    except _slurm_env.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def sshd() -> "_slurm_env.Sshd":
    """The loopback sshd; `sshd.argv('cmd', ...)` is a login command line."""
    try:
        return _slurm_env.ensure_sshd()
    except _slurm_env.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _services_for_markers(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_cluster")
    if request.node.get_closest_marker("ssh") is not None:
        request.getfixturevalue("sshd")
