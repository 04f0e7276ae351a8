"""The service's network interface seen from raw ZMQ clients (issue 4, "Service side" and "Bad input").

The service runs as a subprocess with `--net`; the tests speak the wire
format of `api/protocol.py` directly (msgpack maps with "v", or the
original's JSON envelope) over DEALER and REQ sockets, with the CURVE keys
the run wrote into `<aux>/keys/`. Every wait has a timeout; nothing asserts
on durations.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from qcg.pilotjob.api import protocol
from tests.conftest import find_aux

SERVICE = [sys.executable, "-m", "qcg.pilotjob.service"]
START_TIMEOUT = 30.0
REPLY_TIMEOUT = 10.0
SILENCE = 1.5          # how long a refused peer is listened to (it must get nothing at all)


# --------------------------------------------------------------------------- helpers
class NetService:
    """One `--net` service process; `aux` is its aux dir, `address`/`pub_address` what it wrote there."""

    def __init__(self, tmp: Path, *args: str, nodes: str = "2", wait_ready: bool = True) -> None:
        self.wd = tmp / "wd"
        self.aux = self.wd / ".qcgpjm-service-ztest"
        self.stderr_path = tmp / "service.stderr"
        self.argv = [*SERVICE, "--wd", str(self.wd), "--id", "ztest", "--nodes", nodes, *args]
        if not any(a.startswith("--net") for a in args):
            self.argv.append("--net")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr, cwd=str(tmp))
        self.ctx = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        self.address = self.pub_address = ""
        if wait_ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        path = self.aux / "address"
        while not path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"service ended with {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"service not ready in {START_TIMEOUT} s: {self.stderr()}")
            time.sleep(0.01)
        self.address = path.read_text()
        pub = self.aux / "pub_address"
        self.pub_address = pub.read_text() if pub.exists() else ""

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def key(self, name: str) -> bytes:
        return (self.aux / protocol.KEYS_DIR / name).read_bytes()

    def socket(self, kind: int, *, curve: str | None = "run", address: str | None = None) -> zmq.Socket:
        """A connected socket: curve "run" = the run's client keys, "wrong" = a foreign key pair, None = plain."""
        sock = self.ctx.socket(kind)
        sock.linger = 0
        sock.sndtimeo = int(REPLY_TIMEOUT * 1000)   # a send to a peer that refused us must not block forever
        if curve == "run":
            sock.curve_serverkey = self.key(protocol.SERVER_PUBLIC)
            sock.curve_publickey = self.key(protocol.CLIENT_PUBLIC)
            sock.curve_secretkey = self.key(protocol.CLIENT_SECRET)
        elif curve == "wrong":
            public, secret = zmq.curve_keypair()
            sock.curve_serverkey = self.key(protocol.SERVER_PUBLIC)
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        sock.connect(address or self.address)
        self.sockets.append(sock)
        return sock

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"service still running {timeout} s later: {self.stderr()}") from None

    def close(self) -> None:
        for s in self.sockets:
            s.close(linger=0)
        self.ctx.term()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._stderr.close()


@pytest.fixture
def net_service(tmp_path: Path):
    started: list[NetService] = []

    def start(*args: str, **kw: Any) -> NetService:
        svc = NetService(tmp_path, *args, **kw)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.close()


def recv(sock: zmq.Socket, timeout: float = REPLY_TIMEOUT) -> list[bytes]:
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError(f"no reply within {timeout} s")
    return sock.recv_multipart()


def nothing_arrives(sock: zmq.Socket, within: float = SILENCE) -> bool:
    return sock.poll(int(within * 1000)) == 0


def ask(sock: zmq.Socket, request: dict[str, Any]) -> dict[str, Any]:
    """One msgpack request on a DEALER or REQ socket; the decoded response."""
    sock.send(protocol.encode(request))
    frames = recv(sock)
    return msgpack.unpackb(frames[-1], raw=False)


def ask_json(sock: zmq.Socket, request: dict[str, Any]) -> dict[str, Any]:
    sock.send(json.dumps(request).encode())
    frames = recv(sock)
    assert frames[-1][:1] == b"{", frames
    return json.loads(frames[-1])


def marker_job(name: str, path: Path) -> dict[str, Any]:
    return {"name": name, "execution": {"exec": "/bin/sh", "args": ["-c", f"echo done > {path}"]}}


# --------------------------------------------------------------------------- serving
def test_dealer_and_req_msgpack_and_json(net_service, tmp_path: Path) -> None:
    """Both envelopes (REQ [id, "", payload], DEALER [id, payload]) and both encodings (issue 4 "Wire format")."""
    svc = net_service()
    dealer = svc.socket(zmq.DEALER)
    resp = ask(dealer, {"request": "resourcesInfo", "id": 41})
    assert resp["code"] == 0 and resp["v"] == protocol.PROTOCOL_VERSION and resp["id"] == 41
    assert resp["data"]["total_cores"] == 2

    done = tmp_path / "json-job.out"
    resp = ask_json(dealer, {"request": "submit", "jobs": [marker_job("j1", done)]})
    assert resp == {"code": 0, "message": "1 jobs submitted", "data": {"submitted": 1, "jobs": ["j1"]}}

    req = svc.socket(zmq.REQ)
    resp = ask(req, {"request": "jobStatus", "jobNames": ["j1"]})
    assert resp["code"] == 0 and "j1" in resp["data"]["jobs"]
    resp = ask_json(req, {"request": "listJobs"})           # REQ socket, original's JSON
    assert resp["code"] == 0 and "j1" in resp["data"]["jobs"]

    status = ask(dealer, {"request": "status"})["data"]["System"]
    assert "ZMQ" in status["Ifaces"]
    assert status["Zmqaddress"] == svc.address
    assert status["StatusPublisher"] == svc.pub_address and svc.pub_address.startswith("tcp://127.0.0.1:")
    assert svc.address.startswith("tcp://127.0.0.1:")      # loopback unless an interface is asked for

    # keys: dir 0700, files 0600 (DESIGN.md principle 5)
    keys = svc.aux / protocol.KEYS_DIR
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for f in keys.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f

    resp = ask(dealer, {"request": "finish"})
    assert resp["code"] == 0
    assert svc.wait_exit() == 0
    final = json.loads((svc.aux / "final_status.json").read_text())
    assert final["System"]["Ifaces"] == ["ZMQ"] and final["System"]["StatusPublisher"] is None


def test_task_environment_has_address_and_keys(net_service, tmp_path: Path) -> None:
    """Tasks get QCG_PM_ZMQ_ADDRESS (reference, facts 9) and QCG_PM_KEYS, and can talk to their service."""
    svc = net_service()
    dealer = svc.socket(zmq.DEALER)
    out = tmp_path / "env.out"
    client = tmp_path / "client.py"
    client.write_text(
        "import os, zmq, msgpack\n"
        "k = os.environ['QCG_PM_KEYS']\n"
        "rd = lambda n: open(os.path.join(k, n), 'rb').read()\n"
        "s = zmq.Context().socket(zmq.REQ)\n"
        "s.curve_serverkey = rd('server.key'); s.curve_publickey = rd('client.key')\n"
        "s.curve_secretkey = rd('client.key_secret')\n"
        "s.connect(os.environ['QCG_PM_ZMQ_ADDRESS'])\n"
        f"s.send(msgpack.packb({{'v': {protocol.PROTOCOL_VERSION}, 'request': 'resourcesInfo'}}))\n"
        "assert s.poll(10000), 'no reply'\n"
        "r = msgpack.unpackb(s.recv())\n"
        f"open({str(out)!r}, 'w').write(os.environ['QCG_PM_ZMQ_ADDRESS'] + ' ' + k + ' ' + str(r['code']))\n")
    resp = ask(dealer, {"request": "submit", "jobs": [
        {"name": "t", "execution": {"exec": sys.executable, "args": [str(client)]}}]})
    assert resp["code"] == 0, resp
    ask(dealer, {"request": "control", "command": "finishAfterAllTasksDone"})
    assert svc.wait_exit() == 0
    assert out.read_text().split() == [svc.address, str(svc.aux / protocol.KEYS_DIR), "0"]


