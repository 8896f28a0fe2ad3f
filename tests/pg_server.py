"""A throw-away PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder, on 127.0.0.1.

The server comes from Debian's ``postgresql`` package (``install_postgresql.sh`` installs it); as
root it runs as the package's ``postgres`` user, since PostgreSQL refuses to run as root. Password
authentication (scram-sha-256) is on, so a wrong password is refused as on a real server.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

INSTALL = Path(__file__).with_name("install_postgresql.sh")
USER, PASSWORD = "das", "das-tune-test"


def bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    folder: Path
    port: int
    bin: Path
    run_as: list[str]

    def url(self, database: str, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        con = psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname="postgres", autocommit=True)
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        con.close()
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def install() -> str | None:
    """None once a server is installed, else why it cannot be."""
    if bin_dir() is None:
        try:
            subprocess.run(["sh", str(INSTALL)], capture_output=True, text=True, timeout=600, check=True)
        except (subprocess.SubprocessError, OSError) as err:
            return f"PostgreSQL cannot be installed ({INSTALL.name}: {err})"
    return None if bin_dir() is not None else "PostgreSQL is not installed and install_postgresql.sh did not install it"


def start() -> Server:
    bin = bin_dir()
    run_as: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="das-tune-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    pwfile = folder / "password"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    server = Server(folder, free_port(), bin, run_as)
    data = folder / "data"
    subprocess.run([*run_as, str(bin / "initdb"), "-D", str(data), "-U", USER, "--pwfile", str(pwfile),
                    "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
    options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {folder} -c fsync=off -c max_connections=200"
    subprocess.run([*run_as, str(bin / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options, "-w", "start"],
                   check=True, capture_output=True, timeout=120)
    return server
