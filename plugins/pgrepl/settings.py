"""Every setting of pg-replication, read at run time and validated once.

Airflow connections come first, then the seed's environment variables, so that operators of
``1024pix/pix-db-replication`` can migrate their ``.env`` unchanged. A bad value raises
:class:`SettingsError` with one line that names the setting and what is wrong with its value
(never the value of a secret).

This module is plain Python: the Airflow binding (:func:`airflow_connection_getter`) is passed in.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from pgrepl.errors import PgreplError
from pgrepl.pgtools import PgConn
from pgrepl.redact import redact

DEFAULT_SCHEDULE = "10 5 * * *"
DEFAULT_TIMEZONE = "Europe/Paris"
DEFAULT_JOBS = 4
DEFAULT_RETRIES = 10
BACKUP_MODES = ("incremental", "none")
#: what the incremental copy does with rows deleted at the source (object form of BACKUP_MODE)
DELETE_POLICIES = ("ignore", "propagate")
#: keys of the object form ``{"mode": ..., "key": ..., "deletes": ...}`` of a BACKUP_MODE entry
TABLE_MODE_KEYS = ("mode", "key", "deletes")
SOURCE_CONN_ID = "replication_source"
TARGET_CONN_ID = "replication_target"
LCMS_CONN_ID = "lcms_api"
SCHEMA_EXPORT_CONN_ID = "schema_export_target"
S3_CONN_ID = "replication_s3"
#: the seed's variables naming the source and the warehouse, when their connection is not defined
SOURCE_URL_VARIABLES = ("SOURCE_DATABASE_URL",)
TARGET_URL_VARIABLES = ("TARGET_DATABASE_URL", "DATABASE_URL")

#: returns an Airflow-like connection object (host, port, schema, login, password, extra_dejson) or None
ConnectionGetter = Callable[[str], object | None]


class SettingsError(PgreplError, ValueError):
    """A setting is missing or malformed; the message names it. No retry can fix it."""

    retryable = False


@dataclass(frozen=True)
class TableName:
    """A table named in ``BACKUP_MODE``: ``table`` or ``schema.table`` (``public`` by default)."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> "TableName":
        # knex table names hold dashes, never dots; "schema.table" names another schema
        if "." in text:
            schema, _, name = text.partition(".")
            if schema and name:
                return cls(schema, name)
        return cls("public", text)

    def __str__(self) -> str:
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class TableMode:
    """One entry of ``BACKUP_MODE``: the seed's string (``"incremental"`` / ``"none"``) or the object form
    ``{"mode": "incremental", "key": "event_id", "deletes": "propagate"}``.

    :param mode: ``incremental`` (new rows copied by key) or ``none`` (left alone)
    :param key: the incremental key column; ``None`` means the default (a column ``id``, else the single-column
        integer primary key), resolved against the source catalog
    :param deletes: ``ignore`` (rows deleted at the source stay in the warehouse, reported) or ``propagate``
    """

    mode: str
    key: str | None = None
    deletes: str = "ignore"

    @property
    def incremental(self) -> bool:
        return self.mode == "incremental"

    @classmethod
    def of(cls, value: "TableMode | str") -> "TableMode":
        return value if isinstance(value, TableMode) else cls(value)


@dataclass(frozen=True)
class Notification:
    url: str
    token: str | None = None

    def __repr__(self) -> str:
        return f"Notification(url={self.url!r}, token={'***' if self.token else None})"


@dataclass(frozen=True)
class ReplicationSettings:
    source: PgConn
    target: PgConn
    #: ``{table: TableMode}``; plain strings given here are turned into :class:`TableMode`
    backup_mode: dict[TableName, TableMode] = field(default_factory=dict)
    restore_fk_constraints: bool = True
    restore_comments: bool = True
    jobs: int = DEFAULT_JOBS
    work_dir: str = ""
    pg_bin_dir: str | None = None
    dump_compression: int = 0
    #: seconds the switch waits for a lock a reader holds (a kept table it moves) before it gives up and retries
    switch_lock_timeout: int = 30
    #: how many more times the switch tries after a lock timeout
    switch_retries: int = 3
    #: after the last lock timeout, cancel the sessions blocking the switch instead of failing the night
    switch_cancel_readers: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "backup_mode", {t: TableMode.of(m) for t, m in self.backup_mode.items()})

    def table_mode(self, table: TableName) -> TableMode | None:
        """The ``BACKUP_MODE`` entry of ``table`` (``None``: copied in full)."""
        return self.backup_mode.get(table)

    @property
    def kept_tables(self) -> list[TableName]:
        """Tables the full copy leaves alone (``incremental`` or ``none``)."""
        return sorted(self.backup_mode, key=str)

    @property
    def incremental_tables(self) -> list[TableName]:
        return sorted((t for t, mode in self.backup_mode.items() if mode.incremental), key=str)


