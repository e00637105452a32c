"""Schema export: settings, command lines, and the export itself on real PostgreSQL databases."""

from __future__ import annotations

import re
import subprocess
import tempfile

import pytest
from conftest import TEST_PASSWORD

from pgrepl.pgtools import client_env, tool, write_passfile
from pgrepl.schema_export import (
    SchemaExportError,
    SchemaExportSettings,
    export_schema,
    load_settings,
    pg_dump_argv,
    psql_argv,
)
from pgrepl.settings import SettingsError


def url(conn, password=TEST_PASSWORD):
    return f"postgresql://{conn.user}:{password}@{conn.host}:{conn.port}/{conn.dbname}"


# -- settings ------------------------------------------------------------------------------------

WAREHOUSE = "postgresql://wh:pw@db.example:5432/warehouse"
CATALOG = "postgresql://cat:pw@catalog.example:5432/catalog"


@pytest.mark.parametrize("value", [None, "", "false", "0", "no"])
def test_disabled_export_has_no_settings(value):
    env = {"TARGET_DATABASE_URL": WAREHOUSE, "DB_SCHEMA_EXPORTER_DATABASE_TARGET": CATALOG}
    if value is not None:
        env["DB_SCHEMA_EXPORTER_ENABLED"] = value
    assert load_settings(env) is None


def test_enabled_export_reads_catalog_and_warehouse():
    env = {"DB_SCHEMA_EXPORTER_ENABLED": "true", "DATABASE_URL": WAREHOUSE,
           "DB_SCHEMA_EXPORTER_DATABASE_TARGET": CATALOG, "PG_BIN_DIR": "/opt/pg/bin"}
    settings = load_settings(env)
    assert settings.warehouse.dbname == "warehouse" and settings.catalog.dbname == "catalog"
    assert settings.pg_bin_dir == "/opt/pg/bin"


def test_enabled_export_without_catalog_names_the_variable():
    with pytest.raises(SettingsError, match="DB_SCHEMA_EXPORTER_DATABASE_TARGET"):
        load_settings({"DB_SCHEMA_EXPORTER_ENABLED": "true", "TARGET_DATABASE_URL": WAREHOUSE})


def test_bad_enabled_flag_names_the_variable():
    with pytest.raises(SettingsError, match="DB_SCHEMA_EXPORTER_ENABLED"):
        load_settings({"DB_SCHEMA_EXPORTER_ENABLED": "maybe"})


def test_catalog_connection_wins_over_variable():
    class Conn:
        host, port, schema, login, password, extra_dejson = "conn.example", 6543, "catalog_db", "u", "p", {}

    env = {"DB_SCHEMA_EXPORTER_ENABLED": "true", "TARGET_DATABASE_URL": WAREHOUSE,
           "DB_SCHEMA_EXPORTER_DATABASE_TARGET": CATALOG}
    settings = load_settings(env, lambda conn_id: Conn() if conn_id == "schema_export_target" else None)
    assert (settings.catalog.host, settings.catalog.port, settings.catalog.dbname) == ("conn.example", 6543, "catalog_db")


@pytest.mark.parametrize("catalog_url", [
    "postgresql://other:x@db.example:5432/warehouse",  # the warehouse, as another role
    "postgresql://other:x@prod.example:5432/prod",  # the source
])
def test_catalog_may_not_be_the_warehouse_nor_the_source(catalog_url):
    env = {"DB_SCHEMA_EXPORTER_ENABLED": "true", "TARGET_DATABASE_URL": WAREHOUSE,
           "SOURCE_DATABASE_URL": "postgresql://src:pw@prod.example:5432/prod",
           "DB_SCHEMA_EXPORTER_DATABASE_TARGET": catalog_url}
    with pytest.raises(SettingsError, match="DB_SCHEMA_EXPORTER_DATABASE_TARGET: points at the"):
        load_settings(env)


def test_command_lines_carry_the_flags_and_no_password():
    settings = load_settings({"DB_SCHEMA_EXPORTER_ENABLED": "true", "TARGET_DATABASE_URL": WAREHOUSE,
                              "DB_SCHEMA_EXPORTER_DATABASE_TARGET": CATALOG})
    dump = pg_dump_argv("pg_dump", settings.warehouse, "/tmp/s.sql")
    for flag in ("--schema-only", "--no-owner", "--no-privileges", "--clean", "--if-exists"):
        assert flag in dump
    apply = psql_argv("psql", settings.catalog, "/tmp/s.sql")
    assert "ON_ERROR_STOP=1" in apply and "--single-transaction" in apply
    assert not any("pw" in arg.split("@")[0] for arg in dump + apply if "://" in arg)


# -- on real databases ----------------------------------------------------------------------------

