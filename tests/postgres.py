"""A private PostgreSQL server for the tests, from Debian's `postgresql` package (as .ci/run installs it):
initdb into a fresh folder, started on a free localhost port with trust authentication, stopped at the
end. As root it runs as the package's `postgres` user (the server refuses root). Skips when the server is
not installed, unless REGBENCH_REQUIRE_POSTGRES=1 (set by .ci/run), where it fails."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def private_server() -> Iterator[str]:
    """Yields the server's SQLAlchemy URL (postgresql://postgres@127.0.0.1:PORT/postgres)."""
    bindir = _bindir()
    if bindir is None:
        if os.environ.get("REGBENCH_REQUIRE_POSTGRES") == "1":
            pytest.fail("REGBENCH_REQUIRE_POSTGRES=1 but no PostgreSQL server: apt-get install postgresql")
        pytest.skip("no PostgreSQL server (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="regbench-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, timeout=120)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