@dataclass(frozen=True)
class LcmsSettings:
    url: str
    api_key: str
    app: str = "pix-db-replication"

    def __repr__(self) -> str:
        return f"LcmsSettings(url={self.url!r}, app={self.app!r})"


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str
    endpoint: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    ssl_enabled: bool = True

    def __repr__(self) -> str:
        return f"S3Settings(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.endpoint!r})"


# -- low-level parsers ---------------------------------------------------------------------------

def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def parse_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _get(env, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected true or false, got {value!r}")


def parse_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    value = _get(env, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name}: expected a whole number, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise SettingsError(f"{name}: expected a whole number {bounds}, got {number}")
    return number


def parse_cron(env: Mapping[str, str], name: str, default: str) -> str:
    value = _get(env, name) or default
    from croniter import croniter

    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise SettingsError(f"{name}: {value!r} is not a valid 5-field cron expression (e.g. {default!r})")
    return value


def parse_backup_mode(env: Mapping[str, str], name: str = "BACKUP_MODE") -> dict[TableName, TableMode]:
    """``{"table": "incremental" | "none" | {"mode": ..., "key": column, "deletes": "ignore" | "propagate"}}``."""
    expected = '{"table": "incremental" | "none" | {"mode": "incremental", "key": "column"}}'
    value = _get(env, name)
    if value is None:
        return {}
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{name}: not valid JSON ({exc.msg} at character {exc.pos}); expected {expected}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{name}: expected a JSON object {expected}, got a {type(data).__name__}")
    modes: dict[TableName, TableMode] = {}
    for table, entry in data.items():
        if not isinstance(table, str) or not table.strip():
            raise SettingsError(f"{name}: empty table name")
        modes[TableName.parse(table)] = _parse_table_mode(entry, f"{name}: table {table!r}")
    return modes


def _parse_table_mode(entry: object, where: str) -> TableMode:
    if isinstance(entry, str):
        entry = {"mode": entry}
    if not isinstance(entry, dict):
        raise SettingsError(f"{where} has unknown mode {entry!r} (expected \"incremental\", \"none\" or an object {{\"mode\": ...}})")
    unknown = sorted(set(entry) - set(TABLE_MODE_KEYS))
    if unknown:
        raise SettingsError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(TABLE_MODE_KEYS)})")
    mode = entry.get("mode")
    if mode not in BACKUP_MODES:
        raise SettingsError(f"{where} has unknown mode {mode!r} (expected \"incremental\" or \"none\")")
    key = entry.get("key")
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise SettingsError(f"{where}: \"key\" must be a column name, got {key!r}")
    deletes = entry.get("deletes", "ignore")
    if deletes not in DELETE_POLICIES:
        raise SettingsError(f"{where}: \"deletes\" is {deletes!r} (expected \"ignore\" or \"propagate\")")
    if mode == "none" and (key is not None or "deletes" in entry):
        raise SettingsError(f"{where}: \"key\" and \"deletes\" only apply to mode \"incremental\"")
    return TableMode(mode, key, deletes)


def parse_http_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{name}: {redact(value)!r} is not an http(s) URL")
    return value.rstrip("/")


def parse_notifications(env: Mapping[str, str], name: str = "NOTIFICATIONS") -> list[Notification]:
    value = _get(env, name)
    if value is None:
        return []
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise SettingsError(f'{name}: not valid JSON ({exc.msg} at character {exc.pos}); expected [{{"url": ..., "token": ...}}]') from None
    if not isinstance(data, list):
        raise SettingsError(f'{name}: expected a JSON list [{{"url": ..., "token": ...}}], got a {type(data).__name__}')
    result = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict) or not entry.get("url"):
            raise SettingsError(f"{name}: entry {index} has no \"url\"")
        token = entry.get("token")
        if token is not None and not isinstance(token, str):
            raise SettingsError(f"{name}: entry {index} has a token that is not a string")
        result.append(Notification(parse_http_url(str(entry["url"]), f"{name}[{index}].url"), token or None))
    return result


