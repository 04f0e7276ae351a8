"""What a launcher's start must not load: each of these cost every service, partition manager and node agent
start-up time and resident memory, measured when it crept in.

* `tempfile` (with shutil, bz2, lzma, random): about 5 ms of each start (the run lock used it for a while);
* `hashlib`: OpenSSL, 3.8 MiB of resident memory and 5 ms (the run lock's names, before zlib checksums).

The modules are marked absent in a fresh interpreter (the `site` of some installations loads `tempfile`
itself), so an import of one anywhere on the start path fails the run below.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

ABSENT = ("tempfile", "shutil", "hashlib", "_hashlib")

START = textwrap.dedent(f"""
    import sys
    for name in {ABSENT!r}:
        sys.modules[name] = None
    import qcg.pilotjob.governor.cli, qcg.pilotjob.governor.service, qcg.pilotjob.governor.manager_boot
    import qcg.pilotjob.agent.agent, qcg.pilotjob.partition.launcher
    from qcg.pilotjob.agent.run_lock import RunLock
    from qcg.pilotjob.governor.service import governor_parts

    governor_parts()                                # what Service.run loads before its loop starts
    RunLock(sys.argv[1], "n1")
""")


def test_a_launchers_start_loads_none_of_the_costly_modules(tmp_path):
    run = subprocess.run([sys.executable, "-c", START, str(tmp_path)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr
