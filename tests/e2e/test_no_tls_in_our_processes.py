"""Our own processes run without OpenSSL (agent/process_setup.py `keep_tls_out`).

asyncio imports `ssl` at start-up; we never use TLS (ZMQ with CURVE carries everything), and OpenSSL
cost every service, manager and agent 4.6 MiB of resident memory and about 10 ms of start-up. The
entry points mark it absent. A task reads its parent's memory map: in flat mode the parent is the
service. (Agents and partition managers: tests/slurm/test_governor_mode.py.) A program that only
imports our packages keeps its ssl.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import job, run_service, submit

# the task prints how many of its parent's mappings are OpenSSL's (libssl, or the _ssl module); grep exits
# 1 when it counts none, which must not fail the task
PROBE = r"grep -c -e libssl -e '/_ssl\.' /proc/$PPID/maps; true"


def _probe_job() -> dict:
    return job("probe", "/bin/sh", ["-c", PROBE], stdout="probe.out")


def test_the_probe_sees_openssl_in_a_plain_asyncio_process() -> None:
    """The control: without the entry point's setting, an asyncio program maps OpenSSL."""
    pytest.importorskip("ssl", reason="this Python is built without ssl: nothing to keep out")
    out = subprocess.run([sys.executable, "-c", "import asyncio, subprocess\n"
                          f"print(subprocess.run(['/bin/sh', '-c', {PROBE!r}], capture_output=True, "
                          "text=True).stdout.strip())"], capture_output=True, text=True, timeout=60)
    assert int(out.stdout) > 0, out.stderr


def test_the_service_started_with_python_m_has_no_openssl(tmp_path: Path) -> None:
    run = run_service(tmp_path, [submit(_probe_job()), {"request": "control", "command": "finishAfterAllTasksDone"}],
                      nodes="1")
    assert run.rc == 0, run.stderr
    assert (run.wd / "probe.out").read_text().strip() == "0"
    assert '"state": "SUCCEED"' in (run.aux / "jobs.report").read_text()


def test_the_service_started_by_its_console_script_has_no_openssl(tmp_path: Path) -> None:
    script = shutil.which("qcg-gov")
    if script is None:
        pytest.skip("the qcg-gov console script is not installed (pip install -e .)")
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([submit(_probe_job()), {"request": "control", "command": "finishAfterAllTasksDone"}]))
    proc = subprocess.run([script, "--file-path", str(reqs), "--wd", str(tmp_path / "wd"), "--nodes", "1"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "wd" / "probe.out").read_text().strip() == "0"


def test_a_program_that_imports_our_packages_keeps_its_ssl() -> None:
    """Every module of ours except the entry points (`__main__`) imported: the program can still use ssl."""
    code = textwrap.dedent("""
        import importlib, pkgutil
        names = []
        for package in ("api", "agent", "partition", "governor", "service", "executor_api"):
            pkg = importlib.import_module("qcg.pilotjob." + package)
            names.append(pkg.__name__)
            names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
        imported, missing = 0, []
        for name in names:
            if name.endswith("__main__"):
                continue
            try:
                importlib.import_module(name)
                imported += 1
            except ImportError as exc:       # an optional extra (gantt: matplotlib)
                if "ssl" in str(exc):
                    raise
                missing.append(name)
        import ssl
        print(imported, len(missing), bool(ssl.OPENSSL_VERSION))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    imported, missing, ok = out.stdout.split()
    assert int(imported) > 80 and int(missing) <= 1 and ok == "True", out.stdout