# --------------------------------------------------------------------------- security
@pytest.mark.parametrize("curve", [None, "wrong"])
@pytest.mark.parametrize("kind", [zmq.DEALER, zmq.REQ])
def test_peer_without_key_gets_nothing(net_service, tmp_path: Path, curve: str | None, kind: int) -> None:
    """A peer without the run's client key (plain, or a foreign key pair) gets no reply and runs nothing.

    Issue 4 "Security": "A peer without the key gets nothing and can execute nothing -- test it."
    """
    svc = net_service()
    intruder = svc.socket(kind, curve=curve)
    intruder.sndtimeo = 500
    marker = tmp_path / "intruder.out"
    intruder.send(json.dumps({"request": "submit", "jobs": [marker_job("evil", marker)]}).encode())
    assert nothing_arrives(intruder)
    if kind == zmq.DEALER:
        for request in ({"request": "submit", "jobs": [marker_job("evil2", marker)]}, {"request": "finish"}):
            try:
                intruder.send(protocol.encode(request))
            except zmq.Again:      # no connection ever completes: nowhere to queue the message
                pass
        assert nothing_arrives(intruder)

    good = svc.socket(zmq.DEALER)
    resp = ask(good, {"request": "listJobs"})
    assert resp["code"] == 0 and resp["data"]["length"] == 0, resp
    assert svc.proc.poll() is None                       # the intruder's finish did nothing
    assert not marker.exists()
    # the refusal is logged
    ask(good, {"request": "finish"})
    svc.wait_exit()
    assert "CURVE client refused" in (svc.aux / "service.log").read_text() or curve is None


def test_subscriber_without_key_gets_no_events(net_service) -> None:
    svc = net_service()
    spy = svc.socket(zmq.SUB, curve="wrong", address=svc.pub_address)
    spy.subscribe(b"")
    plain = svc.socket(zmq.SUB, curve=None, address=svc.pub_address)
    plain.subscribe(b"")
    good = svc.socket(zmq.DEALER)
    assert ask(good, {"request": "submit", "jobs": [{"name": f"p{i}", "execution": {"exec": "/bin/true"}}
                                                     for i in range(5)]})["code"] == 0
    ask(good, {"request": "control", "command": "finishAfterAllTasksDone"})
    svc.wait_exit()
    assert nothing_arrives(spy, 0.2) and nothing_arrives(plain, 0.2)


def test_insecure_no_curve_serves_plain_json_req(net_service, tmp_path: Path) -> None:
    """`--insecure-no-curve`: a plain JSON REQ client as written for the original works, with a warning."""
    svc = net_service("--net", "--insecure-no-curve")
    req = svc.socket(zmq.REQ, curve=None)
    resp = ask_json(req, {"request": "resourcesInfo"})
    assert resp == {"code": 0, "data": {"total_nodes": 1, "total_cores": 2, "used_cores": 0, "free_cores": 2}}
    done = tmp_path / "plain.out"
    assert ask_json(req, {"request": "submit", "jobs": [marker_job("p", done)]})["code"] == 0
    assert ask_json(req, {"request": "control", "command": "finishAfterAllTasksDone"})["code"] == 0
    assert svc.wait_exit() == 0
    assert done.exists()
    assert "insecure-no-curve" in svc.stderr() and "WARNING" in svc.stderr()
    assert "insecure-no-curve" in (svc.aux / "service.log").read_text()
    assert not (svc.aux / protocol.KEYS_DIR / protocol.CLIENT_SECRET).exists()
    assert "every interface" not in svc.stderr()


def test_insecure_no_curve_warning_says_when_every_interface_listens(net_service) -> None:
    """The warning named the address clients are given (127.0.0.1) while the socket listened on every
    interface, where a plain request from another host was answered (a security review)."""
    svc = net_service("--net", "--insecure-no-curve", "--net-interface", "0.0.0.0")
    req = svc.socket(zmq.REQ, curve=None)
    assert ask_json(req, {"request": "control", "command": "finishAfterAllTasksDone"})["code"] == 0
    assert svc.wait_exit() == 0
    assert "listening on every interface of this host" in svc.stderr(), svc.stderr()


