"""Noon schema export: the warehouse's schema (no rows) copied into a catalog database.

``pg_dump --schema-only --no-owner --no-privileges --clean --if-exists`` of the warehouse is written to a
private file, then applied with ``psql -v ON_ERROR_STOP=1 --single-transaction`` to the catalog database
(``DB_SCHEMA_EXPORTER_DATABASE_TARGET`` or connection ``schema_export_target``). The single transaction
means readers of the catalog see either yesterday's schema or today's, never a half-applied one, and a
failure leaves the catalog as it was. ``--clean --if-exists`` makes a rerun idempotent.

Passwords reach the clients only through a 0600 ``PGPASSFILE``. This module is plain Python: the
Airflow operator in :mod:`pgrepl.operators.schema_export` only binds it to settings and logging.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping

from pgrepl.errors import PgreplError
from pgrepl.pgtools import PgConn, client_env, tool, write_passfile
from pgrepl.settings import (
    SCHEMA_EXPORT_CONN_ID,
    SOURCE_CONN_ID,
    SOURCE_URL_VARIABLES,
    TARGET_CONN_ID,
    TARGET_URL_VARIABLES,
    ConnectionGetter,
    SettingsError,
    load_schema_export,
    resolve_database,
)

LogLine = Callable[[str], None]


class SchemaExportError(PgreplError, RuntimeError):
    """pg_dump or psql failed; the message holds the tool, its exit status and its last output lines. Retried."""


@dataclass(frozen=True)
class SchemaExportSettings:
    warehouse: PgConn
    catalog: PgConn
    pg_bin_dir: str | None = None


def _same_database(a: PgConn, b: PgConn) -> bool:
    local = {"localhost", "127.0.0.1", "::1"}
    same_host = a.host == b.host or (a.host in local and b.host in local)
    return same_host and a.port == b.port and a.dbname == b.dbname


def load_settings(env: Mapping[str, str] | None = None,
                  get_connection: ConnectionGetter | None = None, *, target_conn_id: str = TARGET_CONN_ID,
                  source_conn_id: str = SOURCE_CONN_ID) -> SchemaExportSettings | None:
    """The export's settings; ``None`` when ``DB_SCHEMA_EXPORTER_ENABLED`` is not true.

    Only the warehouse and the catalog are needed (the source and ``BACKUP_MODE`` are not read), and the
    catalog may be neither the warehouse nor the source: ``--clean`` would drop their tables.
    """
    env = os.environ if env is None else env
    catalog = load_schema_export(env, get_connection)
    if catalog is None:
        return None
    warehouse = resolve_database(env, get_connection, target_conn_id, TARGET_URL_VARIABLES)
    if _same_database(catalog, warehouse):
        raise SettingsError(
            "DB_SCHEMA_EXPORTER_DATABASE_TARGET: points at the warehouse itself "
            f"({warehouse.host}:{warehouse.port}/{warehouse.dbname}); the export would drop its tables"
        )
    try:
        source = resolve_database(env, get_connection, source_conn_id, SOURCE_URL_VARIABLES)
    except SettingsError:
        source = None  # the export does not need the source; it only must not be the catalog
    if source is not None and _same_database(catalog, source):
        raise SettingsError(
            "DB_SCHEMA_EXPORTER_DATABASE_TARGET: points at the source database "
            f"({source.host}:{source.port}/{source.dbname}); the export would drop its tables"
        )
    pg_bin_dir = (env.get("PG_BIN_DIR") or "").strip() or None
    return SchemaExportSettings(warehouse=warehouse, catalog=catalog, pg_bin_dir=pg_bin_dir)


def pg_dump_argv(pg_dump: str, warehouse: PgConn, out_file: str) -> list[str]:
    """``pg_dump`` of the warehouse's schema only, without owners nor grants, each object dropped first."""
    return [
        pg_dump, "--schema-only", "--no-owner", "--no-privileges", "--clean", "--if-exists",
        "--no-password", "--file", out_file, "--dbname", warehouse.safe_url(),
    ]


def psql_argv(psql: str, catalog: PgConn, sql_file: str) -> list[str]:
    """``psql`` applying ``sql_file`` to the catalog in one transaction, stopping at the first error."""
    return [
        psql, "--no-psqlrc", "--no-password", "-v", "ON_ERROR_STOP=1", "--single-transaction",
        "--echo-errors", "--file", sql_file, "--dbname", catalog.safe_url(),
    ]


def run_logged(argv: list[str], env: dict, log_line: LogLine, keep: int = 20,
               error: type[Exception] = SchemaExportError) -> int:
    """Run ``argv``, handing each line of its merged stdout/stderr to ``log_line``; return the line count.

    :raises error: on a non-zero exit, naming the tool, its status and its last ``keep`` lines.
    """
    tail: deque[str] = deque(maxlen=keep)
    count = 0
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL) as proc:
        try:
            for raw in proc.stdout or ():
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                count += 1
                log_line(line)
        except BaseException:  # task killed or timed out: do not leave the client running
            proc.kill()
            raise
        status = proc.wait()
    if status != 0:
        name = os.path.basename(argv[0])
        detail = " | ".join(tail) or "no output"
        raise error(f"{name} exited with status {status}: {detail}")
    return count


def export_schema(settings: SchemaExportSettings, log_line: LogLine = print, work_dir: str | None = None) -> dict:
    """Dump the warehouse's schema and apply it to the catalog; return ``{"statements": n, "psql_lines": m}``."""
    pg_dump = tool("pg_dump", settings.pg_bin_dir)
    psql = tool("psql", settings.pg_bin_dir)
    with tempfile.TemporaryDirectory(prefix="pgrepl-schema-export-", dir=work_dir) as tmp:
        os.chmod(tmp, 0o700)
        passfile = write_passfile(os.path.join(tmp, "pgpass"), [settings.warehouse, settings.catalog])
        env = client_env(passfile)
        schema_file = os.path.join(tmp, "schema.sql")
        log_line(f"pg_dump --schema-only of {settings.warehouse.safe_url()}")
        run_logged(pg_dump_argv(pg_dump, settings.warehouse, schema_file), env, log_line)
        statements = count_statements(schema_file)
        log_line(f"applying {statements} statements to {settings.catalog.safe_url()} with psql")
        lines = run_logged(psql_argv(psql, settings.catalog, schema_file), env, log_line)
    return {"statements": statements, "psql_lines": lines}


def count_statements(path: str) -> int:
    """Rough count of SQL statements in a pg_dump script (lines ending with ``;`` outside comments)."""
    count = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            stripped = line.rstrip()
            if stripped.endswith(";") and not stripped.lstrip().startswith("--"):
                count += 1
    return count


__all__ = [
    "SCHEMA_EXPORT_CONN_ID", "SchemaExportError", "SchemaExportSettings", "export_schema", "load_settings",
    "pg_dump_argv", "psql_argv", "run_logged",
]
