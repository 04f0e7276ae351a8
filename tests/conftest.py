"""Shared helpers: run the service on a request file, read what it wrote.

Every helper waits with a timeout; nothing asserts on durations.

Flat and partitioned mode (DESIGN.md "Testing": "the same end-to-end cases run
in flat and in partitioned mode (parametrised), so the two modes cannot drift
apart"): a test marked `@pytest.mark.both_modes` that uses the `mode` fixture
-- directly, or through `service`, `service_args` or a fixture built on them --
runs once per entry of `MODES`. "partitioned" is the same run plus
`--slurm-partition-nodes 1` (or `partition_nodes=K`): the governor starts one
local partition manager per group of K nodes, so the `--nodes` of such a run
must name at least two groups of nodes. `Run.check_mode()` (called by the
`service` fixture after every run) asserts what must differ between the
modes and nothing else: partitioned runs have `Partitions` in
final_status.json and a `partition` in the runtime of every task that got cores;
flat runs have neither; no partition manager printed a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

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
    mode: str = "flat"

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
        for path in self.partition_files("*.err"):
            text = path.read_text(errors="replace")
            assert "Traceback" not in text, f"{path}:\n{text}"

    # -- partitioned mode
    def partition_files(self, pattern: str) -> list[Path]:
        """Files of the partition managers (`<aux>/partitions/`), e.g. their stderr `*.err`."""
        if self.aux is None or not (self.aux / "partitions").is_dir():
            return []
        return sorted((self.aux / "partitions").glob(pattern))

    def check_mode(self) -> None:
        """What differs between flat and partitioned runs, and only that (see the module docstring)."""
        self.assert_no_traceback()
        if self.aux is None:
            return
        fs_path = self.aux / "final_status.json"
        fs = json.loads(fs_path.read_text()) if fs_path.exists() else None
        rep_path = self.aux / "jobs.report"
        json_report = "--report-format" not in self.argv or \
            self.argv[self.argv.index("--report-format") + 1] == "json"
        entries = self.report_lines() if rep_path.exists() and json_report else []
        # tasks that got cores (also those that then could not be spawned)
        ran = [e for e in entries if (e.get("runtime") or {}).get("allocation")]
        if self.mode == "partitioned":
            if fs is not None:
                assert "Partitions" in fs, f"no Partitions in final_status.json: {sorted(fs)}"
                ids = {p["id"] for p in fs["Partitions"]}
                assert len(ids) >= 2, fs["Partitions"]
                assert fs.get("LostPartitions") == [], fs.get("LostPartitions")
                for e in ran:
                    assert e["runtime"].get("partition") in ids, e
        else:
            if fs is not None:
                assert "Partitions" not in fs
            for e in ran:
                assert "partition" not in e["runtime"], e


def find_aux(wd: Path) -> Path | None:
    if not wd.is_dir():
        return None
    cands = sorted(wd.glob(".qcgpjm-service-*"), key=lambda p: p.stat().st_mtime)
    return cands[-1] if cands else None


def write_requests(path: Path, requests: Any) -> Path:
    path.write_text(requests if isinstance(requests, str) else json.dumps(requests))
    return path


# ------------------------------------------------------------- flat and partitioned mode
MODES = ("flat", "partitioned")
BOTH_MODES_NODES = "a:2,b:2"      # default --nodes of `service` in tests marked both_modes


def mode_args(mode: str, nodes: str | None, partition_nodes: int = 1) -> list[str]:
    """The options that turn a flat run on `nodes` into a partitioned one (nothing for flat).

    Partitioned mode needs at least two partitions: `nodes` must name at least
    2 * `partition_nodes` nodes (a test that needs one node per partition
    gives e.g. "a:2,b:2" instead of "4").
    """
    if mode == "flat":
        return []
    if mode != "partitioned":
        raise ValueError(f"unknown mode {mode!r}")
    count = len([n for n in (nodes or "").split(",") if n.strip()])
    if count < 2 * partition_nodes:
        raise ValueError(f"partitioned mode needs nodes for at least 2 partitions of {partition_nodes} "
                         f"node(s); --nodes {nodes!r} has {count}")
    return ["--slurm-partition-nodes", str(partition_nodes)]


def run_service(tmp_path: Path, requests: Any = None, *args: str, wd: Path | None = None,
                nodes: str | None = "4", timeout: float = DEFAULT_TIMEOUT, req_name: str = "reqs.json",
                env: dict[str, str] | None = None, file_path: str | None = None, mode: str = "flat",
                partition_nodes: int = 1) -> Run:
    """Run `python -m qcg.pilotjob.service` on `requests` (a list, or raw text) and wait for it.

    `mode="partitioned"` adds `--slurm-partition-nodes partition_nodes` (see `mode_args`).
    """
    wd = wd or tmp_path / "wd"
    argv = list(SERVICE)
    if requests is not None or file_path is not None:
        fp = file_path or str(write_requests(tmp_path / req_name, requests))
        argv += ["--file-path", fp]
    argv += ["--wd", str(wd)]
    if nodes is not None:
        argv += ["--nodes", nodes]
    argv += mode_args(mode, nodes, partition_nodes)
    argv += list(args)
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path),
                          env=full_env)
    return Run(proc.returncode, proc.stdout, proc.stderr, wd, find_aux(wd), argv, mode)


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_modes: run the test in flat and in partitioned mode "
                                       "(parametrises the `mode` fixture over tests.conftest.MODES)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_modes") is None:
        return
    if "mode" not in metafunc.fixturenames:
        raise pytest.UsageError(f"{metafunc.definition.nodeid} is marked both_modes but does not use the "
                                f"`mode` fixture (directly or through `service`)")
    metafunc.parametrize("mode", MODES)


@pytest.fixture
def mode() -> str:
    """The run's mode: "flat"; each of MODES in tests marked `both_modes` (see pytest_generate_tests)."""
    return "flat"


