"""Where a client finds the service's CURVE keys and address, and which keys it trusts.

Security (DESIGN.md principle 5): the service listens with CURVE. The client
needs the service's public key and a client key pair; `find_keys` looks for
them, in this order, in

1. an explicit directory (the `keys` argument of `Manager`, or `cfg["keys"]`),
2. the directory named by the environment variable `QCG_PM_KEYS` (a keys
   directory, or an aux dir `.qcgpjm-service-*` holding `keys/`),
3. `keys/` of the service's aux dir (`cfg["aux_dir"]`, or the aux dir the
   address was read from).

Each key file holds one z85-encoded key (40 characters), or a ZeroMQ
certificate file (`public-key = "..."`).

Only the user's own keys are trusted: the key directory and the key files
must be owned by the effective uid and not writable by group or others, and
the secret key file not accessible to them (the service writes 0600 files
into a 0700 directory, `governor/keys.py`); other keys are refused with a
`KeysRefused` error naming the path, its owner and mode. The checks are made
on the opened directory and files (no window between check and read). Aux
dirs searched for (`scan_aux_dirs`) that belong to another user are skipped.

Without keys there is no connection (`NoKeysFound`): plain text, which only
a service started with the legacy `--insecure-no-curve` answers, needs the
explicit opt-in (`ServiceConnection(insecure=True)`; `Manager`: cfg `insecure_no_curve`
or the environment variable `QCG_PM_INSECURE_NO_CURVE=1`).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import stat
from dataclasses import dataclass

from qcg.pilotjob.api import errors, protocol

AUX_DIR_PREFIX = protocol.AUX_DIR_PREFIX
ADDRESS_FILE = protocol.ADDRESS_FILE

_Z85_KEY = re.compile(r"^[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")

class KeysRefused(errors.ConnectionError):
    """Keys (or their directory) that someone other than this user owns or may change or read."""


class NoKeysFound(errors.ConnectionError):
    """No CURVE keys anywhere the client looks, and no opt-in to plain text."""


@dataclass(frozen=True)
class CurveKeys:
    server_public: bytes
    client_public: bytes
    client_secret: bytes
    source: str = ""


# ------------------------------------------------------------------ keys and addresses


_KEY_NAMES = (protocol.SERVER_PUBLIC, protocol.CLIENT_PUBLIC, protocol.CLIENT_SECRET)
_MAX_KEY_FILE = 64 * 1024   # a certificate file is a few hundred bytes


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _not_yours(st: os.stat_result) -> str:
    return f"owned by {_user(st.st_uid)}, not by you ({_user(os.geteuid())})"


def foreign_owner(path: str) -> str | None:
    """Why `path` is not this user's ("owned by uid N (name), not by you (...)"); None if it is (or is gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return None if st.st_uid == os.geteuid() else _not_yours(st)


def _untrusted(st: os.stat_result, path: str, what: str, forbidden: int) -> str | None:
    """Why `path` (stat `st`) cannot be trusted: not ours, or with a mode bit of `forbidden`; None if fine."""
    uid = os.geteuid()
    if st.st_uid != uid:
        return (f"{what} {path} is {_not_yours(st)}: keys another user "
                f"controls may be an impostor's; use keys of your own (a copy in a directory of yours, "
                f"mode 0700, files 0600)")
    mode = stat.S_IMODE(st.st_mode)
    bad = mode & forbidden
    if bad:
        if forbidden == 0o077:
            why, fix = "readable or writable by group/others", "0600"
        else:
            why, fix = "writable by group/others", "0700" if stat.S_ISDIR(st.st_mode) else "0600"
        return f"{what} {path} has mode {mode:04o}: {why} (chmod {fix} {path})"
    return None


def _parse_key(text: str, path: str) -> bytes:
    text = text.strip()
    if _Z85_KEY.match(text):
        return text.encode("ascii")
    # a ZeroMQ certificate file (zmq.auth format)
    field = "secret-key" if os.path.basename(path).endswith("_secret") else "public-key"
    match = re.search(field + r'\s*=\s*"([^"]{40})"', text)
    if match:
        return match.group(1).encode("ascii")
    raise errors.ConnectionError(f"key file {path} does not hold a z85 key")


def _refuse(reason: str) -> KeysRefused:
    return KeysRefused(f"refusing the CURVE keys: {reason}")


