"""Settings: valid values, defaults, and one clear error per malformed value."""

from __future__ import annotations

import pytest

from pgrepl import settings as s

SOURCE = "postgresql://reader:pw@db.example:5433/pix"
TARGET = "postgres://owner:pw2@wh.example/warehouse?sslmode=require"


def base_env(**extra):
    return {"SOURCE_DATABASE_URL": SOURCE, "DATABASE_URL": TARGET, "AIRFLOW_HOME": "/opt/airflow", **extra}


def test_defaults_and_urls():
    cfg = s.load_replication(base_env())
    assert (cfg.source.host, cfg.source.port, cfg.source.dbname, cfg.source.user, cfg.source.password) == (
        "db.example", 5433, "pix", "reader", "pw")
    assert (cfg.target.port, cfg.target.sslmode) == (5432, "require")
    assert cfg.backup_mode == {}
    assert cfg.restore_fk_constraints is True
    assert cfg.restore_comments is True
    assert cfg.jobs == 4
    assert s.schedule_or_default(base_env()) == "10 5 * * *" and s.retries_or_default(base_env()) == 10
    assert cfg.work_dir == "/opt/airflow/pgrepl-work"
    assert "pw" not in repr(cfg)


def test_target_database_url_alias_and_backup_mode():
    env = base_env(TARGET_DATABASE_URL="postgresql://o:p@other/wh", BACKUP_MODE='{"answers": "incremental", "stats.events": "none", "knowledge-elements": "incremental"}')
    del env["DATABASE_URL"]
    cfg = s.load_replication(env)
    assert cfg.target.host == "other"
    assert [str(t) for t in cfg.incremental_tables] == ["answers", "knowledge-elements"]
    assert s.TableName("stats", "events") in cfg.backup_mode
    assert [str(t) for t in cfg.kept_tables] == ["answers", "knowledge-elements", "stats.events"]


def test_airflow_connection_wins_over_env():
    class Conn:
        host, port, schema, login, password, extra_dejson = "af-host", 6000, "afdb", "afuser", "afpw", {}

    cfg = s.load_replication(base_env(), get_connection=lambda conn_id: Conn() if conn_id == "replication_source" else None)
    assert (cfg.source.host, cfg.source.dbname) == ("af-host", "afdb")
    assert cfg.target.host == "wh.example"


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("BACKUP_MODE", "{answers: incremental}", "BACKUP_MODE: not valid JSON"),
        ("BACKUP_MODE", '["answers"]', "BACKUP_MODE: expected a JSON object"),
        ("BACKUP_MODE", '{"answers": "sometimes"}', "BACKUP_MODE: table 'answers' has unknown mode 'sometimes'"),
        ("BACKUP_MODE", '{"": "none"}', "BACKUP_MODE: empty table name"),
        ("RESTORE_FK_CONSTRAINTS", "maybe", "RESTORE_FK_CONSTRAINTS: expected true or false"),
        ("RESTORE_COMMENTS", "sometimes", "RESTORE_COMMENTS: expected true or false, got 'sometimes'"),
        ("PG_RESTORE_JOBS", "four", "PG_RESTORE_JOBS: expected a whole number"),
        ("PG_RESTORE_JOBS", "0", "PG_RESTORE_JOBS: expected a whole number between 1 and 64"),
        ("MAX_RETRY_COUNT", "-1", "MAX_RETRY_COUNT: expected a whole number"),
        ("SCHEDULE", "every night", "SCHEDULE: 'every night' is not a valid 5-field cron"),
        ("SCHEDULE", "61 5 * * *", "SCHEDULE: '61 5 * * *' is not a valid"),
        ("SOURCE_DATABASE_URL", "mysql://u:p@h/db", "SOURCE_DATABASE_URL: 'mysql://u:***@h/db' is not a postgresql:// URL"),
        ("SOURCE_DATABASE_URL", "postgresql://h/db", "SOURCE_DATABASE_URL: 'postgresql://h/db' must name a user"),
        ("DATABASE_URL", "postgresql://u:secret@h:port/db", "DATABASE_URL: the port of 'postgresql://u:***@h:port/db' is not a number"),
        ("REPLICATION_WORK_DIR", "relative/dir", "REPLICATION_WORK_DIR: 'relative/dir' must be an absolute path"),
        ("PG_DUMP_COMPRESSION", "11", "PG_DUMP_COMPRESSION: expected a whole number between 0 and 9"),
    ],
)
def test_bad_values_name_the_setting(name, value, expected):
    with pytest.raises(s.SettingsError) as err:
        s.load_replication(base_env(**{name: value}))
    assert str(err.value).startswith(expected), str(err.value)
    assert "\n" not in str(err.value)
    assert "secret" not in str(err.value)


def test_missing_connections_name_both_ways():
    with pytest.raises(s.SettingsError, match="connection replication_source is not defined and none of SOURCE_DATABASE_URL"):
        s.load_replication({"DATABASE_URL": TARGET})
    with pytest.raises(s.SettingsError, match="connection replication_target .* TARGET_DATABASE_URL, DATABASE_URL"):
        s.load_replication({"SOURCE_DATABASE_URL": SOURCE})


@pytest.mark.parametrize(
    "value, expected",
    [
        ("not json", "NOTIFICATIONS: not valid JSON"),
        ('{"url": "http://x"}', "NOTIFICATIONS: expected a JSON list"),
        ('[{"token": "t"}]', 'NOTIFICATIONS: entry 0 has no "url"'),
        ('[{"url": "ftp://x/y"}]', "NOTIFICATIONS[0].url: 'ftp://x/y' is not an http(s) URL"),
        ('[{"url": "http://ok"}, {"url": "hooks.example/x"}]', "NOTIFICATIONS[1].url"),
        ('[{"url": "http://ok", "token": 5}]', "NOTIFICATIONS: entry 0 has a token that is not a string"),
    ],
)
def test_bad_notifications(value, expected):
    with pytest.raises(s.SettingsError) as err:
        s.parse_notifications({"NOTIFICATIONS": value})
    assert str(err.value).startswith(expected)


