"""The client's log file (api/client_log.py; reference 22.1.4 cfg `log_file`, `log_level`)."""

from __future__ import annotations

import os

import pytest


def test_client_log_is_not_written_through_a_link_or_into_another_users_directory(tmp_path, monkeypatch):
    """A security review: in a shared current directory (/tmp) another user made `.qcgpjm-client` with
    `api.log` linked to a file of the victim's, and the client appended its log lines (service command
    line, address, keys path) to that file. The log is opened without following links, mode 0600, and the
    default directory must be this user's."""
    import stat as stat_mod

    from qcg.pilotjob.api import client_log, errors

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / ".qcgpjm-client").mkdir()
    os.symlink(victim, tmp_path / ".qcgpjm-client" / "api.log")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.FileError, match="symbolic links"):
        client_log.open_client_log({})
    assert victim.read_text() == "precious\n"
    if os.geteuid() == 0:
        os.unlink(tmp_path / ".qcgpjm-client" / "api.log")
        os.chown(tmp_path / ".qcgpjm-client", 65534, 65534)
        with pytest.raises(errors.FileError, match="another user's directory"):
            client_log.open_client_log({})
    handler = client_log.open_client_log({"wdir": str(tmp_path / "mine")})
    try:
        assert stat_mod.S_IMODE(os.stat(tmp_path / "mine" / ".qcgpjm-client" / "api.log").st_mode) == 0o600
    finally:
        client_log.close_client_log(handler)
