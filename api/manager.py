"""`Manager` and `LocalManager`: the client API of a running service (reference 22.1.4, 3.1).

`Manager(address, cfg)` talks to a service started with `--net`;
`LocalManager(server_args, cfg)` starts one as a subprocess
(`python -m qcg.pilotjob.service --net ...`) and talks to it (it is defined
in `local_manager` and given from here, the reference's import path). Every method of
the reference is here, with the reference's return values (the `data`
element of the responses of reference 10.3) and errors:

* a request the service refuses (`code` != 0) raises `ConnectionError`
  ("Request failed - <message>"), as in the reference; the class raised is
  `transport.RequestFailed`, a subclass, carrying the whole response;
* a service that does not answer within the request timeout (dead,
  unreachable, or missing/wrong CURVE keys) raises `ConnectionError`
  (`transport.ServiceUnreachable`), never hangs;
* a wait that runs past its timeout raises `TimeoutElapsed`;
* an answer without the expected fields raises `InternalError`.

`wait4`, `wait4all` and `wait4_any_job_finish` are driven by the service's
events (DESIGN.md principle 1); they live in `job_waits` (`JobWaits`, a base
class of `Manager`), with `TimeStamp`, given from here as in the reference.

Configuration (`cfg`):

* `init_timeout` (LocalManager; default 300 s): how long to wait for the
  service to start;
* `poll_delay` (default 5 s): the longest interval between safety re-checks
  in the waits;
* `request_timeout` (default 60 s): how long one request may wait for an answer;
* `log_file` (default `<wdir>/.qcgpjm-client/api.log`, `None` for no file),
  `log_level` (`info` by default, or `debug`), `wdir` (default `.`);
* `keys`: directory with the CURVE client keys (see `transport`), or
  pass `keys=` to `Manager`; `aux_dir`: the service's aux dir, from which
  both the address and the keys are read;
* `insecure_no_curve` (default False): with no keys found, talk plain text
  (a service started with `--insecure-no-curve`); the environment variable
  `QCG_PM_INSECURE_NO_CURVE=1` does the same. Logged as a warning.

Secure by default (DESIGN.md principle 5): without keys and without that
opt-in, `Manager` raises `ConnectionError` at once, saying where it looked,
and sends nothing. Only the user's own keys are used: keys (and their
directory) that another user owns, or that group/others may change (or read,
for the secret key), are refused; aux dirs of other users in the current
directory are skipped (`transport.scan_aux_dirs`).

Where the address comes from when `address` is None: the environment
variable `QCG_PM_ZMQ_ADDRESS`, then `cfg["aux_dir"]`, then the newest aux dir
of this user (`.qcgpjm-service-*` with an `address` file) in the current
directory, then `tcp://127.0.0.1:5555` (reference 22.1.4). `address` may
also name an aux dir.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from qcg.pilotjob.api import client_log, errors, protocol, transport
from qcg.pilotjob.api.job import Jobs, as_job_names
from qcg.pilotjob.api.job_waits import JobWaits, TimeStamp
from qcg.pilotjob.api.jobinfo import JobInfo

if TYPE_CHECKING:
    from qcg.pilotjob.api.local_manager import LocalManager

__all__ = ["Manager", "LocalManager", "TimeStamp"]


def __getattr__(name: str) -> Any:
    """`LocalManager` lives in `local_manager` (it imports this module); given here, where the reference has it."""
    if name == "LocalManager":
        from qcg.pilotjob.api.local_manager import LocalManager
        return LocalManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "LocalManager"])


_logger = client_log.logger


class Manager(JobWaits):
    """Client of one running service (reference 22.1.4 `Manager`); see the module documentation."""

    DEFAULT_ADDRESS_ENV = protocol.ADDRESS_ENV
    DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
    DEFAULT_PROTO = "tcp"
    DEFAULT_PORT = "5555"
    DEFAULT_POLL_DELAY = 5
    DEFAULT_PUB_TIMEOUT = 5 * 60
    DEFAULT_REQUEST_TIMEOUT = transport.DEFAULT_REQUEST_TIMEOUT

    #: finish events kept for wait4_any_job_finish
    MAX_PENDING_FINISHED = 100_000

    def __init__(self, address: str | None = None, cfg: dict | None = None, *, keys: str | None = None) -> None:
        client_cfg = dict(cfg or {})
        self._cfg = client_cfg
        self._conn: transport.ServiceConnection | None = None
        self._req_lock = threading.RLock()
        self._event_lock = threading.RLock()          # held by the thread taking the events in
        self._finished_events: deque[tuple[str, str]] = deque(maxlen=self.MAX_PENDING_FINISHED)
        self._log_lock = threading.Lock()             # the event log of the waits (job_waits), briefly
        self._event_log: deque[tuple[int, str | None, str]] = deque(maxlen=self.EVENT_LOG)
        self._event_seq = 0
        self._publisher_address: str | None = None
        self.default_poll_delay = float(client_cfg.get("poll_delay", self.DEFAULT_POLL_DELAY))
        self.default_pub_timeout = float(client_cfg.get("pub_timeout", self.DEFAULT_PUB_TIMEOUT))
        self.request_timeout = float(client_cfg.get("request_timeout", self.DEFAULT_REQUEST_TIMEOUT))
        if getattr(self, "log_handler", None) is None:
            self.log_handler = None
        self._setup_logging(client_cfg)

        aux_dir = client_cfg.get("aux_dir")
        if address is not None and os.path.isdir(str(address)):
            aux_dir, address = str(address), None
        if address is None:
            address = os.environ.get(self.DEFAULT_ADDRESS_ENV)
        if address is None and aux_dir:
            address = transport.read_aux_address(aux_dir)
            if address is None:
                raise errors.ConnectionError(f"no service address in {aux_dir}/{transport.ADDRESS_FILE}")
        skipped: list[str] = []        # aux dirs of other users passed over
        scanned = False                # whether the current directory was searched for an aux dir
        if address is None:
            mine, skipped = transport.scan_aux_dirs(".")
            scanned = True
            if mine:
                aux_dir = mine[0]
                address = transport.read_aux_address(aux_dir)
        if address is None:
            address = self.DEFAULT_ADDRESS
        self._address = self._parse_address(address)
        explicit = keys or client_cfg.get("keys")
        # a LocalManager of its own --insecure-no-curve service looks for no keys (it knows there are none)
        search = bool(explicit) or not getattr(self, "_plain_service", False)
        if search and aux_dir is None and not explicit and not os.environ.get(protocol.KEYS_ENV):
            aux_dir, more = self._aux_dir_serving(self._address)
            skipped += more
            scanned = True
        self._aux_dir = aux_dir
        self._keys, looked = transport.locate_keys(explicit, aux_dir) if search else (None, [])
        self._insecure = False
        if self._keys is None:
            self._insecure, by = transport.insecure_opt_in(client_cfg)
            if not self._insecure:
                raise transport.NoKeysFound(self._no_keys_message(looked, skipped, scanned))
            _logger.warning("connecting to %s in PLAIN TEXT, without CURVE (opted in by %s): whoever can reach "
                            "or take over this address can read and forge every request, job environments "
                            "included", self._address, by)
        self._connect()

    def _no_keys_message(self, looked: list[str], skipped: list[str], scanned: bool) -> str:
        """One message: no keys for the address, where the client looked, how to give them, the opt-in."""
        looked = list(looked)
        if scanned:
            looked.append(f"no aux dir {transport.AUX_DIR_PREFIX}* of yours serving it in {os.getcwd()}")
        looked += list(dict.fromkeys(skipped))
        env = os.environ.get(protocol.INSECURE_ENV)
        ignored = f" (${protocol.INSECURE_ENV}={env!r} is not an opt-in: use 1)" if env else ""
        return (f"no CURVE keys found for {self._address}; looked: {'; '.join(looked)}. Nothing was sent. "
                f"Give the keys with cfg {{'keys': DIR}} (or keys=DIR), the environment variable "
                f"{protocol.KEYS_ENV}=DIR, or the service's aux dir as the address (or cfg 'aux_dir'); DIR is "
                f"the aux dir <wd>/{transport.AUX_DIR_PREFIX}<id> or its {protocol.KEYS_DIR}/ directory. "
                f"A service started with --insecure-no-curve is reached in plain text only with the explicit "
                f"opt-in: cfg {{'insecure_no_curve': True}} or {protocol.INSECURE_ENV}=1{ignored}")

    # ------------------------------------------------------------ connection

    @staticmethod
    def _parse_address(address: str) -> str:
        """`[proto://]host[:port]` with `tcp` and `5555` as defaults (reference 22.1.4)."""
        address = str(address).strip()
        if not re.match(r"\w*://", address):
            address = f"{Manager.DEFAULT_PROTO}://{address}"
        if address.startswith("tcp://") and not re.match(r".*:\d+$", address):
            address = f"{address}:{Manager.DEFAULT_PORT}"
        return address

    @staticmethod
    def _aux_dir_serving(address: str) -> tuple[str | None, list[str]]:
        """An aux dir of this user in the current directory whose `address` file names `address` (to find
        its keys), and the aux dirs of other users skipped."""
        mine, skipped = transport.scan_aux_dirs(".")
        for cand in mine:
            if transport.read_aux_address(cand) == address:
                return cand, skipped
        return None, skipped

    def _alive(self) -> bool:
        return True

    def _connect(self) -> None:
        self._disconnect()
        _logger.info("connecting to the service at %s (CURVE keys: %s)", self._address,
                     self._keys.source if self._keys else "none")
        try:
            self._conn = transport.ServiceConnection(
                self._address, self._keys, timeout=self.request_timeout,
                alive=None if type(self)._alive is Manager._alive else self._alive, insecure=self._insecure)
        except Exception as exc:
            raise errors.ConnectionError(f"Failed to connect to {self._address} - {exc}") from exc
        system = self.system_status().get("System", {})
        _logger.info("connected to the instance %s @ %s", system.get("InstanceId"), system.get("Host"))
        pub = system.get("StatusPublisher")
        if not pub and self._aux_dir:
            pub = transport.read_aux_address(self._aux_dir, transport.PUB_ADDRESS_FILE)
        if pub:
            pub = self._external_address(pub)
            self._conn.subscribe(pub)
            self._publisher_address = pub
            # one more round trip: by its answer the service has taken in the subscription as well
            self._request({"request": "resourcesInfo"})
            _logger.info("subscribed to job events at %s", pub)

    def _external_address(self, pub: str) -> str:
        """Replace a wildcard host of the publisher address with the host of the request address."""
        match = re.match(r"^(\w+)://(\*|0\.0\.0\.0)(:\d+)$", pub)
        if match:
            host = re.match(r"^\w+://([^:]+)", self._address)
            return f"{match.group(1)}://{host.group(1) if host else '127.0.0.1'}{match.group(3)}"
        return pub

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _assure_connected(self) -> transport.ServiceConnection:
        if self._conn is None or self._conn.closed:
            raise errors.ConnectionError("Not connected")
        return self._conn

    @property
    def address(self) -> str:
        return self._address

    # -------------------------------------------------------------- requests

    @classmethod
    def _validate_response(cls, response: Any) -> Any:
        cls._validate_response_wo_data(response)
        if "data" not in response:
            raise errors.InternalError("Invalid reply from the service")
        return response["data"]

    @staticmethod
    def _validate_response_wo_data(response: Any) -> dict:
        if not isinstance(response, dict) or "code" not in response:
            raise errors.InternalError("Invalid reply from the service")
        if response["code"] != 0:
            if response.get("message"):
                raise transport.RequestFailed(f"Request failed - {response['message']}", response)
            raise transport.RequestFailed("Request failed", response)
        return response

    def _request(self, request: dict[str, Any], timeout: float | None = None, *,
                 ends_service: bool = False) -> dict[str, Any]:
        # one request at a time per Manager; a thread queued behind another thread's request to a hung
        # service gives up when its own timeout runs out, not when the other request's does
        if not self._req_lock.acquire(blocking=False):
            limit = self.request_timeout if timeout is None else float(timeout)
            deadline = time.monotonic() + limit
            if not self._req_lock.acquire(timeout=min(max(limit, 0.0), threading.TIMEOUT_MAX)):
                raise transport.ServiceUnreachable(
                    f"no answer from the service at {self._address} in {limit:g} s: another thread's request "
                    f"through this Manager was still waiting for it")
            timeout = max(deadline - time.monotonic(), 0.001)      # what is left of it
        try:
            conn = self._assure_connected()
            if _logger.isEnabledFor(logging.DEBUG):
                _logger.debug("sending request %s", str(request)[:2000])
            response = conn.request(request, timeout, ends_service=ends_service)
        finally:
            self._req_lock.release()
        response.pop("v", None)
        response.pop("id", None)
        return response

    def _send_and_validate_result(self, data: dict[str, Any], valid_method: Any = None,
                                  timeout: float | None = None) -> Any:
        return (valid_method or Manager._validate_response)(self._request(data, timeout))

    def send_request(self, request: dict[str, Any]) -> dict:
        """Send any request; return the whole validated response (reference 22.1.4 `send_request`)."""
        return self._send_and_validate_result(request, valid_method=Manager._validate_response_wo_data)

    def resources(self) -> dict:
        """`resourcesInfo`: `{"total_nodes", "total_cores", "used_cores", "free_cores"}`."""
        return self._send_and_validate_result({"request": "resourcesInfo"})

    def submit(self, jobs: Jobs | list) -> list[str]:
        """Submit the jobs of `jobs` (a `Jobs`, or a list of standard descriptions); return their names."""
        descriptions = jobs.ordered_jobs() if isinstance(jobs, Jobs) else list(jobs)
        data = self._send_and_validate_result({"request": "submit", "jobs": descriptions})
        if not isinstance(data, dict) or "submitted" not in data or "jobs" not in data:
            raise errors.InternalError("Missing response data")
        return data["jobs"]

    def list(self) -> dict:
        """`listJobs`: job name -> `{"status", "messages"?, "inQueue"?}`."""
        data = self._send_and_validate_result({"request": "listJobs"})
        if not isinstance(data, dict) or "jobs" not in data:
            raise errors.InternalError("Request failed - missing jobs data")
        return data["jobs"]

    def status(self, names: Any) -> dict:
        """`jobStatus`: `{"jobs": {name: {"status": 0, "data": {"jobName", "status"}}}}`."""
        return self._send_and_validate_result({"request": "jobStatus", "jobNames": as_job_names(names)})

    def info(self, names: Any, **kwargs: Any) -> dict:
        """`jobInfo`: `{"jobs": {name: {"status": 0, "data": {...}}}}`; `withChilds=True` adds iterations."""
        request: dict[str, Any] = {"request": "jobInfo", "jobNames": as_job_names(names)}
        if kwargs:
            request["params"] = kwargs
        return self._send_and_validate_result(request)

    def info_parsed(self, names: Any, **kwargs: Any) -> dict[str, JobInfo]:
        """Like `info`, parsed into `JobInfo` objects (reference 22.1.3); UnknownJobError for a name the
        service does not know (an empty JobInfo would pass for a job)."""
        jobs = self.info(names, **kwargs).get("jobs", {})
        for name, entry in jobs.items():
            if entry.get("status", 0) != 0:
                raise errors.UnknownJobError(entry.get("message") or f"job '{name}' does not exist")
        return {name: JobInfo.from_job(entry.get("data", {})) for name, entry in jobs.items()}

    def remove(self, names: Any) -> None:
        """`removeJob`: forget finished jobs (their names may then be used again)."""
        self._send_and_validate_result({"request": "removeJob", "jobNames": as_job_names(names)})

    def cancel(self, names: Any) -> dict:
        """`cancelJob`: cancel queued or running jobs (or iterations `job:N`); returns the response data.

        Running processes get SIGTERM and end CANCELED. The original's returns None (its
        docstring calls the method unsupported, but the request is sent and served).
        """
        return self._send_and_validate_result({"request": "cancelJob", "jobNames": as_job_names(names)})

    def system_status(self) -> dict:
        """`status`: `{"System", "Resources", "JobStats", "IterationStats"}` (reference 10.3.x)."""
        return self._send_and_validate_result({"request": "status"})

    def _send_finish(self) -> None:
        Manager._validate_response_wo_data(self._request({"request": "finish"}, ends_service=True))
        self._disconnect()

    def finish(self) -> None:
        """Ask the service to finish, close the connection, clean up."""
        self._send_finish()
        self.cleanup()

    def close(self) -> None:
        """Close the connection without finishing the service."""
        self._disconnect()
        self.cleanup()

    def cleanup(self) -> None:
        """Remove this client's log handler (reference 22.1.4 `cleanup`)."""
        handler, self.log_handler = getattr(self, "log_handler", None), None
        if handler is not None:
            client_log.close_client_log(handler)

    def __enter__(self) -> "Manager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- logging

    def _setup_logging(self, cfg: dict) -> None:
        if getattr(self, "log_handler", None) is None:
            self.log_handler = client_log.open_client_log(cfg)