@pytest.fixture
def service_args(mode: str):
    """`service_args(nodes, partition_nodes=1)`: the options of this test's mode for a service run
    started by the test itself (LocalManager, QCGPJExecutor, Popen)."""

    def _args(nodes: str | None, partition_nodes: int = 1) -> list[str]:
        return mode_args(mode, nodes, partition_nodes)

    return _args


@pytest.fixture
def service(tmp_path: Path, mode: str, request: pytest.FixtureRequest):
    """`service(requests, *args, **kw)` runs the service in this test's tmp dir, in this test's mode,
    and checks what must differ between the modes (`Run.check_mode`).

    In tests marked `both_modes` the default `--nodes` is `BOTH_MODES_NODES` in both modes (two
    nodes, so partitioned mode has two partitions; the same layout in flat mode, so both modes see
    the same resources)."""
    both = request.node.get_closest_marker("both_modes") is not None

    def _run(requests: Any = None, *args: str, **kw: Any) -> Run:
        kw.setdefault("mode", mode)
        if both:
            kw.setdefault("nodes", BOTH_MODES_NODES)
        run = run_service(tmp_path, requests, *args, **kw)
        run.check_mode()
        return run

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


# -- the Python API against a local service ------------------------------------------------------

def client_cfg(tmp_path: Path, **extra: Any) -> dict:
    """Client configuration for LocalManager/Manager: log into the test's dir, bounded waits."""
    cfg = {"log_file": str(tmp_path / "api.log"), "init_timeout": 60, "request_timeout": 30}
    cfg.update(extra)
    return cfg


def local_manager(args: list[str], cfg: dict) -> Iterator[Any]:
    """Body of a fixture yielding `LocalManager(args, cfg)`; finished afterwards (killed if it will not finish)."""
    from qcg.pilotjob.api import errors
    from qcg.pilotjob.api.manager import LocalManager

    manager = LocalManager(args, cfg)
    try:
        yield manager
    finally:
        try:
            manager.finish()
        except errors.QCGPJMAError:
            manager.kill_manager_process()

