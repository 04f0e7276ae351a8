"""The service's network endpoints (issue 4): the run's keys and their ZAP handler, the request
ROUTER, the event PUB, and the address files by which clients and attaching managers find it.

Opened when the service listens (`--net`, or a governor, whose partition managers connect to it).
The ZAP handler starts before any socket binds, so no peer is ever admitted unchecked. The address
file is written last and atomically: present means ready.
"""

from __future__ import annotations

import os
import sys

import structlog
import zmq

from qcg.pilotjob.api import protocol
from qcg.pilotjob.governor.aux_dir import own_opener
from qcg.pilotjob.governor.keys import Authenticator, KeysError, RunKeys, create_keys
from qcg.pilotjob.governor.publisher import EventPublisher
from qcg.pilotjob.governor.zmq_interface import BindError, ZmqInterface

log = structlog.get_logger("service")

INSECURE_WARNING = ("WARNING: --insecure-no-curve: the network interface accepts unauthenticated, unencrypted "
                    "requests; anyone who can reach {address} can run commands as this user")


class NetworkError(Exception):
    """The endpoints cannot be opened (keys, ports); the message is shown to the user."""


class ServiceNetwork:
    def __init__(self, aux_dir: str, instance_id: str) -> None:
        self.aux_dir = aux_dir
        self.instance_id = instance_id
        self.context: zmq.Context | None = None
        self.keys: RunKeys | None = None           # None with --insecure-no-curve
        self.interface: ZmqInterface | None = None
        self.publisher: EventPublisher | None = None
        self.address: str | None = None
        self._auth: Authenticator | None = None

    def open(self, *, host: str, port: int | None, port_min: int | None, port_max: int | None,
             publish: bool, pub_port: int | None, insecure: bool) -> None:
        """Keys, ZAP handler, request and (with `publish`) event sockets; nothing is served yet."""
        # a resumed run must not leave the previous run's address (or keys) for clients to find
        for name in (protocol.ADDRESS_FILE, protocol.PUB_ADDRESS_FILE):
            _remove(os.path.join(self.aux_dir, name))
        self.context = zmq.Context()
        keys = None
        if not insecure:
            try:
                self.keys = keys = create_keys(self.aux_dir)
            except KeysError as exc:
                raise NetworkError(str(exc)) from None
            self._auth = Authenticator(self.context, keys)
            self._auth.start()
        else:
            for name in (protocol.SERVER_PUBLIC, protocol.SERVER_SECRET, protocol.CLIENT_PUBLIC,
                         protocol.CLIENT_SECRET):
                _remove(os.path.join(self.aux_dir, protocol.KEYS_DIR, name))
        try:
            self.interface = ZmqInterface(self.context, keys, host=host, port=port, port_min=port_min,
                                          port_max=port_max)
            self.address = self.interface.bind()
            if publish:
                self.publisher = EventPublisher(self.context, keys, self.instance_id, host=host, port=pub_port,
                                                port_min=port_min, port_max=port_max)
                self.publisher.bind()
        except BindError as exc:
            raise NetworkError(str(exc)) from None
        log.info("network interface listening", address=self.address,
                 publisher=self.publisher.address if self.publisher else None,
                 curve=keys is not None, keys=keys.directory if keys else None)
        if insecure:
            # the address clients are given names one interface; a socket bound on all is reachable on all
            where = self.address if host not in ("0.0.0.0", "*", "::") else \
                f"{self.address} (listening on every interface of this host)"
            text = INSECURE_WARNING.format(address=where)
            print(text, file=sys.stderr, flush=True)
            log.warning(text)

    def publish_address(self, address: str | None) -> None:
        """`<aux>/address` (and `pub_address`): written last, atomically -- present means ready."""
        if self.publisher is not None and self.publisher.address:
            _write_atomic(os.path.join(self.aux_dir, protocol.PUB_ADDRESS_FILE), self.publisher.address)
        _write_atomic(os.path.join(self.aux_dir, protocol.ADDRESS_FILE), address or "")

    def close(self) -> None:
        """Close what `open` opened, also after it failed half-way."""
        if self.interface is not None:
            self.interface.close()
        if self.publisher is not None:
            self.publisher.close()
        if self._auth is not None:
            self._auth.stop()
        if self.context is not None:
            # waits at most the sockets' linger for replies still queued (the answer to `finish`)
            self.context.term()
            self.context = None


def _write_atomic(path: str, text: str) -> None:
    # made new (O_EXCL), in the checked aux dir, never through a link left there (aux_dir.own_opener)
    tmp = f"{path}.tmp{os.getpid()}"
    _remove(tmp)
    with open(tmp, "x", encoding="utf-8", opener=own_opener) as f:
        f.write(text)
    os.replace(tmp, path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
