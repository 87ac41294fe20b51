"""A throwaway PostgreSQL server for tests: initdb + pg_ctl (Debian's `postgresql` package) into a temp
folder, on a free local port, as a non-root user when the tests run as root (PostgreSQL refuses root).
`PostgresServer.start()` returns None, with the reason in `PostgresServer.why_not`, when it cannot run."""
from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def pg_bin() -> Path | None:
    """The folder of initdb and pg_ctl: the newest /usr/lib/postgresql/*/bin, else the PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    why_not = ""

    def __init__(self, bin_dir: Path, folder: Path, user: str | None, port: int):
        self.bin, self.folder, self.user, self.port = bin_dir, folder, user, port
        self.count = 0

    @classmethod
    def start(cls) -> "PostgresServer | None":
        """A running server, or None (why_not says why: not installed, no user to run it as, failed)."""
        bin_dir = pg_bin()
        if bin_dir is None:
            cls.why_not = ("PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on the PATH; "
                           "Debian: apt-get install postgresql)")
            return None
        user = None
        if os.geteuid() == 0:
            user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
            if user is None or not shutil.which("runuser"):
                cls.why_not = "running as root without a 'postgres'/'nobody' user and runuser to start PostgreSQL"
                return None
        folder = Path(tempfile.mkdtemp(prefix="prodcat-pg-"))
        if user:
            os.chown(folder, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        server = cls(bin_dir, folder, user, free_port())
        try:
            server._run("initdb", "-D", str(folder / "data"), "-A", "trust", "-U", "prodcat", "-E", "UTF8",
                        "--no-sync")
            server._run("pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "-t", "60", "-o",
                        f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1", "start")
        except subprocess.CalledProcessError as exc:
            log = (folder / "log").read_text()[-2000:] if (folder / "log").exists() else ""
            cls.why_not = f"PostgreSQL did not start: {exc.stderr or exc.stdout} {log}".strip()
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return server

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=self.folder)

    def new_database(self) -> str:
        """A fresh empty database; its SQLAlchemy URL."""
        import psycopg

        self.count += 1
        name = f"t{self.count}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=prodcat dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://prodcat@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
