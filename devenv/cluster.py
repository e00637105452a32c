"""Throwaway PostgreSQL clusters for the demo, the tests and the benchmarks.

Each cluster lives in a temporary folder, listens on a free loopback port and is stopped and
removed by :meth:`Cluster.stop`. When run as root, the server runs as the ``postgres`` system
user (``initdb`` refuses root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pgrepl.pgtools import PgConn, tool

SUPERUSER = "postgres"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("running as root needs a 'postgres' system user to own the throwaway clusters") from exc
    return "postgres"


class Cluster:
    """One throwaway PostgreSQL server."""

    def __init__(self, name: str = "pg", base_dir: str | None = None, settings: dict | None = None) -> None:
        self.name = name
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix=f"pgrepl-{name}-", dir=base_dir))
        self.data = self.root / "data"
        self.port = free_port()
        self.settings = settings or {}
        self.started = False
        if self.user:
            if base_dir:  # the server user must be able to reach its folder
                os.chmod(base_dir, os.stat(base_dir).st_mode | 0o711)
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, user=self.user)

    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(args, user=self.user, capture_output=True, text=True, **kwargs)
        if result.returncode != 0:
            raise RuntimeError(f"{os.path.basename(args[0])} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result

    def start(self) -> "Cluster":
        self._run([tool("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                   "--locale=C.UTF-8", "--no-sync"])
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "128MB",
            "max_wal_size": "4GB",
            "log_min_messages": "warning",
            **{k: str(v) for k, v in self.settings.items()},
        }
        with open(self.data / "postgresql.auto.conf", "a") as handle:
            for key, value in conf.items():
                handle.write(f"{key} = {value}\n")
        hba = self.data / "pg_hba.conf"
        # password auth on TCP so tests exercise real credentials; trust on the private socket
        hba.write_text("local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        self._run([tool("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start"])
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            try:
                self._run([tool("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
            except RuntimeError:
                pass
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- connections -------------------------------------------------------------------------
    def conn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> PgConn:
        return PgConn(host="127.0.0.1", port=self.port, dbname=dbname, user=user, password=password)

    def execute(self, sql: str, dbname: str = "postgres", params=None) -> list[tuple]:
        """Run one statement as the superuser (autocommit) and return its rows, if any."""
        with self.conn(dbname).connect(autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, dbname: str, owner: str | None = None, owner_password: str | None = None,
                        superuser: bool = False) -> PgConn:
        """Create a database (and its owning role with a password); return a connection to it as that role."""
        from psycopg import sql

        if owner:
            exists = self.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(owner,))
            if not exists:
                self.execute(
                    sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                        sql.Identifier(owner), sql.SQL("SUPERUSER" if superuser else "NOSUPERUSER"),
                        sql.Literal(owner_password),
                    ).as_string()
                )
        self.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(owner or SUPERUSER))
            .as_string()
        )
        if owner:
            # PostgreSQL 15: public belongs to pg_database_owner, i.e. the database owner above.
            return self.conn(dbname, owner, owner_password)
        return self.conn(dbname)

    def drop_database(self, dbname: str) -> None:
        from psycopg import sql

        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)).as_string())


def wait_ready(conn: PgConn, timeout: float = 30.0) -> None:
    """Block until the server accepts connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with conn.connect():
                return
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
