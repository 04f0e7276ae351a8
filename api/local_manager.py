"""`LocalManager`: a service started as a subprocess of the client, and the `Manager` that talks to it.

The reference documents it as `qcg.pilotjob.api.manager.LocalManager`; that
module gives it from here. What it adds to `Manager`: building the service's
command line, waiting (bounded) for its aux dir to hold the address and keys,
quoting the service's stderr when it dies before it is ready, and never
leaving the process behind (`finish`, the `with` block, a finalizer).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from typing import Any

from qcg.pilotjob.api import errors, transport
from qcg.pilotjob.api.manager import Manager

__all__ = ["LocalManager"]

_logger = logging.getLogger("qcg.pilotjob.api")


def _reap(process: subprocess.Popen) -> None:
    """Finalizer: never leave a service process behind."""
    if process.poll() is None:
        try:
            process.kill()
            process.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _option_value(args: list[str], option: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(option + "="):
            return arg[len(option) + 1:]
    return None


class LocalManager(Manager):
    """Start a service as a subprocess and talk to it (reference 22.1.4 `LocalManager`, 3.1).

    The service runs `python -m qcg.pilotjob.service --net --wd <wd> --id <id>
    <server_args>` (`--wd` and `--id` only when not in `server_args`); its aux
    dir is `<wd>/.qcgpjm-service-<id>`, from which the address and the CURVE
    keys are read (an aux dir of another user is refused). With
    `--insecure-no-curve` in `server_args` the service has no keys and the
    client talks plain text to it: that option is the explicit opt-in.
    `finish()` asks it to finish and waits for the process (killed after
    10 s); leaving a `with` block does the same.
    """

    FINISH_WAIT = 10.0

    def __init__(self, server_args: list | None = None, cfg: dict | None = None) -> None:
        client_cfg = dict(cfg or {})
        self.log_handler = None
        self._setup_logging(client_cfg)
        args = [str(arg) for arg in (server_args or [])]
        wd = _option_value(args, "--wd")
        if wd is None:
            wd = "."
            args = ["--wd", wd, *args]
        instance_id = _option_value(args, "--id")
        if instance_id is None:
            instance_id = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
            args = ["--id", instance_id, *args]
        if not any(a == "--net" or a.startswith("--net-port") for a in args):
            args = ["--net", *args]
        # a service without CURVE is reached in plain text: asking for it is the explicit opt-in
        self._plain_service = "--insecure-no-curve" in args
        if self._plain_service:
            # the service prints its warning to its stderr, which a LocalManager keeps to itself
            warnings.warn("--insecure-no-curve: the service accepts unauthenticated, unencrypted requests; anyone "
                          "who can reach its port can run commands as this user", RuntimeWarning, stacklevel=2)
        self.wd = os.path.abspath(wd)
        self.instance_id = instance_id
        self.aux_dir = os.path.join(self.wd, transport.AUX_DIR_PREFIX + instance_id)
        self._finished = False

        init_timeout = float(client_cfg.get("init_timeout", 300))
        self._stderr = tempfile.TemporaryFile(prefix="qcgpj-service-stderr-")
        cmd = [sys.executable, "-m", "qcg.pilotjob.service", *args]
        _logger.info("starting the service: %s", " ".join(cmd))
        started = time.monotonic()
        try:
            self.qcgpm_process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=self._stderr)
        except OSError as exc:
            self._stderr.close()
            raise errors.ServiceError(f"Service not started: {exc}") from exc
        self._finalizer = weakref.finalize(self, _reap, self.qcgpm_process)
        try:
            address, keys_dir = self._wait_for_service(init_timeout)
            client_cfg.setdefault("aux_dir", self.aux_dir)
            if self._plain_service:
                client_cfg["insecure_no_curve"] = True
            super().__init__(address, client_cfg, keys=keys_dir)
        except BaseException:
            self.kill_manager_process()
            self._wait_process(2.0)
            self.cleanup()
            raise
        _logger.info("service %s started in %.3f s at %s", instance_id, time.monotonic() - started, address)

    def _alive(self) -> bool:
        return self.qcgpm_process.poll() is None

    def _stderr_tail(self, limit: int = 4000) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - limit))
            return self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def _wait_for_service(self, init_timeout: float) -> tuple[str, str | None]:
        """Wait for `<aux dir>/address` (and the keys) or the end of the process; ServiceError otherwise."""
        deadline = time.monotonic() + init_timeout
        pause = 0.002
        while True:
            code = self.qcgpm_process.poll()
            if code is not None:
                tail = self._stderr_tail()
                raise errors.ServiceError(f"Service process ended with exit code {code} before it was ready"
                                          + (f": {tail}" if tail else ""))
            # the service writes its keys first and the address file last (atomically): once the
            # address is there, keys present means CURVE, keys absent means the plain-text opt-out
            address = transport.read_aux_address(self.aux_dir)
            if address is not None:
                # an aux dir someone else made in a shared wd is not our service's (its keys are refused too)
                foreign = transport.foreign_owner(self.aux_dir)
                if foreign:
                    raise errors.ServiceError(f"the aux dir {self.aux_dir} is {foreign}: refusing its address "
                                              f"and keys (another user's service, or an impostor)")
                keys = transport.load_keys(self.aux_dir)
                return address, (keys.source if keys is not None else None)
            if time.monotonic() >= deadline:
                raise errors.ServiceError(f"Service not started in {init_timeout:g} s"
                                          f" (no address in {self.aux_dir})")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.05)

    def _wait_process(self, timeout: float) -> bool:
        try:
            self.qcgpm_process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def finish(self) -> None:
        """Ask the service to finish, wait for its process (killed after 10 s), clean up."""
        if self._finished:
            return
        self._finished = True
        try:
            try:
                self._send_finish()
            except errors.ConnectionError:
                if self._alive():
                    raise
                # the service is already gone: nothing to finish
        finally:
            self._disconnect()
            if not self._wait_process(self.FINISH_WAIT):
                _logger.warning("the service did not end within %g s after finish; killing it", self.FINISH_WAIT)
                self.qcgpm_process.kill()
                self._wait_process(5.0)
            self._stderr.close()
            self.cleanup()

    def kill_manager_process(self) -> None:
        """Send SIGTERM to the service process (normally `finish` is used instead)."""
        if self.qcgpm_process.poll() is None:
            try:
                self.qcgpm_process.send_signal(signal.SIGTERM)
            except OSError:
                pass

    def __exit__(self, *exc: Any) -> None:
        try:
            self.finish()
        except errors.QCGPJMAError:
            if exc[0] is None:
                raise
            _logger.exception("finishing the service after an error failed")

    @staticmethod
    def is_notebook() -> bool:
        """True when running inside a Jupyter kernel."""
        try:
            shell = get_ipython().__class__.__name__  # type: ignore[name-defined]  # noqa: F821
        except NameError:
            return False
        return shell == "ZMQInteractiveShell"
