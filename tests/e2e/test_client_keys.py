"""The client is secure by default (DESIGN.md principle 5 "Secure by default"; README "Python API" and the
`--insecure-no-curve` option): `Manager` never falls back to plain text on its own, trusts only the
user's own CURVE keys, and a request nested too deeply gets an error response.

Real processes and real ZMQ sockets: the services are `qcg-gov` / `python -m qcg.pilotjob.service`
subprocesses, the impostors are plain ROUTER sockets bound on free ports. Every wait has a timeout.
Tests of another user's keys create that user with `useradd` (they need root; skipped otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
import zmq.utils.monitor

from qcg.pilotjob.api import errors, protocol, transport
from qcg.pilotjob.api.job import Jobs
from qcg.pilotjob.api.manager import LocalManager, Manager
from tests.conftest import client_cfg, local_manager

WAIT = 60            # seconds any single wait may take before the test fails
AT_ONCE = 5.0        # a refusal that sends nothing must not wait for anything
SILENCE = 1.0        # how long an impostor is listened to after the client gave up
OTHER_USER = "qcgpj-keytest"
ENV_VARS = (protocol.KEYS_ENV, protocol.ADDRESS_ENV, protocol.INSECURE_ENV)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No keys, address or opt-in inherited from the environment; an empty current directory."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


class Impostor:
    """A plain ROUTER on a free loopback port that records every connection and every message."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_ACCEPTED)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"

    def received(self, seconds: float = SILENCE) -> tuple[int, list[list[bytes]]]:
        """(connections accepted, messages received) within `seconds`."""
        accepted, messages = 0, []
        deadline = time.monotonic() + seconds
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(left * 1000.0))
            if self.monitor in ready:
                zmq.utils.monitor.recv_monitor_message(self.monitor)
                accepted += 1
            if self.sock in ready:
                messages.append(self.sock.recv_multipart())
        return accepted, messages

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def impostor():
    fake = Impostor()
    yield fake
    fake.close()


def refused_at_once(exc_type: type, match: str, address: str | None, cfg: dict) -> errors.ConnectionError:
    started = time.monotonic()
    with pytest.raises(exc_type, match=match) as info:
        Manager(address, cfg)
    elapsed = time.monotonic() - started
    assert elapsed < AT_ONCE, f"the refusal took {elapsed:.1f} s"
    return info.value


# --------------------------------------------------------------------------- (a) no keys: nothing is sent


def test_no_keys_raises_at_once_and_sends_nothing(impostor, tmp_path):
    """DESIGN principle 5: a client that finds no keys does not go plain text on its own (audit F4a: a
    plain ROUTER on the address got the submit, job env included). It raises at once, says where it
    looked and how to give keys or opt in; the impostor gets no connection and no byte."""
    cfg = client_cfg(tmp_path, request_timeout=60)
    exc = refused_at_once(transport.NoKeysFound, "no CURVE keys found for", impostor.address, cfg)
    text = str(exc)
    assert isinstance(exc, errors.ConnectionError)
    for part in (impostor.address, "$QCG_PM_KEYS not set", os.getcwd(), "'keys'", "QCG_PM_KEYS=DIR", "aux dir",
                 "--insecure-no-curve", "'insecure_no_curve': True", "QCG_PM_INSECURE_NO_CURVE=1",
                 "Nothing was sent"):
        assert part in text, (part, text)
    assert impostor.received() == (0, [])


def test_no_keys_and_no_address_uses_nothing_plain(impostor, tmp_path, monkeypatch):
    """The address from QCG_PM_ZMQ_ADDRESS (as a task of the original gets it) without keys: refused too;
    an opt-in value that is not one is named in the message."""
    monkeypatch.setenv(protocol.ADDRESS_ENV, impostor.address)
    monkeypatch.setenv(protocol.INSECURE_ENV, "0")
    exc = refused_at_once(transport.NoKeysFound, "no CURVE keys found", None, client_cfg(tmp_path))
    assert "QCG_PM_INSECURE_NO_CURVE='0' is not an opt-in" in str(exc)
    assert impostor.received() == (0, [])


