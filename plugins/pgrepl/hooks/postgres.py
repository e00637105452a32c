"""Hooks for the two PostgreSQL databases of a night: the source (production) and the warehouse.

Each resolves its Airflow connection (``source_conn_id`` / ``target_conn_id``), or the seed's URL variables when
the connection is not defined, into the :class:`~pgrepl.pgtools.PgConn` the package works with: it opens psycopg 3
connections (:meth:`get_conn`) and hands the client tools a URL without password plus a private passfile.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseHook

from pgrepl.pgtools import PgConn
from pgrepl.settings import (
    SOURCE_CONN_ID,
    SOURCE_URL_VARIABLES,
    TARGET_CONN_ID,
    TARGET_URL_VARIABLES,
    airflow_connection_getter,
    resolve_database,
)


class _DatabaseHook(BaseHook):
    """A PostgreSQL database named by an Airflow connection or, failing that, by a URL variable."""

    conn_name_attr = "postgres_conn_id"
    default_conn_name = ""
    conn_type = "postgres"
    #: variables holding the database's URL when the connection is not defined, first set wins
    url_variables: tuple[str, ...] = ()

    def __init__(self, conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        setattr(self, self.conn_name_attr, conn_id or self.default_conn_name)

    @property
    def conn_id(self) -> str:
        return getattr(self, self.conn_name_attr)

    def get_pgconn(self) -> PgConn:
        """The database as a :class:`PgConn`; :class:`~pgrepl.settings.SettingsError` (no retry) naming the
        connection or variable when neither is usable."""
        return resolve_database(os.environ, airflow_connection_getter, self.conn_id, self.url_variables)

    def get_conn(self, **extra: Any):
        """A psycopg 3 connection (autocommit off unless asked)."""
        return self.get_pgconn().connect(**extra)


class SourceHook(_DatabaseHook):
    """The production database: connection ``replication_source`` or ``SOURCE_DATABASE_URL``."""

    conn_name_attr = "source_conn_id"
    default_conn_name = SOURCE_CONN_ID
    hook_name = "pg-replication source"
    url_variables = SOURCE_URL_VARIABLES


class WarehouseHook(_DatabaseHook):
    """The warehouse: connection ``replication_target`` or ``TARGET_DATABASE_URL`` / ``DATABASE_URL``."""

    conn_name_attr = "target_conn_id"
    default_conn_name = TARGET_CONN_ID
    hook_name = "pg-replication warehouse"
    url_variables = TARGET_URL_VARIABLES
