"""Locate PostgreSQL client binaries and hand them credentials without exposing passwords.

Passwords never go into a process's arguments: every spawned ``pg_dump`` / ``pg_restore`` /
``psql`` gets a connection string without password plus a private ``PGPASSFILE``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pgrepl.errors import PgreplError


class PgToolError(PgreplError, RuntimeError):
    """A PostgreSQL client binary is missing or unusable (``PG_BIN_DIR``); no retry can fix it."""

    retryable = False


def _version_key(path: str) -> float:
    match = re.search(r"/postgresql/(\d+(?:\.\d+)?)/bin", path)
    return float(match.group(1)) if match else 0.0


def find_bin_dir(preferred: str | None = None) -> str:
    """Return the folder holding ``pg_dump``/``pg_restore``.

    Order: ``preferred`` (the ``PG_BIN_DIR`` setting), the newest Debian
    ``/usr/lib/postgresql/<major>/bin``, then the folder of ``pg_dump`` on ``PATH``.
    """
    if preferred:
        if not os.access(os.path.join(preferred, "pg_dump"), os.X_OK):
            raise PgToolError(f"PG_BIN_DIR: {preferred!r} holds no executable pg_dump")
        return preferred
    candidates: list[str] = []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    on_path = shutil.which("pg_dump")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for folder in candidates:
        if os.access(os.path.join(folder, "pg_dump"), os.X_OK):
            return folder
    raise PgToolError(
        "no PostgreSQL client binaries found (set PG_BIN_DIR to the folder holding pg_dump and pg_restore)"
    )


def tool(name: str, bin_dir: str | None = None) -> str:
    """Absolute path of one PostgreSQL binary (``pg_dump``, ``pg_restore``, ``psql``, ``initdb`` ...)."""
    folder = find_bin_dir(bin_dir)
    path = os.path.join(folder, name)
    if not os.access(path, os.X_OK):
        found = shutil.which(name)
        if not found:
            raise PgToolError(f"PG_BIN_DIR: {name} not found in {folder} nor on PATH")
        return found
    return path


def tool_major_version(path: str) -> int:
    """Major version of a client binary, from ``<tool> --version``."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if not match:
        raise PgToolError(f"PG_BIN_DIR: cannot read the version of {path}: {out!r}")
    return int(match.group(1))


@dataclass(frozen=True)
class PgConn:
    """Where a PostgreSQL database is, and who connects to it. ``repr`` hides the password."""

    host: str
    port: int
    dbname: str
    user: str
    password: str | None = None
    sslmode: str | None = None

    def __repr__(self) -> str:  # never print the password
        return f"PgConn(host={self.host!r}, port={self.port}, dbname={self.dbname!r}, user={self.user!r})"

    __str__ = __repr__

    def safe_url(self) -> str:
        """A connection URL without password, safe for argv and logs."""
        url = f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/{quote(self.dbname, safe='')}"
        if self.sslmode:
            url += f"?sslmode={self.sslmode}"
        return url

    def psycopg_kwargs(self) -> dict:
        """Keyword arguments for ``psycopg.connect``."""
        kwargs = {"host": self.host, "port": self.port, "dbname": self.dbname, "user": self.user}
        if self.password:
            kwargs["password"] = self.password
        if self.sslmode:
            kwargs["sslmode"] = self.sslmode
        return kwargs

    def connect(self, **extra):
        """A psycopg 3 connection (autocommit off unless asked)."""
        import psycopg

        return psycopg.connect(**self.psycopg_kwargs(), **extra)


def _passfile_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def write_passfile(path: str | os.PathLike, conns: list[PgConn]) -> str | None:
    """Write a private (0600) ``.pgpass`` file for the given connections; ``None`` if none has a password."""
    lines = [
        ":".join(_passfile_escape(str(part)) for part in (c.host, c.port, c.dbname, c.user, c.password))
        for c in conns
        if c.password
    ]
    if not lines:
        return None
    path = str(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


#: variables a spawned client never needs and that may carry secrets (connections, URLs, keys, tokens)
SECRET_VARIABLES = ("PGPASSWORD", "SOURCE_DATABASE_URL", "DATABASE_URL", "TARGET_DATABASE_URL",
                    "DB_SCHEMA_EXPORTER_DATABASE_TARGET", "LCMS_API_KEY", "NOTIFICATIONS", "S3_SECRET_ACCESS_KEY",
                    "S3_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SECRET_PREFIXES = ("AIRFLOW_CONN_", "AIRFLOW_VAR_", "AIRFLOW__")


def client_env(passfile: str | None, base: dict | None = None, app_name: str = "pg-replication") -> dict:
    """Environment for a spawned client: the caller's, without anything that may hold a secret, ``PGPASSFILE`` set,
    ``PGAPPNAME`` = ``app_name`` (so the warehouse can find the client's sessions)."""
    env = {
        key: value
        for key, value in (os.environ if base is None else base).items()
        if key not in SECRET_VARIABLES and not key.startswith(SECRET_PREFIXES)
    }
    if passfile:
        env["PGPASSFILE"] = passfile
    env["PGAPPNAME"] = app_name
    return env
