"""api/curve.read_private: what a node agent reads (address, keys) must come from a directory of its own user
that nobody else can write into. An attacker who may write into a directory above the aux dir (a
group-writable working dir) could otherwise swap in an address of theirs and receive the agents (DESIGN.md
principle 5: nobody without the run's key poses as a partition)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import zmq

from qcg.pilotjob.api import curve

NOBODY = 65534


def _keys_dir(path):
    os.mkdir(path, 0o700)
    curve.create_pair(str(path), "agent")
    curve.create_pair(str(path), "partition")
    curve.write_private(str(path / "address"), b"tcp://127.0.0.1:9")
    return path


def test_reads_a_private_directory_of_ours(tmp_path):
    keys = _keys_dir(tmp_path / "keys")
    assert curve.read_private(str(keys), "address") == b"tcp://127.0.0.1:9"
    public, secret = curve.load_pair(str(keys), "agent")
    assert zmq.curve_public(secret) == public


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_refuses_a_directory_others_may_write_into(tmp_path, mode):
    keys = _keys_dir(tmp_path / "keys")
    os.chmod(keys, mode)
    with pytest.raises(PermissionError, match="nobody else may write"):
        curve.read_private(str(keys), "address")
    with pytest.raises(PermissionError):
        curve.load_pair(str(keys), "agent")


def test_refuses_links(tmp_path):
    keys = _keys_dir(tmp_path / "keys")
    os.symlink(keys, tmp_path / "link")
    with pytest.raises(PermissionError, match="symbolic link"):
        curve.read_private(str(tmp_path / "link"), "address")
    os.rename(keys / "address", keys / "real")
    os.symlink(keys / "real", keys / "address")
    with pytest.raises(PermissionError, match="symbolic link"):
        curve.read_private(str(keys), "address")
    with pytest.raises(FileNotFoundError):
        curve.read_private(str(keys), "missing")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory and a file to another user")
def test_refuses_what_another_user_owns(tmp_path):
    keys = _keys_dir(tmp_path / "keys")
    os.chown(keys / "address", NOBODY, -1)
    with pytest.raises(PermissionError, match="not a file of this user"):
        curve.read_private(str(keys), "address")
    os.chown(keys / "address", 0, -1)
    os.chown(keys, NOBODY, -1)
    with pytest.raises(PermissionError, match="not one of this user's"):
        curve.read_private(str(keys), "address")


def test_agent_refuses_an_address_file_in_a_group_writable_directory(tmp_path):
    """The agent exits at once with the reason, instead of connecting where the planted file says."""
    keys = _keys_dir(tmp_path / "keys")
    os.chmod(keys, 0o770)
    proc = subprocess.run([sys.executable, "-m", "qcg.pilotjob.agent", "--address-file", str(keys / "address"),
                           "--keys", str(keys), "--node", "n1", "--address-wait", "30"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "nobody else may write" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
