"""SourceHook / WarehouseHook: a connection id, the seed's URL variables when the connection is not defined."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pgrepl.hooks.postgres import SourceHook, WarehouseHook
from pgrepl.settings import SettingsError

ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("SOURCE_DATABASE_URL", "TARGET_DATABASE_URL", "DATABASE_URL", "AIRFLOW_CONN_REPLICATION_SOURCE",
                 "AIRFLOW_CONN_REPLICATION_TARGET", "AIRFLOW_CONN_OTHER_WAREHOUSE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_connection_id_first_then_url_variables(clean_env):
    clean_env.setenv("TARGET_DATABASE_URL", "postgresql://wh:pw@from-variable:5433/warehouse")
    hook = WarehouseHook()
    assert hook.target_conn_id == "replication_target"
    assert (hook.get_pgconn().host, hook.get_pgconn().port) == ("from-variable", 5433)
    clean_env.setenv("AIRFLOW_CONN_REPLICATION_TARGET", "postgres://wh:pw@from-connection:5432/warehouse")
    assert WarehouseHook().get_pgconn().host == "from-connection"
    clean_env.setenv("AIRFLOW_CONN_OTHER_WAREHOUSE", "postgres://wh:pw@other:5432/warehouse")
    other = WarehouseHook("other_warehouse")
    assert other.target_conn_id == "other_warehouse" and other.get_pgconn().host == "other"


def test_missing_database_names_the_connection_and_the_variable(clean_env):
    with pytest.raises(SettingsError, match="connection replication_source is not defined.*SOURCE_DATABASE_URL") as caught:
        SourceHook().get_pgconn()
    assert caught.value.retryable is False


def test_hooks_hand_out_working_connections(target_db, clean_env):
    from conftest import TEST_PASSWORD

    clean_env.setenv("DATABASE_URL", f"postgresql://{target_db.user}:{TEST_PASSWORD}@{target_db.host}:{target_db.port}"
                                     f"/{target_db.dbname}")
    with WarehouseHook().get_conn() as db:
        assert db.execute("SELECT current_database()").fetchone()[0] == target_db.dbname


def test_plugins_never_import_devenv():
    """devenv/ (throwaway clusters, demo servers) is not shipped to workers: nothing under plugins/ may import it."""
    offenders = []
    for path in (ROOT / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "devenv"
                          or ".devenv" in n]
    assert offenders == []