def test_notifications_ok_and_token_hidden():
    result = s.parse_notifications({"NOTIFICATIONS": '[{"url": "https://hooks.example/a/", "token": "tok-123"}, {"url": "http://b"}]'})
    assert [(n.url, n.token) for n in result] == [("https://hooks.example/a", "tok-123"), ("http://b", None)]
    assert "tok-123" not in repr(result)


def test_lcms_settings():
    assert s.load_lcms({}) is None
    cfg = s.load_lcms({"LCMS_API_URL": "https://lcms.example/api/", "LCMS_API_KEY": "k", "APP": "pix-x"})
    assert (cfg.url, cfg.api_key, cfg.app) == ("https://lcms.example/api", "k", "pix-x")
    assert "'k'" not in repr(cfg)
    with pytest.raises(s.SettingsError, match="LCMS_API_KEY: not set"):
        s.load_lcms({"LCMS_API_URL": "https://lcms.example/api"})
    with pytest.raises(s.SettingsError, match="LCMS_API_URL: 'lcms.example' is not an http"):
        s.load_lcms({"LCMS_API_URL": "lcms.example", "LCMS_API_KEY": "k"})


def test_schema_export_and_s3():
    assert s.load_schema_export({"DB_SCHEMA_EXPORTER_ENABLED": "false"}) is None
    conn = s.load_schema_export({"DB_SCHEMA_EXPORTER_ENABLED": "true", "DB_SCHEMA_EXPORTER_DATABASE_TARGET": SOURCE})
    assert conn.dbname == "pix"
    with pytest.raises(s.SettingsError, match="DB_SCHEMA_EXPORTER_ENABLED: expected true or false"):
        s.load_schema_export({"DB_SCHEMA_EXPORTER_ENABLED": "yes please"})
    with pytest.raises(s.SettingsError, match="S3_BUCKET_NAME: not set"):
        s.load_s3({})
    with pytest.raises(s.SettingsError, match="S3_ENDPOINT: 'minio:9000' is not an http"):
        s.load_s3({"S3_BUCKET_NAME": "b", "S3_ENDPOINT": "minio:9000"})
    cfg = s.load_s3({"S3_BUCKET_NAME": "b", "S3_ENDPOINT": "http://minio:9000", "S3_SSL_ENABLED": "false", "S3_SECRET_ACCESS_KEY": "zz"})
    assert (cfg.bucket, cfg.prefix, cfg.ssl_enabled) == ("b", "dump", False)
    assert "zz" not in repr(cfg)


def test_parse_time_fallbacks():
    assert s.schedule_or_default({"SCHEDULE": "bad"}) == s.DEFAULT_SCHEDULE
    assert s.schedule_or_default({"SCHEDULE": "0 3 * * 1"}) == "0 3 * * 1"
    assert s.retries_or_default({"MAX_RETRY_COUNT": "x"}) == 10
    assert s.retries_or_default({"MAX_RETRY_COUNT": "2"}) == 2


def test_backup_mode_object_form():
    env = base_env(BACKUP_MODE='{"events": {"mode": "incremental", "key": "event_id", "deletes": "propagate"}, '
                               '"answers": "incremental", "logs": {"mode": "none"}}')
    cfg = s.load_replication(env)
    assert cfg.table_mode(s.TableName("public", "events")) == s.TableMode("incremental", "event_id", "propagate")
    assert cfg.table_mode(s.TableName("public", "answers")) == s.TableMode("incremental")
    assert cfg.table_mode(s.TableName("public", "logs")) == s.TableMode("none")
    assert cfg.table_mode(s.TableName("public", "users")) is None
    assert [str(t) for t in cfg.incremental_tables] == ["answers", "events"]
    assert [str(t) for t in cfg.kept_tables] == ["answers", "events", "logs"]


def test_backup_mode_strings_given_in_code_become_table_modes():
    cfg = s.ReplicationSettings(source=None, target=None, backup_mode={s.TableName("public", "a"): "none"})
    assert cfg.backup_mode == {s.TableName("public", "a"): s.TableMode("none")}


@pytest.mark.parametrize(
    "value, message",
    [
        ('{"e": {"key": "id"}}', "BACKUP_MODE: table 'e' has unknown mode None"),
        ('{"e": {"mode": "incremental", "colum": "id"}}', "BACKUP_MODE: table 'e': unknown key 'colum'"),
        ('{"e": {"mode": "incremental", "key": ""}}', "BACKUP_MODE: table 'e': \"key\" must be a column name"),
        ('{"e": {"mode": "incremental", "key": ["a", "b"]}}', "BACKUP_MODE: table 'e': \"key\" must be a column name"),
        ('{"e": {"mode": "incremental", "deletes": "yes"}}', "BACKUP_MODE: table 'e': \"deletes\" is 'yes'"),
        ('{"e": {"mode": "none", "key": "id"}}', "only apply to mode \"incremental\""),
        ('{"e": ["incremental"]}', "BACKUP_MODE: table 'e' has unknown mode ['incremental']"),
    ],
)
def test_backup_mode_object_form_errors(value, message):
    with pytest.raises(s.SettingsError) as err:
        s.load_replication(base_env(BACKUP_MODE=value))
    assert message in str(err.value)
    assert "\n" not in str(err.value)
