"""Wire format shared by the service, its clients and (later) partitions and agents.

A message is one ZMQ frame holding a msgpack map with the protocol version
under `"v"`. Requests carry `"request"` (the reference's request names) and
an optional `"id"` echoed in the response; responses carry `"code"`
(0 = success), `"message"` and `"data"` as in the reference.

For clients written for the original, a frame that starts with `{` is read
as a JSON request and answered in JSON (the original's envelope).

Events on the publisher socket are two frames: topic, msgpack map.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import msgpack

# 2: state changes are published under `<kind>.<STATE>` (was: `job`, `task`); a client and a service of
# different versions refuse each other's requests at once instead of missing each other's events
PROTOCOL_VERSION = 2
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# publisher topics. A state change leaves under `<kind>.<STATE>` (`event_topic`), so a subscriber
# chooses by prefix: `job` takes every job event, `job.SUCCEED` only those; the client API subscribes
# to the final states only (`FINAL_EVENT_TOPICS`), and the PUB socket drops the rest unsent.
TOPIC_JOB = b"job"          # a job changed state: {"v", "job", "state", "manager"}
TOPIC_TASK = b"task"        # an iteration changed state: {"v", "job", "it", "state", "manager"}
TOPIC_NO_JOBS = b"nojobs"   # every job is in a final state: {"v", "manager"}
FINAL_STATE_NAMES = ("SUCCEED", "FAILED", "CANCELED", "OMITTED")


def event_topic(kind: bytes, state: str) -> bytes:
    """The topic of a state change of a job (`TOPIC_JOB`) or an iteration (`TOPIC_TASK`)."""
    return kind + b"." + state.encode()


def is_state_event(topic: bytes) -> bool:
    """Whether `topic` announces a state change (of a job or an iteration), not `nojobs`."""
    return topic.startswith((TOPIC_JOB + b".", TOPIC_TASK + b"."))


FINAL_EVENT_TOPICS = tuple(event_topic(kind, state) for kind in (TOPIC_JOB, TOPIC_TASK)
                           for state in FINAL_STATE_NAMES) + (TOPIC_NO_JOBS,)

# key files in `<aux dir>/keys/` (z85 text, mode 0600)
KEYS_DIR = "keys"
AUX_DIR_PREFIX = ".qcgpjm-service-"    # a run's aux dir in its working dir: <prefix><instance id>
SERVER_PUBLIC = "server.key"
SERVER_SECRET = "server.key_secret"
CLIENT_PUBLIC = "client.key"
CLIENT_SECRET = "client.key_secret"
ADDRESS_FILE = "address"              # in the aux dir: the request endpoint, written when ready
PUB_ADDRESS_FILE = "pub_address"      # in the aux dir: the event publisher endpoint
KEYS_ENV = "QCG_PM_KEYS"              # directory with the key files (or an aux dir holding `keys/`)
INSECURE_ENV = "QCG_PM_INSECURE_NO_CURVE"   # "1": a client without keys may talk plain text (legacy services)
ADDRESS_ENV = "QCG_PM_ZMQ_ADDRESS"


# what a JSON text may start with; none of these starts a msgpack map, so a frame starting so is JSON (a JSON
# client gets its answer, an error too, in JSON)
JSON_FIRST_BYTES = frozenset(bytes([c]) for c in b'{["-0123456789tfnNI \n\t\r')
_MSGPACK_ERRORS = {ValueError: "incomplete or empty", TypeError: "a map key that is a map or a list"}


class ProtocolError(ValueError):
    """A frame that is not a valid message."""


_SENDABLE = (type(None), bool, int, float, str, bytes, list, tuple, dict)


def unencodable(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, reason) of each value msgpack cannot carry: an integer beyond 64 bits (JSON and Python have
    no limit), an object of another type. Looked for only once packing has failed: it costs a walk."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(1 << 63) <= value < (1 << 64):
            yield path, "integer out of range (more than 64 bits)"
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            yield path, "text that is not valid Unicode (a lone surrogate)"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from unencodable(key, f"{path}<key>")
            yield from unencodable(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from unencodable(item, f"{path}[{i}]")
    elif not isinstance(value, _SENDABLE):
        yield path, f"a {type(value).__name__} cannot be sent (use JSON types)"


def encode(message: dict[str, Any]) -> bytes:
    if "v" not in message:
        message = {"v": PROTOCOL_VERSION, **message}
    return msgpack.packb(message, use_bin_type=True)


def decode(frame: bytes) -> tuple[dict[str, Any], bool]:
    """(message, is_json). Raises ProtocolError with a readable reason."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(frame)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    if frame[:1] in JSON_FIRST_BYTES:
        try:
            msg = json.loads(frame.decode("utf-8"))
        except RecursionError:
            raise ProtocolError("malformed JSON request: nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"malformed JSON request: {exc}") from None
        except Exception as exc:  # anything else the decoder raises is bad input as well, never a crash
            raise ProtocolError(f"malformed JSON request: {type(exc).__name__}") from None
        if not isinstance(msg, dict):
            raise ProtocolError("a JSON request must be an object")
        return msg, True
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except (msgpack.StackError, RecursionError):
        raise ProtocolError("malformed msgpack message: nested too deeply") from None
    except msgpack.ExtraData:
        raise ProtocolError("not a request: neither a JSON object nor one msgpack map") from None
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"malformed msgpack message: {_MSGPACK_ERRORS.get(type(exc), 'cannot be decoded')}") \
            from None
    if not isinstance(msg, dict):
        raise ProtocolError("a message must be a map")
    version = msg.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION})")
    return msg, False


def encode_response(response: dict[str, Any], as_json: bool, request_id: Any = None) -> bytes:
    if as_json:
        return json.dumps(response).encode("utf-8")
    out = {"v": PROTOCOL_VERSION, **response}
    if request_id is not None:
        out["id"] = request_id
    return msgpack.packb(out, use_bin_type=True)