def schema_dump(conn) -> str:
    """``pg_dump --schema-only`` of ``conn``, without the lines that differ between two databases."""
    with tempfile.TemporaryDirectory() as tmp:
        env = client_env(write_passfile(f"{tmp}/pgpass", [conn]))
        out = subprocess.run([tool("pg_dump"), "--schema-only", "--no-owner", "--no-privileges",
                              "--dbname", conn.safe_url()], env=env, capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines()
             if line.strip() and not line.startswith("--") and not re.match(r"\\(un)?restrict ", line)]
    return "\n".join(lines)


@pytest.fixture
def warehouse(source_db):
    """A warehouse with the sample schema and rows, plus a function and an extra index."""
    with source_db.connect() as db:
        db.execute("CREATE FUNCTION answer_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM answers'")
        db.execute('CREATE INDEX "users_email_idx" ON users (email)')
        db.commit()
    return source_db


@pytest.fixture
def catalog(make_database):
    return make_database("catalog")


def test_export_copies_schema_without_rows_and_reruns(warehouse, catalog, fingerprint, tmp_path):
    settings = SchemaExportSettings(warehouse=warehouse, catalog=catalog)
    logged: list[str] = []
    result = export_schema(settings, log_line=logged.append, work_dir=str(tmp_path))

    assert result["statements"] > 20
    assert schema_dump(catalog) == schema_dump(warehouse)
    counts = {table: count for table, (count, _) in fingerprint(catalog).items()}
    assert set(counts) == set(fingerprint(warehouse)) and set(counts.values()) == {0}
    with catalog.connect() as db:
        assert db.execute("SELECT count(*) FROM pg_views WHERE viewname = 'active-users'").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'users_email_idx'").fetchone() == (1,)
    # psql's own output reached the log line by line, and no password did
    assert "CREATE TABLE" in logged and "CREATE INDEX" in logged
    assert not any(TEST_PASSWORD in line for line in logged)
    assert list(tmp_path.iterdir()) == []  # schema file and passfile removed

    # a rerun replaces everything (idempotent) and follows schema changes of the warehouse
    with warehouse.connect() as db:
        db.execute("ALTER TABLE users ADD COLUMN nickname text")
        db.commit()
    export_schema(settings, log_line=logged.append)
    assert schema_dump(catalog) == schema_dump(warehouse)
    with catalog.connect() as db:
        assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_failed_export_leaves_catalog_unchanged(warehouse, catalog, tmp_path):
    settings = SchemaExportSettings(warehouse=warehouse, catalog=catalog)
    export_schema(settings, log_line=lambda line: None)
    before = schema_dump(catalog)
    # an object of the catalog's own depends on a warehouse table: DROP TABLE users fails in psql
    with catalog.connect() as db:
        db.execute("CREATE TABLE notes (user_id int REFERENCES users (id))")
        db.commit()
    with warehouse.connect() as db:
        db.execute("ALTER TABLE users ADD COLUMN nickname text")
        db.commit()
    logged: list[str] = []
    with pytest.raises(SchemaExportError, match="psql exited with status 3"):
        export_schema(settings, log_line=logged.append)
    assert any("ERROR" in line for line in logged)
    with catalog.connect() as db:
        db.execute("DROP TABLE notes")
        db.commit()
    assert schema_dump(catalog) == before  # one transaction: nothing of the failed run stayed


def test_wrong_catalog_password_fails_clearly(warehouse, catalog):
    wrong = type(catalog)(catalog.host, catalog.port, catalog.dbname, catalog.user, "not-the-password")
    with pytest.raises(SchemaExportError, match="password authentication failed") as info:
        export_schema(SchemaExportSettings(warehouse=warehouse, catalog=wrong), log_line=lambda line: None)
    assert "not-the-password" not in str(info.value)


def test_export_carries_comments(warehouse, catalog):
    from psycopg import sql

    tricky = "It's \"quoted\" \\ 100%\nligne 2 : élève, 日本語"
    with warehouse.connect() as db:
        db.execute('CREATE MATERIALIZED VIEW "user-count" AS SELECT count(*) AS n FROM users')
        for target in ('TABLE users', 'COLUMN users."firstName"', 'VIEW "active-users"',
                       'MATERIALIZED VIEW "user-count"', "INDEX users_email_idx", "FUNCTION answer_count()"):
            db.execute(sql.SQL("COMMENT ON " + target + " IS {}").format(sql.Literal(f"{target}: {tricky}")))
        db.commit()
    export_schema(SchemaExportSettings(warehouse=warehouse, catalog=catalog), log_line=lambda line: None)
    query = ("SELECT pg_describe_object(classoid, objoid, objsubid), description FROM pg_description "
             "WHERE objoid >= 16384 ORDER BY 1")
    with warehouse.connect() as db:
        expected = db.execute(query).fetchall()
    with catalog.connect() as db:
        assert db.execute(query).fetchall() == expected
    assert ("table users", f"TABLE users: {tricky}") in expected and len(expected) >= 6