def _read_trusted_keys(directory: str) -> CurveKeys:
    """The three keys of `directory`, each checked on the opened directory and file (see the module doc)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise errors.ConnectionError(f"key directory {directory}: {exc.strerror or exc}") from None
    try:
        reason = _untrusted(os.fstat(dir_fd), directory, "key directory", 0o022)
        if reason:
            raise _refuse(reason)
        values: list[bytes] = []
        for name in _KEY_NAMES:
            path = os.path.join(directory, name)
            secret = name.endswith("_secret")
            try:
                # O_NONBLOCK: a FIFO put in place of a key must not block the open
                fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError as exc:
                raise errors.ConnectionError(f"key file {path}: {exc.strerror or exc}") from None
            with os.fdopen(fd, "rb") as handle:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise _refuse(f"key file {path} is not a regular file")
                reason = _untrusted(st, path, "secret key file" if secret else "key file",
                                    0o077 if secret else 0o022)
                if reason:
                    raise _refuse(reason)
                data = handle.read(_MAX_KEY_FILE)
            try:
                text = data.decode("ascii")
            except UnicodeDecodeError:
                raise errors.ConnectionError(f"key file {path} does not hold a z85 key") from None
            values.append(_parse_key(text, path))
        return CurveKeys(values[0], values[1], values[2], directory)
    finally:
        os.close(dir_fd)


def _keys_dir_in(directory: str) -> str | None:
    """`directory` itself or its `keys/`: the first holding the three key files; None if neither does."""
    directory = os.path.abspath(os.path.expanduser(directory))
    for cand in (directory, os.path.join(directory, protocol.KEYS_DIR)):
        if all(os.path.isfile(os.path.join(cand, name)) for name in _KEY_NAMES):
            return cand
    return None


def load_keys(directory: str) -> CurveKeys | None:
    """Keys from `directory` (a keys dir, or an aux dir with `keys/`); None if the files are not there.

    Raises KeysRefused when they are there but not the user's own (see the module documentation).
    """
    cand = _keys_dir_in(directory)
    return None if cand is None else _read_trusted_keys(cand)


def locate_keys(explicit: str | None = None, aux_dir: str | None = None) -> tuple[CurveKeys | None, list[str]]:
    """Look for client keys as described in the module documentation: (keys or None, where it looked).

    An explicit directory without keys raises ConnectionError; keys found but not trusted raise KeysRefused.
    """
    looked: list[str] = []
    if explicit:
        keys = load_keys(explicit)
        if keys is None:
            raise errors.ConnectionError(
                f"no CURVE keys in {explicit} (expected {', '.join(_KEY_NAMES)} there or in its "
                f"{protocol.KEYS_DIR}/)")
        return keys, looked
    looked.append("no keys argument or cfg 'keys'")
    env = os.environ.get(protocol.KEYS_ENV)
    if env:
        keys = load_keys(env)
        if keys is not None:
            return keys, looked
        looked.append(f"no key files in ${protocol.KEYS_ENV}={env} (nor in its {protocol.KEYS_DIR}/)")
    else:
        looked.append(f"${protocol.KEYS_ENV} not set")
    if aux_dir:
        keys = load_keys(aux_dir)
        if keys is not None:
            return keys, looked
        looked.append(f"no key files in the aux dir {os.path.abspath(aux_dir)}/{protocol.KEYS_DIR}/")
    return None, looked


def find_keys(explicit: str | None = None, aux_dir: str | None = None) -> CurveKeys | None:
    """Look for client keys as described in the module documentation; None when there are none."""
    return locate_keys(explicit, aux_dir)[0]


def scan_aux_dirs(directory: str = ".") -> tuple[list[str], list[str]]:
    """(the user's own `.qcgpjm-service-*` dirs of `directory` that hold an `address` file, newest first;
    why the other ones were skipped). A dir owned by another user is skipped, whatever its mtime."""
    uid = os.geteuid()
    mine: list[tuple[float, str]] = []
    skipped: list[str] = []
    for cand in glob.glob(os.path.join(glob.escape(directory), AUX_DIR_PREFIX + "*")):
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or not os.path.isfile(os.path.join(cand, ADDRESS_FILE)):
            continue
        if st.st_uid != uid:
            skipped.append(f"skipped {os.path.abspath(cand)}: {_not_yours(st)}")
            continue
        mine.append((st.st_mtime, cand))
    mine.sort(reverse=True)
    return [cand for _, cand in mine], skipped


def find_aux_dir(directory: str = ".") -> str | None:
    """The newest `.qcgpjm-service-*` dir of this user in `directory` that holds an `address` file."""
    mine, _ = scan_aux_dirs(directory)
    return mine[0] if mine else None


_TRUE = frozenset({"1", "true", "yes", "on"})


def insecure_opt_in(cfg: dict | None = None) -> tuple[bool, str]:
    """Whether plain text was opted in (cfg `insecure_no_curve`, or `QCG_PM_INSECURE_NO_CURVE=1`); by what."""
    value = (cfg or {}).get("insecure_no_curve")
    if value is True or (isinstance(value, str) and value.strip().lower() in _TRUE):
        return True, "cfg insecure_no_curve"
    env = os.environ.get(protocol.INSECURE_ENV, "")
    if env.strip().lower() in _TRUE:
        return True, f"{protocol.INSECURE_ENV}={env}"
    return False, ""


def read_aux_address(aux_dir: str, name: str = ADDRESS_FILE) -> str | None:
    """The address written by the service into its aux dir, or None if not (fully) written yet."""
    try:
        with open(os.path.join(aux_dir, name), encoding="utf-8") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return text if "://" in text else None