def parse_database_url(value: str, name: str) -> PgConn:
    """``postgres[ql]://user:password@host:port/dbname?sslmode=...`` -> :class:`PgConn`."""
    parts = urlsplit(value)
    if parts.scheme not in ("postgres", "postgresql"):
        raise SettingsError(f"{name}: {redact(value)!r} is not a postgresql:// URL")
    try:
        port = parts.port or 5432
    except ValueError:
        raise SettingsError(f"{name}: the port of {redact(value)!r} is not a number") from None
    dbname = unquote(parts.path.lstrip("/"))
    if not parts.hostname or not dbname or not parts.username:
        raise SettingsError(f"{name}: {redact(value)!r} must name a user, a host and a database")
    query = parse_qs(parts.query)
    return PgConn(
        host=parts.hostname,
        port=port,
        dbname=dbname,
        user=unquote(parts.username),
        password=unquote(parts.password) if parts.password else None,
        sslmode=query.get("sslmode", [None])[0],
    )


def conn_from_airflow(conn: object, name: str) -> PgConn:
    """An Airflow ``Connection`` (postgres type) -> :class:`PgConn`."""
    host = getattr(conn, "host", None)
    dbname = getattr(conn, "schema", None)
    login = getattr(conn, "login", None)
    if not host or not dbname or not login:
        raise SettingsError(f"connection {name}: needs host, schema (the database name) and login")
    extra = getattr(conn, "extra_dejson", None) or {}
    return PgConn(
        host=host,
        port=int(getattr(conn, "port", None) or 5432),
        dbname=dbname,
        user=login,
        password=getattr(conn, "password", None) or None,
        sslmode=extra.get("sslmode"),
    )


def resolve_database(
    env: Mapping[str, str], get_connection: ConnectionGetter | None, conn_id: str, env_names: tuple[str, ...]
) -> PgConn:
    """The connection ``conn_id`` if defined, else the first of ``env_names`` that is set."""
    if get_connection is not None:
        conn = get_connection(conn_id)
        if conn is not None:
            return conn_from_airflow(conn, conn_id)
    for env_name in env_names:
        value = _get(env, env_name)
        if value:
            return parse_database_url(value, env_name)
    raise SettingsError(
        f"connection {conn_id} is not defined and none of {', '.join(env_names)} is set: "
        "define the connection (AIRFLOW_CONN_" + conn_id.upper() + ") or the variable"
    )


