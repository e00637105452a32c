"""Client binaries and the environment spawned clients get."""

from __future__ import annotations

import os

import pytest

from pgrepl.pgtools import PgConn, PgToolError, client_env, find_bin_dir, tool, tool_major_version, write_passfile


def test_bin_dir_found_and_versioned():
    assert tool_major_version(tool("pg_dump")) >= 15


def test_wrong_pg_bin_dir_is_named(tmp_path):
    with pytest.raises(PgToolError, match="PG_BIN_DIR: '.*' holds no executable pg_dump"):
        find_bin_dir(str(tmp_path / "nowhere"))


def test_client_env_drops_secrets_and_names_the_session():
    base = {"PATH": "/bin", "PGPASSWORD": "x", "DATABASE_URL": "postgresql://u:x@h/d", "LCMS_API_KEY": "k",
            "NOTIFICATIONS": "[]", "AIRFLOW_CONN_REPLICATION_SOURCE": "postgres://u:x@h/d",
            "AIRFLOW__CORE__FERNET_KEY": "f", "S3_SECRET_ACCESS_KEY": "s", "HOME": "/root"}
    env = client_env("/tmp/pass", base=base, app_name="pgrepl-restore")
    assert env == {"PATH": "/bin", "HOME": "/root", "PGPASSFILE": "/tmp/pass", "PGAPPNAME": "pgrepl-restore"}


def test_passfile_is_private_and_escaped(tmp_path):
    conn = PgConn("h", 5432, "db:1", "u\\ser", "p:w")
    path = write_passfile(tmp_path / "pgpass", [conn, PgConn("h2", 1, "d", "u")])
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert open(path).read() == "h:5432:db\\:1:u\\\\ser:p\\:w\n"
    assert "p:w" not in repr(conn)