def test_insecure_no_curve_publishes_the_originals_events_too(net_service, tmp_path: Path) -> None:
    """`--insecure-no-curve` is for clients of the original 0.14.2: its client reads `StatusPublisher` from
    `status`, subscribes to the strings "IFI", "JFI", "NOJ" and then waits on those events only (its
    `wait4` hung for ever on ours). Final states also leave in its form, one string frame
    `<topic> <json>`; a subscriber of our topics gets none of them."""
    svc = net_service("--net", "--insecure-no-curve")
    req = svc.socket(zmq.REQ, curve=None)
    pub = ask_json(req, {"request": "status"})["data"]["System"]["StatusPublisher"]
    legacy = svc.socket(zmq.SUB, curve=None, address=pub)
    for topic in ("IFI", "JFI", "NOJ"):
        legacy.setsockopt_string(zmq.SUBSCRIBE, topic)
    ours = svc.socket(zmq.SUB, curve=None, address=pub)
    for topic in protocol.FINAL_EVENT_TOPICS:
        ours.subscribe(topic)
    time.sleep(0.5)                     # a PUB drops what it sends before the subscription arrives
    jobs = [{"name": "it", "iteration": {"stop": 2}, "execution": {"exec": "/bin/true"}},
            {"name": "bad", "execution": {"exec": "/bin/false"}}]
    assert ask_json(req, {"request": "submit", "jobs": jobs})["code"] == 0
    got = []
    while len(got) < 5:
        assert legacy.poll(int(REPLY_TIMEOUT * 1000)), f"only {got}"
        topic, _, body = legacy.recv_string().partition(" ")
        got.append((topic, json.loads(body)))
    manager = got[0][1]["manager"]
    assert sorted(got, key=repr) == sorted([
        ("IFI", {"manager": manager, "job": "it", "state": "SUCCEED", "it": 0}),
        ("IFI", {"manager": manager, "job": "it", "state": "SUCCEED", "it": 1}),
        ("JFI", {"manager": manager, "job": "it", "state": "SUCCEED"}),
        ("JFI", {"manager": manager, "job": "bad", "state": "FAILED"}),
        ("NOJ", {"manager": manager})], key=repr)
    assert got[-1][0] == "NOJ"
    mine = []
    while ours.poll(200):
        mine.append(ours.recv_multipart())
    assert len(mine) == 5 and all(len(frames) == 2 for frames in mine)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("frame", [b"[1, 2, 3]", b'"submit"', b"42", b"-1", b"null", b"true", b"[{", b"NaN",
                                   b"Infinity"])
def test_a_json_request_that_is_no_object_is_answered_in_json(net_service, frame: bytes) -> None:
    """Reference 10.3 (requests are JSON objects): a JSON text that is no object (or broken) gets its error
    answer in JSON, which the original's clients read; it used to be answered in msgpack."""
    svc = net_service()
    dealer = svc.socket(zmq.DEALER)
    dealer.send(frame)
    reply = recv(dealer)[-1]
    resp = json.loads(reply)
    assert resp["code"] != 0 and "JSON request" in resp["message"], resp
    assert ask(dealer, {"request": "resourcesInfo"})["code"] == 0