def test_opted_in_client_talks_plain_text_to_whoever_listens(impostor, tmp_path, monkeypatch, caplog):
    """The opt-in is what makes plain text possible, and it is logged as a warning."""
    monkeypatch.setenv(protocol.INSECURE_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="qcg.pilotjob.api"):
        with pytest.raises(errors.ConnectionError):
            Manager(impostor.address, client_cfg(tmp_path, request_timeout=1))
    assert any("PLAIN TEXT" in r.getMessage() and protocol.INSECURE_ENV in r.getMessage() for r in caplog.records)
    accepted, messages = impostor.received()
    assert accepted >= 1 and messages, "the opted-in client should have sent its request"


def test_connection_without_keys_needs_the_opt_in(impostor):
    """The transport itself refuses `keys=None` unless told `insecure=True`."""
    with pytest.raises(transport.NoKeysFound, match="insecure=True"):
        transport.ServiceConnection(impostor.address, None, timeout=30)
    assert impostor.received() == (0, [])


# --------------------------------------------------------------------------- (b) the explicit opt-in works


@pytest.fixture
def plain_service(tmp_path):
    """A real `qcg-gov --net --insecure-no-curve` service; yields its address."""
    wd = tmp_path / "plainwd"
    wd.mkdir()
    gov = shutil.which("qcg-gov")
    cmd = [gov] if gov else [sys.executable, "-c", "from qcg.pilotjob.governor.cli import program; program()"]
    proc = subprocess.Popen([*cmd, "--net", "--insecure-no-curve", "--nodes", "2", "--wd", str(wd), "--id", "plain"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    aux = wd / ".qcgpjm-service-plain"
    deadline = time.monotonic() + WAIT
    while (address := transport.read_aux_address(str(aux))) is None:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the service did not write its address"
        time.sleep(0.05)
    yield address
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    proc.stderr.close()


def test_env_opt_in_reaches_an_insecure_service(plain_service, tmp_path, monkeypatch):
    """README `--insecure-no-curve`: scripts of the original run unchanged against a legacy service once
    QCG_PM_INSECURE_NO_CURVE=1 is set; without it the same client is refused before sending anything."""
    refused_at_once(transport.NoKeysFound, "--insecure-no-curve is reached in plain text only",
                    plain_service, client_cfg(tmp_path))
    monkeypatch.setenv(protocol.INSECURE_ENV, "1")
    out = tmp_path / "plain.out"
    with Manager(plain_service, client_cfg(tmp_path)) as m:
        assert m.resources()["total_cores"] == 2
        m.submit(Jobs().add(name="j", exec="/bin/sh", args=["-c", f"echo $V > {out}"], env={"V": "ok"}))
        assert m.wait4("j", timeout=WAIT) == {"j": "SUCCEED"}
    assert out.read_text().strip() == "ok"


def test_cfg_opt_in_reaches_an_insecure_service(plain_service, tmp_path):
    with Manager(plain_service, client_cfg(tmp_path, insecure_no_curve=True)) as m:
        assert m.resources()["total_cores"] == 2


def test_local_manager_with_insecure_no_curve_opts_in_by_itself(tmp_path):
    """LocalManager that starts its service with --insecure-no-curve needs no other opt-in; it warns the user
    (issue 4: the opt-out "prints a warning"), as the service's warning goes to a stderr the user never sees."""
    wd = tmp_path / "wd"
    wd.mkdir()
    with pytest.warns(RuntimeWarning, match="--insecure-no-curve.*unauthenticated"):
        m = LocalManager(["--nodes", "1", "--wd", str(wd), "--insecure-no-curve"], client_cfg(tmp_path))
    with m:
        assert m._keys is None
        assert m.resources()["total_cores"] == 1


def test_opted_in_client_without_keys_is_refused_by_a_curve_service(lm, tmp_path, monkeypatch):
    """The opt-in does not get around CURVE: a CURVE service refuses the plain client, quickly."""
    monkeypatch.setenv(protocol.INSECURE_ENV, "1")
    with pytest.raises(errors.ConnectionError, match="requires CURVE keys and none were found"):
        Manager(lm.address, client_cfg(tmp_path, request_timeout=60))
    assert lm.resources()["total_cores"] == 1


# --------------------------------------------------------------------------- (c) only the user's own keys


@pytest.fixture(scope="module")
def other_user():
    """The uid of a real second user (created with useradd, removed afterwards if created here)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: keys owned by another user are made with useradd and chown")
    if shutil.which("useradd") is None:
        pytest.skip("useradd is missing: cannot create a second user")
    created = False
    try:
        uid = pwd.getpwnam(OTHER_USER).pw_uid
    except KeyError:
        r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                           capture_output=True, text=True, timeout=60)
        if r.returncode not in (0, 9):  # 9: created meanwhile by another test worker
            pytest.skip(f"useradd failed: {r.stderr.strip()}")
        created = r.returncode == 0
        uid = pwd.getpwnam(OTHER_USER).pw_uid
    yield uid
    if created and shutil.which("userdel"):
        subprocess.run(["userdel", OTHER_USER], capture_output=True, timeout=60)


@pytest.fixture
def lm(tmp_path):
    """A CURVE service of this user, started in `<tmp>/shared` (its aux dir is found from there)."""
    wd = tmp_path / "shared"
    wd.mkdir()
    yield from local_manager(["--nodes", "1", "--wd", str(wd)], client_cfg(tmp_path))


def chown_tree(path: Path, uid: int) -> None:
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, -1)
    os.chown(path, uid, -1)


def copy_keys(lm: LocalManager, dest: Path) -> Path:
    """A copy of the run's keys dir (modes kept: 0700 dir, 0600 files)."""
    shutil.copytree(os.path.join(lm.aux_dir, protocol.KEYS_DIR), dest)
    return dest


def test_own_keys_of_the_service_pass(lm, tmp_path, monkeypatch):
    """The service's keys (0600 files in a 0700 dir, governor/keys.py) are trusted, also as a copy."""
    keys = copy_keys(lm, tmp_path / "mine")
    with Manager(lm.address, client_cfg(tmp_path), keys=str(keys)) as m:
        assert m.resources()["total_cores"] == 1
    monkeypatch.setenv(protocol.KEYS_ENV, str(keys))
    with Manager(lm.address, client_cfg(tmp_path)) as m:
        assert m.resources()["total_cores"] == 1


def test_keys_of_another_user_are_refused(lm, other_user, tmp_path, monkeypatch):
    """DESIGN principle 5, README "Python API": keys another user owns are refused (cfg, keys=, QCG_PM_KEYS,
    an aux dir), naming the path, the owner and why; nothing is connected."""
    keys = copy_keys(lm, tmp_path / "theirs")
    chown_tree(keys, other_user)
    match = f"refusing the CURVE keys: key directory {keys} is owned by uid {other_user}.*not by you"
    refused_at_once(transport.KeysRefused, match, lm.address, client_cfg(tmp_path, keys=str(keys)))
    monkeypatch.setenv(protocol.KEYS_ENV, str(keys))
    refused_at_once(transport.KeysRefused, match, lm.address, client_cfg(tmp_path))
    # only the files another user's: still refused
    os.chown(keys, os.geteuid(), -1)
    refused_at_once(transport.KeysRefused, f"key file {keys}/server.key is owned by uid {other_user}",
                    lm.address, client_cfg(tmp_path))


def test_aux_dir_of_another_user_is_skipped(lm, other_user, impostor, tmp_path, monkeypatch):
    """Audit F4b: an aux dir another user made in a shared directory (keys, an address of their own, a
    modification time in the future) is never picked: the user's own aux dir is, and with none of them
    left the error says what was skipped. The impostor gets nothing."""
    shared = Path(lm.wd)
    evil = shared / ".qcgpjm-service-evil"
    evil.mkdir()
    (evil / "address").write_text(impostor.address)
    copy_keys(lm, evil / protocol.KEYS_DIR)
    chown_tree(evil, other_user)
    future = time.time() + 86400
    os.utime(evil, (future, future))

    monkeypatch.chdir(shared)
    with Manager(cfg=client_cfg(tmp_path)) as m:
        assert m.address == lm.address
        assert m.resources()["total_cores"] == 1

    alone = tmp_path / "alone"
    alone.mkdir()
    os.rename(evil, alone / evil.name)
    monkeypatch.chdir(alone)
    exc = refused_at_once(transport.NoKeysFound, "no CURVE keys found", None, client_cfg(tmp_path))
    assert f"skipped {alone / evil.name}: owned by uid {other_user}" in str(exc)
    assert impostor.received() == (0, [])


def test_local_manager_refuses_an_aux_dir_of_another_user(other_user, tmp_path):
    """An aux dir planted in a shared wd under the id the LocalManager uses is not its service's."""
    wd = tmp_path / "wd"
    wd.mkdir()
    planted = wd / ".qcgpjm-service-planted"
    planted.mkdir()
    (planted / "address").write_text("tcp://127.0.0.1:9")
    chown_tree(planted, other_user)
    with pytest.raises(errors.ServiceError, match=f"is owned by uid {other_user}"):
        LocalManager(["--nodes", "1", "--wd", str(wd), "--id", "planted"], client_cfg(tmp_path, init_timeout=WAIT))


@pytest.mark.parametrize("target,mode,why", [
    ("", 0o777, "key directory .* has mode 0777: writable by group/others"),
    ("", 0o770, "has mode 0770: writable by group/others"),
    (protocol.SERVER_PUBLIC, 0o666, "key file .*server.key has mode 0666: writable by group/others"),
    (protocol.CLIENT_SECRET, 0o640, "secret key file .*client.key_secret has mode 0640: readable"),
])
def test_keys_others_may_change_or_read_are_refused(lm, tmp_path, target, mode, why):
    """Our own keys with a loose mode are refused too (a 0777 keys dir lets anyone swap the server key)."""
    keys = copy_keys(lm, tmp_path / "loose")
    os.chmod(keys / target if target else keys, mode)
    exc = refused_at_once(transport.KeysRefused, why, lm.address, client_cfg(tmp_path, keys=str(keys)))
    assert "chmod" in str(exc)


# --------------------------------------------------------------------------- (d) too deeply nested requests


def _dealer(lm: LocalManager, ctx: zmq.Context) -> zmq.Socket:
    keys = transport.find_keys(lm.aux_dir)
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = \
        keys.server_public, keys.client_public, keys.client_secret
    sock.connect(lm.address)
    return sock


def _ask(sock: zmq.Socket, frame: bytes) -> bytes:
    sock.send_multipart([b"", frame])
    assert sock.poll(WAIT * 1000, zmq.POLLIN), "no answer from the service"
    return sock.recv_multipart()[-1]


def test_deeply_nested_requests_get_an_error_response(lm):
    """Audit F6b, DESIGN "Clear errors"/"never a crash": JSON nested 100 000 deep (RecursionError in the
    decoder) and msgpack nested past its stack (StackError) are answered like any malformed request, the
    next request is served, and the service log has no traceback."""
    ctx = zmq.Context()
    try:
        sock = _dealer(lm, ctx)
        deep = 100_000
        for frame in (b'{"request": ' + b"[" * deep + b"]" * deep + b"}",
                      b'{"a":' * deep + b"1" + b"}" * deep):
            answer = json.loads(_ask(sock, frame))
            assert answer["code"] != 0 and "nested too deeply" in answer["message"], answer
            assert json.loads(_ask(sock, json.dumps({"request": "resourcesInfo"}).encode()))["code"] == 0
        answer = msgpack.unpackb(_ask(sock, b"\x81\xa1a" * deep + b"\xc0"), raw=False)
        assert answer["code"] != 0 and "nested too deeply" in answer["message"], answer
        answer: Any = msgpack.unpackb(_ask(sock, protocol.encode({"request": "resourcesInfo"})), raw=False)
        assert answer["code"] == 0
        sock.close(linger=0)
    finally:
        ctx.term()
    assert lm.resources()["total_cores"] == 1
    assert "Traceback" not in Path(lm.aux_dir, "service.log").read_text()


def test_decode_turns_every_decoder_failure_into_a_protocol_error():
    for frame in (b"[" * 100_000, b'{"a":' * 100_000, b"\x91" * 100_000 + b"\xc0", b"{\xff}", b"\xc1"):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode(frame)
