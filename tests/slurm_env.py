"""The real services of the Slurm and ssh tests: probe them, start them once.

Not a test module. `tests/conftest.py` builds the `slurm_cluster` and `sshd`
session fixtures on `ensure_slurm()` / `ensure_sshd()`:

* a cluster (or sshd) that already works is used as it is;
* otherwise `deploy/slurm-cluster.sh start` (`deploy/sshd.sh start`) is tried
  once per test session — pytest-xdist workers share one attempt through a
  file lock and a record of its outcome keyed by the test run id;
* when that fails, `Unavailable` carries the reason, and the tests skip with
  "Slurm cannot be installed/started: <reason>" ("sshd cannot ...").

`.ci/run` starts both services before pytest; when it could not, it exports
QCG_TEST_SLURM_UNAVAILABLE / QCG_TEST_SSH_UNAVAILABLE with the reason and the
fixtures skip at once instead of trying again.

A cluster started here is left running (other workers may still use it);
`deploy/slurm-cluster.sh stop` and `deploy/sshd.sh stop` end it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
SLURM_SCRIPT = REPO / "deploy" / "slurm-cluster.sh"
SSHD_SCRIPT = REPO / "deploy" / "sshd.sh"
SSHD_STATE = Path(os.environ.get("QCG_TEST_SSHD_STATE", "/run/qcg-test-sshd"))
LOCK_DIR = Path(tempfile.gettempdir()) / "qcg-test-services"

SLURM_PREFIX = "Slurm cannot be installed/started: "
SSH_PREFIX = "sshd cannot be installed/started: "

#: minimum number of usable nodes the Slurm tests need (the issue: 4 or more)
MIN_NODES = int(os.environ.get("QCG_TEST_SLURM_MIN_NODES", "4"))
#: seconds one start attempt (including apt-get) may take
START_TIMEOUT = float(os.environ.get("QCG_TEST_SERVICE_START_TIMEOUT", "600"))
PROBE_TIMEOUT = 15

#: node states (sinfo %T, lower case) in which a node accepts or runs jobs
USABLE_STATES = {"idle", "mixed", "allocated", "completing"}


class Unavailable(Exception):
    """A service cannot be used; str() is the full skip reason."""


@dataclass(frozen=True)
class SlurmCluster:
    nodes: tuple[str, ...]
    cpus_per_node: int
    states: dict[str, str]


@dataclass(frozen=True)
class Sshd:
    host: str
    port: int
    user: str
    key: Path
    config: Path

    def argv(self, *remote: str) -> list[str]:
        """`ssh ... user@127.0.0.1 REMOTE...` (a new list each call)."""
        return ["ssh", "-p", str(self.port), "-i", str(self.key),
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={SSHD_STATE / 'known_hosts'}", "-o", "LogLevel=ERROR",
                f"{self.user}@{self.host}", *remote]


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without the variables of an enclosing Slurm job or step."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SALLOC_", "SRUN_", "SBATCH_", "SLURMD_"))}
    env.update(extra)
    return env


def _session_key() -> str:
    # The same for every xdist worker of one run; the pid of a plain run.
    return os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getppid()}-{os.getpid()}"


@contextmanager
def _locked(name: str) -> Iterator[None]:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_DIR / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_script(script: Path, *args: str, prog: str) -> str | None:
    """Run a deploy/ script; None when it succeeded, else the reason."""
    with tempfile.TemporaryFile("w+") as out:
        try:
            proc = subprocess.run(["bash", str(script), *args], stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=START_TIMEOUT, cwd=str(REPO),
                                  env=clean_env())
        except subprocess.TimeoutExpired:
            return f"{script.name} {' '.join(args)} did not finish within {START_TIMEOUT:.0f}s"
        except OSError as exc:
            return f"cannot run {script}: {exc}"
        if proc.returncode == 0:
            return None
        out.seek(0)
        lines = out.read().splitlines()
    errors = [ln.split("ERROR: ", 1)[1] for ln in lines if ln.startswith(f"{prog}: ERROR: ")]
    if errors:
        return errors[-1]
    tail = " | ".join(lines[-3:]) or "no output"
    return f"{script.name} {' '.join(args)} exited with {proc.returncode}: {tail}"


def _once(name: str, probe, start) -> object:
    """probe() -> value or reason (str); start() -> None or reason. Start at most once a session."""
    value = probe()
    if not isinstance(value, str):
        return value
    with _locked(name):
        value = probe()
        if not isinstance(value, str):
            return value
        record = LOCK_DIR / f"{name}-attempt-{_session_key()}"
        if record.exists():
            previous = record.read_text()
            if previous.startswith("failed: "):
                raise Unavailable(previous[len("failed: "):])
            raise Unavailable(f"started earlier in this session but not usable now: {value}")
        reason = start()
        if reason is None:
            value = probe()
            if isinstance(value, str):
                reason = f"started, but not usable: {value}"
        record.write_text("ok" if reason is None else f"failed: {reason}")
        if reason is not None:
            raise Unavailable(reason)
        return value


# ------------------------------------------------------------------- Slurm
def probe_slurm(min_nodes: int = MIN_NODES) -> SlurmCluster | str:
    """The running cluster, or why it cannot be used."""
    if shutil.which("sinfo") is None:
        return "Slurm is not installed (no sinfo on PATH)"
    try:
        # `scontrol ping` fails at once when slurmctld is down (sinfo retries for ~10 s).
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                              env=clean_env())
    except (subprocess.TimeoutExpired, OSError) as exc:
        return f"scontrol ping failed: {exc}"
    if ping.returncode != 0:
        return f"slurmctld does not answer ({ping.stdout.strip().splitlines()[0] if ping.stdout.strip() else ping.returncode})"
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %c %T"], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT, env=clean_env())
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within {PROBE_TIMEOUT}s"
    if proc.returncode != 0:
        return f"sinfo failed: {(proc.stderr or proc.stdout).strip() or proc.returncode}"
    states: dict[str, str] = {}
    cpus: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            states[parts[0]] = parts[2]
            cpus[parts[0]] = int(parts[1]) if parts[1].isdigit() else 0
    usable = [n for n, s in states.items() if s.lower() in USABLE_STATES]
    if len(usable) < min_nodes:
        seen = ", ".join(f"{n}={s}" for n, s in sorted(states.items())) or "no nodes"
        return f"{len(usable)} usable node(s), the tests need {min_nodes} ({seen})"
    usable.sort(key=lambda n: (len(n), n))
    return SlurmCluster(tuple(usable), min(cpus[n] for n in usable), states)


def ensure_slurm(min_nodes: int = MIN_NODES) -> SlurmCluster:
    """A usable cluster, started once per session if needed; else Unavailable."""
    preset = os.environ.get("QCG_TEST_SLURM_UNAVAILABLE")
    if preset:
        raise Unavailable(preset if preset.startswith(SLURM_PREFIX) else SLURM_PREFIX + preset)
    try:
        return _once("slurm", lambda: probe_slurm(min_nodes),
                     lambda: _run_script(SLURM_SCRIPT, "start", prog="slurm-cluster.sh"))  # type: ignore[return-value]
    except Unavailable as exc:
        raise Unavailable(SLURM_PREFIX + str(exc)) from None


# --------------------------------------------------------------------- ssh
def _read_env_file() -> dict[str, str]:
    path = SSHD_STATE / "env"
    try:
        text = path.read_text()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def probe_sshd() -> Sshd | str:
    if shutil.which("ssh") is None:
        return "no ssh client on PATH"
    env = _read_env_file()
    if not env:
        return f"no {SSHD_STATE / 'env'} (deploy/sshd.sh not started)"
    sshd = Sshd(env.get("QCG_TEST_SSH_HOST", "127.0.0.1"), int(env.get("QCG_TEST_SSH_PORT", "2222")),
                env.get("QCG_TEST_SSH_USER", "root"), Path(env["QCG_TEST_SSH_KEY"]),
                Path(env.get("QCG_TEST_SSH_CONFIG", str(SSHD_STATE / "ssh_config"))))
    try:
        proc = subprocess.run(sshd.argv("true"), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"ssh login did not finish within {PROBE_TIMEOUT}s"
    if proc.returncode != 0:
        return f"ssh login fails ({proc.returncode}): {proc.stderr.strip()}"
    return sshd


def ensure_sshd() -> Sshd:
    preset = os.environ.get("QCG_TEST_SSH_UNAVAILABLE")
    if preset:
        raise Unavailable(preset if preset.startswith(SSH_PREFIX) else SSH_PREFIX + preset)
    try:
        return _once("sshd", probe_sshd, lambda: _run_script(SSHD_SCRIPT, "start", prog="sshd.sh"))  # type: ignore[return-value]
    except Unavailable as exc:
        raise Unavailable(SSH_PREFIX + str(exc)) from None