def _fuzz_frames(rng: random.Random, n: int) -> list[list[bytes]]:
    valid = protocol.encode({"request": "submit", "jobs": [{"name": "x", "execution": {"exec": "/bin/true"}}]})
    names = ["submit", "jobStatus", "jobInfo", "cancelJob", "removeJob", "listJobs", "resourcesInfo",
             "status", "bogus", "", None, 7, [], {}]

    def rand_json(depth: int = 0) -> Any:
        kind = rng.randrange(7 if depth < 3 else 4)
        if kind == 0:
            return rng.randint(-2**40, 2**40)
        if kind == 1:
            return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(10)))
        if kind == 2:
            return rng.choice([None, True, False, 1.5])
        if kind == 3:
            return rng.choice(names)
        if kind == 4:
            return [rand_json(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(["request", "jobs", "jobNames", "params", "options", "command", "v", "id", "zz"]):
                rand_json(depth + 1) for _ in range(rng.randrange(5))}

    frames: list[list[bytes]] = []
    for i in range(n):
        kind = i % 8
        if kind == 0:
            frames.append([rng.randbytes(rng.randrange(0, 200))])
        elif kind == 1:
            frames.append([valid[:rng.randrange(0, len(valid))]])                 # truncated msgpack
        elif kind == 2:
            frames.append([json.dumps(rand_json()).encode()])                    # random JSON values
        elif kind == 3:
            obj = {"request": rng.choice(names), **{k: rand_json(1) for k in ("jobs", "jobNames", "params")}}
            frames.append([json.dumps(obj).encode()[: rng.randrange(1, 400)]])   # invalid (cut) JSON
        elif kind == 4:
            body = {"v": rng.choice([1, 1, 0, 2, "1", None]), "request": rng.choice(names),
                    "jobNames": rand_json(1), "jobs": rand_json(1), "id": rand_json(2)}
            frames.append([msgpack.packb(body)])                                 # wrong types / versions
        elif kind == 5:
            frames.append([msgpack.packb(rand_json())])                          # msgpack, not a map
        elif kind == 6:
            frames.append([rng.randbytes(8) for _ in range(rng.randrange(2, 5))])  # too many frames
        else:
            frames.append([b""])                                                 # empty frame
    return frames


def test_fuzz_random_frames_then_normal_request(net_service) -> None:
    """Thousands of malformed frames: an error response each, the service stays up (issue 4 "Bad input")."""
    svc = net_service()
    dealer = svc.socket(zmq.DEALER)
    dealer.sndhwm = dealer.rcvhwm = 0
    frames = _fuzz_frames(random.Random(1234), 3000)
    replies: list[bytes] = []

    def receiver() -> None:
        while len(replies) < len(frames):
            if not dealer.poll(int(REPLY_TIMEOUT * 1000)):
                return
            replies.append(dealer.recv_multipart()[-1])

    # DEALER sockets are not thread-safe: receive only after all sends, in this thread
    for msg in frames:
        dealer.send_multipart(msg)
    receiver()
    assert len(replies) == len(frames)
    codes = []
    for raw in replies:
        resp = json.loads(raw) if raw[:1] == b"{" else msgpack.unpackb(raw, raw=False)
        assert resp["code"] in (0, 1) and (resp["code"] == 0 or resp["message"]), resp
        # reasons in words, not Python's names for them (the fuzzer saw "malformed msgpack message: ExtraData")
        assert not re.search(r"Error\b|ExtraData|NoneType|Traceback", resp.get("message") or ""), resp
        codes.append(resp["code"])
    assert codes.count(1) > len(frames) * 0.9

    # a REQ peer sending garbage gets an error and can go on
    req = svc.socket(zmq.REQ)
    req.send(b"\xc1\xff garbage")
    assert msgpack.unpackb(recv(req)[-1])["code"] == 1
    # a big but allowed frame: an error response; beyond MAX_MESSAGE_BYTES: libzmq drops the connection
    big = svc.socket(zmq.DEALER)
    big.send(b"\x00" * (8 * 1024 * 1024))
    assert msgpack.unpackb(recv(big)[-1])["code"] == 1
    huge = svc.socket(zmq.DEALER)
    huge.send(b"{" + b" " * (protocol.MAX_MESSAGE_BYTES + 1))
    assert nothing_arrives(huge)

    assert svc.proc.poll() is None
    resp = ask(req, {"request": "resourcesInfo"})
    assert resp["code"] == 0 and resp["data"]["total_cores"] == 2
    fresh = svc.socket(zmq.DEALER)
    assert ask(fresh, {"request": "submit", "jobs": [{"name": "after-fuzz", "execution": {"exec": "/bin/true"}}]}
               )["code"] == 0
    log = (svc.aux / "service.log").read_text()
    assert "malformed request refused" in log
    ask(fresh, {"request": "finish"})
    assert svc.wait_exit() == 0
    assert "Traceback" not in svc.stderr()


def test_a_client_of_another_protocol_version_is_refused(net_service) -> None:
    """A client of another protocol version (1: events under `job`/`task`) gets an error naming both
    versions at its first request, instead of a service whose events it would silently miss; a client of
    this version is served on."""
    svc = net_service()
    dealer = svc.socket(zmq.DEALER)
    dealer.send(msgpack.packb({"v": protocol.PROTOCOL_VERSION - 1, "request": "resourcesInfo"}))
    resp = msgpack.unpackb(recv(dealer)[-1])
    assert resp["code"] != 0
    assert f"unsupported protocol version {protocol.PROTOCOL_VERSION - 1}" in resp["message"]
    assert f"speaks {protocol.PROTOCOL_VERSION}" in resp["message"]
    assert ask(dealer, {"request": "resourcesInfo"})["code"] == 0
    ask(dealer, {"request": "finish"})
    assert svc.wait_exit() == 0


def test_concurrent_clients_none_lost(net_service) -> None:
    """Many clients at once on one ROUTER socket; `control finishAfterAllTasksDone` ends the run after all."""
    svc = net_service("--net", nodes="2")
    clients, per_client = 8, 150
    results: list[Any] = [None] * clients

    def submit(i: int) -> None:
        sock = svc.socket(zmq.DEALER)
        jobs = [{"name": f"c{i}-{k}", "execution": {"exec": "/bin/true"}} for k in range(per_client)]
        sock.send(protocol.encode({"request": "submit", "jobs": jobs, "id": i}))
        results[i] = msgpack.unpackb(recv(sock)[-1])

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None and r["code"] == 0 and r["data"]["submitted"] == per_client for r in results), results
    assert [r["id"] for r in results] == list(range(clients))
    ctl = svc.socket(zmq.DEALER)
    assert ask(ctl, {"request": "control", "command": "finishAfterAllTasksDone"})["code"] == 0
    assert svc.wait_exit(120) == 0
    report = [json.loads(line) for line in (svc.aux / "jobs.report").read_text().splitlines() if line.strip()]
    assert sum(1 for e in report if e["state"] == "SUCCEED") == clients * per_client