def airflow_connection_getter(conn_id: str) -> object | None:
    """Look up an Airflow connection; ``None`` when it is not defined."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def default_work_dir(env: Mapping[str, str]) -> str:
    home = _get(env, "AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return str(Path(home) / "pgrepl-work")


# -- sections ------------------------------------------------------------------------------------

def load_replication(env: Mapping[str, str] | None = None, get_connection: ConnectionGetter | None = None, *,
                     source_conn_id: str = SOURCE_CONN_ID, target_conn_id: str = TARGET_CONN_ID) -> ReplicationSettings:
    """The settings of the nightly ``pg_replication`` DAG.

    ``SCHEDULE`` and ``MAX_RETRY_COUNT`` are read by the DAG file at parse time; they are validated here too, so
    that preflight names a bad value.
    """
    env = os.environ if env is None else env
    work_dir = _get(env, "REPLICATION_WORK_DIR") or default_work_dir(env)
    if not os.path.isabs(work_dir):
        raise SettingsError(f"REPLICATION_WORK_DIR: {work_dir!r} must be an absolute path")
    source = resolve_database(env, get_connection, source_conn_id, SOURCE_URL_VARIABLES)
    target = resolve_database(env, get_connection, target_conn_id, TARGET_URL_VARIABLES)
    parse_cron(env, "SCHEDULE", DEFAULT_SCHEDULE)
    parse_int(env, "MAX_RETRY_COUNT", DEFAULT_RETRIES, minimum=0, maximum=100)
    return ReplicationSettings(
        source=source,
        target=target,
        backup_mode=parse_backup_mode(env),
        restore_fk_constraints=parse_bool(env, "RESTORE_FK_CONSTRAINTS", True),
        restore_comments=parse_bool(env, "RESTORE_COMMENTS", True),
        jobs=parse_int(env, "PG_RESTORE_JOBS", DEFAULT_JOBS, minimum=1, maximum=64),
        work_dir=work_dir,
        pg_bin_dir=_get(env, "PG_BIN_DIR"),
        dump_compression=parse_int(env, "PG_DUMP_COMPRESSION", 0, minimum=0, maximum=9),
        switch_lock_timeout=parse_int(env, "SWITCH_LOCK_TIMEOUT", 30, minimum=1, maximum=3600),
        switch_retries=parse_int(env, "SWITCH_RETRIES", 3, minimum=0, maximum=100),
        switch_cancel_readers=parse_bool(env, "SWITCH_CANCEL_READERS", False),
    )


def load_lcms(env: Mapping[str, str] | None = None, get_connection: ConnectionGetter | None = None, *,
              conn_id: str = LCMS_CONN_ID) -> LcmsSettings | None:
    """Learning-content API: connection ``lcms_api`` (host = base URL, password = key) or LCMS_API_URL/KEY.

    ``None`` when neither is configured (the step is then skipped, saying so).
    """
    env = os.environ if env is None else env
    app = _get(env, "APP") or "pix-db-replication"
    conn = get_connection(conn_id) if get_connection else None
    if conn is not None:
        host = getattr(conn, "host", None) or ""
        schema = getattr(conn, "schema", None)
        url = host if "://" in host else f"{schema or 'https'}://{host}"
        if getattr(conn, "port", None):
            url = f"{url}:{conn.port}"
        key = getattr(conn, "password", None)
        if not host or not key:
            raise SettingsError(f"connection {conn_id}: needs host (the API URL) and password (the API key)")
        return LcmsSettings(parse_http_url(url, f"connection {conn_id}"), key, app)
    url, key = _get(env, "LCMS_API_URL"), _get(env, "LCMS_API_KEY")
    if url is None and key is None:
        return None
    if url is None:
        raise SettingsError("LCMS_API_URL: not set while LCMS_API_KEY is")
    if key is None:
        raise SettingsError("LCMS_API_KEY: not set while LCMS_API_URL is")
    return LcmsSettings(parse_http_url(url, "LCMS_API_URL"), key, app)


def load_schema_export(env: Mapping[str, str] | None = None, get_connection: ConnectionGetter | None = None) -> PgConn | None:
    """The catalog database of the noon schema export, ``None`` when the export is disabled."""
    env = os.environ if env is None else env
    if not parse_bool(env, "DB_SCHEMA_EXPORTER_ENABLED", False):
        return None
    return resolve_database(env, get_connection, SCHEMA_EXPORT_CONN_ID, ("DB_SCHEMA_EXPORTER_DATABASE_TARGET",))


def load_s3(env: Mapping[str, str] | None = None) -> S3Settings:
    """The seed's S3_* variables (an Airflow ``aws`` connection ``replication_s3`` may supply credentials)."""
    env = os.environ if env is None else env
    bucket = _get(env, "S3_BUCKET_NAME")
    if bucket is None:
        raise SettingsError("S3_BUCKET_NAME: not set (the bucket that receives the dumps)")
    endpoint = _get(env, "S3_ENDPOINT")
    if endpoint is not None:
        endpoint = parse_http_url(endpoint, "S3_ENDPOINT")
    return S3Settings(
        bucket=bucket,
        prefix=_get(env, "S3_OBJECT_NAME_PREFIX") or "dump",
        endpoint=endpoint,
        region=_get(env, "S3_REGION"),
        access_key=_get(env, "S3_ACCESS_KEY"),
        secret_key=_get(env, "S3_SECRET_ACCESS_KEY"),
        ssl_enabled=parse_bool(env, "S3_SSL_ENABLED", True),
    )


def schedule_or_default(env: Mapping[str, str] | None = None) -> str:
    """The cron for the DAG file at parse time: a bad value falls back to the default (preflight then fails)."""
    try:
        return parse_cron(os.environ if env is None else env, "SCHEDULE", DEFAULT_SCHEDULE)
    except SettingsError:
        return DEFAULT_SCHEDULE


def retries_or_default(env: Mapping[str, str] | None = None) -> int:
    """``MAX_RETRY_COUNT`` for the DAG file at parse time: a bad value falls back to the default."""
    try:
        return parse_int(os.environ if env is None else env, "MAX_RETRY_COUNT", DEFAULT_RETRIES, 0, 100)
    except SettingsError:
        return DEFAULT_RETRIES
