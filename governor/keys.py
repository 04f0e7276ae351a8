"""CURVE keys of one run and the ZAP authenticator that admits only this run's client.

Every run creates, in `<aux dir>/keys/` (mode 0700), a server and a client key
pair (z85 text, files mode 0600, names from `api/protocol.py`). The server
sockets use the server secret key; the ZAP handler accepts exactly one client
public key, the run's. A client therefore needs the client key pair *and* the
server public key, i.e. read access to the aux dir (or `QCG_PM_KEYS`) -- the
same trust boundary as the aux dir itself (DESIGN.md principle 5, issue 4
"Security").
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

import structlog
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from qcg.pilotjob.api import curve, protocol

log = structlog.get_logger("keys")

ZAP_DOMAIN = b"qcg-pilotjob"


class KeysError(Exception):
    """The key directory cannot be created or read; the message says which file and why."""


@dataclass(frozen=True)
class RunKeys:
    directory: str
    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes


def create_keys(aux_dir: str) -> RunKeys:
    """New server and client key pairs for this run in `<aux_dir>/keys/` (replacing older ones)."""
    directory = os.path.join(aux_dir, protocol.KEYS_DIR)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        for name, data in ((protocol.SERVER_PUBLIC, server_public), (protocol.SERVER_SECRET, server_secret),
                           (protocol.CLIENT_PUBLIC, client_public), (protocol.CLIENT_SECRET, client_secret)):
            curve.write_private(os.path.join(directory, name), data)
    except OSError as exc:
        raise KeysError(f"key directory '{directory}': {exc.strerror or exc}") from None
    return RunKeys(directory, server_public, server_secret, client_public, client_secret)


def load_keys(path: str) -> RunKeys:
    """Keys from a key directory, or from an aux dir holding `keys/` (what `QCG_PM_KEYS` may name)."""
    directory = path
    if not os.path.exists(os.path.join(directory, protocol.SERVER_PUBLIC)) \
            and os.path.isdir(os.path.join(path, protocol.KEYS_DIR)):
        directory = os.path.join(path, protocol.KEYS_DIR)
    values: list[bytes] = []
    _check_own(directory, "key directory", 0o022)
    for name in (protocol.SERVER_PUBLIC, protocol.SERVER_SECRET, protocol.CLIENT_PUBLIC, protocol.CLIENT_SECRET):
        file = os.path.join(directory, name)
        # keys somebody else can write (or read, for secrets) are not the run's: a partition manager
        # would serve, and hand the jobs' environments to, whoever planted them
        _check_own(file, "key file", 0o077 if name.endswith("_secret") else 0o022)
        try:
            values.append(curve.read_key(file))
        except OSError as exc:
            raise KeysError(f"key file '{file}': {exc.strerror or exc}") from None
        except ValueError as exc:
            raise KeysError(str(exc)) from None
    return RunKeys(directory, *values)


def _check_own(path: str, what: str, forbidden: int) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeysError(f"{what} '{path}': {exc.strerror or exc}") from None
    if st.st_uid != os.geteuid():
        raise KeysError(f"{what} '{path}' belongs to another user (uid {st.st_uid}): refused")
    if st.st_mode & forbidden:
        raise KeysError(f"{what} '{path}' is open to others (mode {stat.S_IMODE(st.st_mode):o}): refused; "
                        f"'chmod {'600' if forbidden == 0o077 else 'go-w'}' it to use it")


def make_server(sock: zmq.Socket, keys: RunKeys) -> None:
    """Make `sock` a CURVE server with the run's server key (before bind)."""
    sock.setsockopt(zmq.HANDSHAKE_IVL, curve.HANDSHAKE_MS)      # connections that never authenticate go soon
    sock.curve_secretkey = keys.server_secret
    sock.curve_publickey = keys.server_public
    sock.curve_server = True
    sock.zap_domain = ZAP_DOMAIN


def make_client(sock: zmq.Socket, keys: RunKeys) -> None:
    """Make `sock` a CURVE client of the run's server (before connect)."""
    sock.curve_secretkey = keys.client_secret
    sock.curve_publickey = keys.client_public
    sock.curve_serverkey = keys.server_public


class _OnlyRunClient:
    """ZAP credentials provider: admits the run's client public key, nothing else."""

    def __init__(self, client_public: bytes) -> None:
        self.client_public = client_public
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if key == self.client_public:
            return True
        self.denied += 1
        if self.denied <= 20 or self.denied % 1000 == 0:
            log.warning("CURVE client refused: unknown public key", key=key.decode("ascii", "replace"),
                        refused=self.denied)
        return False


class Authenticator:
    """ZAP handler in the service's asyncio loop (pyzmq's AsyncioAuthenticator)."""

    def __init__(self, context: Any, keys: RunKeys) -> None:
        # the ZAP socket must live in the context of the server sockets
        actx = context if isinstance(context, zmq.asyncio.Context) else zmq.asyncio.Context.shadow(context)
        self._auth = AsyncioAuthenticator(actx)
        self.provider = _OnlyRunClient(keys.client_public)

    def start(self) -> None:
        self._auth.start()
        for domain in ("*", ZAP_DOMAIN.decode()):   # "*" covers sockets without a ZAP domain
            self._auth.configure_curve_callback(domain, credentials_provider=self.provider)

    def stop(self) -> None:
        try:
            self._auth.stop()
        except Exception:  # closing twice or after the context: nothing left to do
            pass