# --------------------------------------------------------------------------- events
def test_pub_events_executing_and_succeed(net_service, tmp_path: Path) -> None:
    """PUB events for a submitted job, EXECUTING included, then SUCCEED, then `nojobs` (reference 22.1.4:
    the waits are driven by the status publisher). The state is in the topic: a second subscriber with
    the client API's topics gets the final states and `nojobs` only, in the same order."""
    svc = net_service()
    sub = svc.socket(zmq.SUB, address=svc.pub_address)
    sub.subscribe(b"")
    finals = svc.socket(zmq.SUB, address=svc.pub_address)
    for topic in protocol.FINAL_EVENT_TOPICS:
        finals.subscribe(topic)
    dealer = svc.socket(zmq.DEALER)
    # a SUB socket joins asynchronously: probe with tiny jobs until events flow
    deadline = time.monotonic() + START_TIMEOUT
    probe = 0
    while True:
        assert time.monotonic() < deadline, "no event ever reached the subscriber"
        ask(dealer, {"request": "submit", "jobs": [{"name": f"probe{probe}", "execution": {"exec": "/bin/true"}}]})
        probe += 1
        if sub.poll(1000) and finals.poll(1000):
            break
    # let the probes finish (their nojobs event marks it), drain their events
    while True:
        topic, _ = recv(sub)
        if topic == protocol.TOPIC_NO_JOBS and ask(dealer, {"request": "status", "options": {
                "allJobsFinished": True}})["data"]["AllJobsFinished"]:
            break
    for s in (sub, finals):
        while not nothing_arrives(s, 0.2):
            s.recv_multipart()

    assert ask(dealer, {"request": "submit", "jobs": [
        {"name": "watched", "execution": {"exec": "/bin/sh", "args": ["-c", "sleep 0.2"]}},
        {"name": "iter", "iteration": {"stop": 2}, "execution": {"exec": "/bin/true"}},
    ]})["code"] == 0

    def until_nojobs(s: zmq.Socket) -> list[tuple[bytes, dict[str, Any]]]:
        events = []
        while True:
            topic, body = recv(s)
            events.append((topic, msgpack.unpackb(body)))
            if topic == protocol.TOPIC_NO_JOBS:
                return events

    events = until_nojobs(sub)
    assert all(t == protocol.event_topic(t.split(b".")[0], e["state"]) for t, e in events[:-1])
    job_states = [(e["job"], e["state"]) for t, e in events if t.startswith(protocol.TOPIC_JOB + b".")]
    task_states = [(e["job"], e["it"], e["state"]) for t, e in events if t.startswith(protocol.TOPIC_TASK + b".")]
    final_events = until_nojobs(finals)
    assert final_events == [(t, e) for t, e in events if e.get("state") != "EXECUTING"]
    assert nothing_arrives(finals, 0.2)
    assert job_states.index(("watched", "EXECUTING")) < job_states.index(("watched", "SUCCEED"))
    assert ("iter", "SUCCEED") in job_states
    for it in (0, 1):
        assert task_states.index(("iter", it, "EXECUTING")) < task_states.index(("iter", it, "SUCCEED"))
    assert all(e["manager"] == "ztest" and e["v"] == protocol.PROTOCOL_VERSION for _, e in events)
    ask(dealer, {"request": "finish"})
    assert svc.wait_exit() == 0


