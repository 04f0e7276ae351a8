"""CURVE key files: one z85 key per file, private files mode 0600 in a 0700 directory.

Shared by every side that opens an authenticated socket: the service, its
clients, partitions and node agents.
"""

from __future__ import annotations

import os

import zmq

from qcg.pilotjob.api.private_files import read_private


def write_private(path: str, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 from the first byte on (atomic replace)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o600)      # the umask may have removed bits; never widened
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_key(path: str) -> bytes:
    with open(path, "rb") as f:
        return _z85(f.read(), path)


def _z85(data: bytes, path: str) -> bytes:
    key = data.strip()
    if len(key) != 40:
        raise ValueError(f"key file '{path}' does not hold a z85 CURVE key (40 characters)")
    return key


def read_private_key(directory: str, name: str) -> bytes:
    """A key file of `directory`, read only if both are this user's own (`private_files.read_private`)."""
    return _z85(read_private(directory, name), os.path.join(directory, name))


def create_pair(directory: str, name: str) -> tuple[bytes, bytes]:
    """A new key pair saved as `<name>.key` (public) and `<name>.key_secret` in `directory`."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    public, secret = zmq.curve_keypair()
    write_private(os.path.join(directory, f"{name}.key"), public)
    write_private(os.path.join(directory, f"{name}.key_secret"), secret)
    return public, secret


def load_pair(directory: str, name: str) -> tuple[bytes, bytes]:
    """`<name>.key` and `<name>.key_secret` of `directory`, both this user's own (`read_private`)."""
    return read_private_key(directory, f"{name}.key"), read_private_key(directory, f"{name}.key_secret")


HANDSHAKE_MS = 5000    # a connection that has not completed its handshake by then is dropped (libzmq: 30 s)


def make_server(sock: zmq.Socket, secret: bytes) -> None:
    # anybody who can reach the port holds a descriptor per connection until the handshake fails: not long
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
    sock.curve_server = True
    sock.curve_secretkey = secret


def make_client(sock: zmq.Socket, public: bytes, secret: bytes, server_public: bytes) -> None:
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = server_public


class _Allowed:
    def __init__(self, publics: set[bytes]) -> None:
        self.publics = publics

    def callback(self, domain: str, key: bytes) -> bool:
        return zmq.utils.z85.encode(key) in self.publics if len(key) == 32 else key in self.publics


def allowed_keys(publics: set[bytes]) -> _Allowed:
    """A ZAP credentials provider admitting exactly `publics` (z85 public keys)."""
    return _Allowed(publics)


def start_authenticator(context: "zmq.Context", allowed: set[bytes]) -> object:
    """A ZAP handler admitting only `allowed` keys, in its own thread (`stop()` ends it).

    A thread, not pyzmq's asyncio flavour: the handler then does not depend on the event loop's
    turns or on the readiness edges of a socket the loop watches. Early agents use the same.
    `context` may be a `zmq.asyncio.Context`; the handler's sockets go into a plain shadow of it
    (the ZAP endpoint belongs to the underlying context).
    """
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(zmq.Context.shadow(context.underlying))
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_Allowed(allowed))
    return auth