# --------------------------------------------------------------------------- options
def test_disable_pub_and_file_with_net(net_service, tmp_path: Path) -> None:
    """`--disable-pub`: no publisher; with --net the service outlives its request file until `finish`."""
    out = tmp_path / "from-file.out"
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([{"request": "submit", "jobs": [marker_job("f", out)]}]))
    svc = net_service("--net", "--disable-pub", "--file-path", str(reqs))
    dealer = svc.socket(zmq.DEALER)
    status = ask(dealer, {"request": "status"})["data"]["System"]
    assert status["StatusPublisher"] is None and not (svc.aux / "pub_address").exists()
    assert status["Ifaces"] == ["FILE", "ZMQ"]
    deadline = time.monotonic() + 30
    while ask(dealer, {"request": "jobStatus", "jobNames": ["f"]})["data"]["jobs"]["f"]["data"]["status"] \
            != "SUCCEED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert out.exists() and svc.proc.poll() is None      # file done, jobs done: still serving
    ask(dealer, {"request": "finish"})
    assert svc.wait_exit() == 0


CONTROLLER = """
import json, sys
from qcg.pilotjob.api.job import Jobs
from qcg.pilotjob.api.manager import Manager
m = Manager()                                   # QCG_PM_ZMQ_ADDRESS, and the keys from the service
m.submit(Jobs().add(name="child", exec="/bin/true"))
print(json.dumps([m.resources()["total_cores"], m.wait4("child", timeout=60)]))
m.cleanup()
"""


def test_a_file_that_asks_to_finish_after_all_still_serves_its_tasks_requests(tmp_path: Path) -> None:
    """Reference 8.2 (application controller; audit helper): with `--net`, a request file ending in `control
    finishAfterAllTasksDone` left the network unserved, and a task using the API waited for ever. The
    original serves it until the last task has ended."""
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([
        {"request": "submit", "jobs": [{"name": "ctl", "execution": {
            "exec": sys.executable, "args": ["-c", CONTROLLER], "stdout": "ctl.out", "stderr": "ctl.err"}}]},
        {"request": "control", "command": "finishAfterAllTasksDone"}]))
    run = subprocess.run([*SERVICE, "--net", "--nodes", "2", "--wd", str(tmp_path), "--file-path", str(reqs)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr + (tmp_path / "ctl.err").read_text()
    assert json.loads((tmp_path / "ctl.out").read_text()) == [2, {"child": "SUCCEED"}]
    report = [json.loads(line) for line in (find_aux(tmp_path) / "jobs.report").read_text().splitlines()]
    assert {line["name"]: line["state"] for line in report} == {"ctl": "SUCCEED", "child": "SUCCEED"}


def test_exact_ports_and_port_in_use(net_service, tmp_path: Path) -> None:
    ctx = zmq.Context()
    blocker = ctx.socket(zmq.ROUTER)
    port = blocker.bind_to_random_port("tcp://127.0.0.1", 20000, 30000)
    pub_port = port + 1 if port < 29999 else port - 1
    try:
        taken = subprocess.run([*SERVICE, "--wd", str(tmp_path / "w2"), "--net-port", str(port)],
                               capture_output=True, text=True, timeout=60)
        assert taken.returncode == 1 and taken.stderr.startswith("Error: ") and str(port) in taken.stderr
        assert "Traceback" not in taken.stderr
    finally:
        blocker.close(linger=0)
        ctx.term()
    svc = net_service("--net-port", str(port), "--net-pub-port", str(pub_port))
    assert svc.address == f"tcp://127.0.0.1:{port}" and svc.pub_address == f"tcp://127.0.0.1:{pub_port}"
    ask(svc.socket(zmq.DEALER), {"request": "finish"})
    assert svc.wait_exit() == 0


def test_random_port_in_range_and_signal(net_service) -> None:
    svc = net_service("--net-port-min", "31000", "--net-port-max", "31999")
    port = int(svc.address.rsplit(":", 1)[1])
    assert 31000 <= port <= 31999
    assert ask(svc.socket(zmq.REQ), {"request": "resourcesInfo"})["code"] == 0
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.wait_exit() == 128 + signal.SIGTERM


def test_bad_port_options_are_refused(tmp_path: Path) -> None:
    r = subprocess.run([*SERVICE, "--wd", str(tmp_path), "--net-port-min", "5000", "--net-port-max", "4000"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    r = subprocess.run([*SERVICE, "--wd", str(tmp_path), "--insecure-no-curve"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Error: " in r.stderr
    assert os.path.isdir(tmp_path)
