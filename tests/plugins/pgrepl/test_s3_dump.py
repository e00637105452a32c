"""Dump to S3: settings, key names, errors, and real dumps uploaded to a moto S3 server on loopback."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import tempfile
from datetime import datetime, timezone

import pytest
from conftest import TEST_PASSWORD
from moto_helpers import moto_server

from pgrepl.pgtools import client_env, tool, write_passfile
from pgrepl.s3_dump import (
    S3DumpError,
    botocore_config,
    dump_to_s3,
    load_settings,
    make_hook,
    normalize_s3_env,
    object_key,
    schedule_or_none,
    upload_file,
)
from pgrepl.settings import SettingsError

_buckets = itertools.count()


# -- pure ------------------------------------------------------------------------------------------

def test_object_key_is_prefix_and_utc_timestamp():
    paris = datetime(2026, 3, 29, 3, 4, 5, tzinfo=timezone.utc)
    assert object_key("pix-dump", paris) == "pix-dump-20260329-030405"
    assert re.fullmatch(r"x-\d{8}-\d{6}", object_key("x"))


@pytest.mark.parametrize("endpoint, ssl, expected", [
    ("localhost:9000", "false", "http://localhost:9000"),
    ("s3.gra.io.cloud.ovh.net", None, "https://s3.gra.io.cloud.ovh.net"),
    ("http://minio:9000", "true", "http://minio:9000"),
])
def test_seed_style_endpoint_gets_a_scheme(endpoint, ssl, expected):
    env = {"S3_ENDPOINT": endpoint}
    if ssl is not None:
        env["S3_SSL_ENABLED"] = ssl
    assert normalize_s3_env(env)["S3_ENDPOINT"] == expected


BASE = {"SOURCE_DATABASE_URL": "postgresql://u:p@db.example:5432/prod", "S3_BUCKET_NAME": "dumps",
        "REPLICATION_WORK_DIR": "/var/lib/pgrepl"}


def test_settings_from_seed_variables():
    settings = load_settings({**BASE, "S3_ENDPOINT": "localhost:9000", "S3_SSL_ENABLED": "false",
                              "S3_OBJECT_NAME_PREFIX": "pix", "S3_ACCESS_KEY": "ak", "S3_SECRET_ACCESS_KEY": "sk"})
    assert settings.s3.endpoint == "http://localhost:9000" and settings.s3.prefix == "pix"
    assert settings.work_dir == "/var/lib/pgrepl" and settings.s3_connection is None
    assert "sk" not in repr(settings.s3)


@pytest.mark.parametrize("env, name", [
    ({k: v for k, v in BASE.items() if k != "S3_BUCKET_NAME"}, "S3_BUCKET_NAME"),
    ({k: v for k, v in BASE.items() if k != "SOURCE_DATABASE_URL"}, "SOURCE_DATABASE_URL"),
    ({**BASE, "S3_ENDPOINT": "ftp://x"}, "S3_ENDPOINT"),
    ({**BASE, "S3_SSL_ENABLED": "perhaps"}, "S3_SSL_ENABLED"),
    ({**BASE, "DUMP_TO_S3_SCHEDULE": "every sunday"}, "DUMP_TO_S3_SCHEDULE"),
    ({**BASE, "REPLICATION_WORK_DIR": "relative/dir"}, "REPLICATION_WORK_DIR"),
])
def test_bad_settings_name_the_variable(env, name):
    with pytest.raises(SettingsError, match=name):
        load_settings(env)


def test_schedule_is_optional_and_a_bad_one_means_ad_hoc():
    assert schedule_or_none({}) is None
    assert schedule_or_none({"DUMP_TO_S3_SCHEDULE": "0 3 * * 0"}) == "0 3 * * 0"
    assert schedule_or_none({"DUMP_TO_S3_SCHEDULE": "soon"}) is None


def test_custom_endpoints_use_path_style_and_classic_checksums():
    config = botocore_config(custom_endpoint=True)
    assert config.s3 == {"addressing_style": "path"}
    assert config.request_checksum_calculation == "when_required"
    assert botocore_config(custom_endpoint=False).s3 is None
    assert botocore_config(True, {"config_kwargs": {"s3": {"addressing_style": "virtual"}}}) is None


# -- against moto ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3():
    with moto_server(auth=True) as server:
        yield server


@pytest.fixture
def bucket(s3):
    name = f"dumps-{next(_buckets)}"
    s3.client().create_bucket(Bucket=name)
    return name


def db_url(conn):
    return f"postgresql://{conn.user}:{TEST_PASSWORD}@{conn.host}:{conn.port}/{conn.dbname}"


@pytest.fixture
def dump_env(source_db, s3, bucket, tmp_path):
    return {"SOURCE_DATABASE_URL": db_url(source_db), "REPLICATION_WORK_DIR": str(tmp_path / "work"),
            **s3.env(bucket)}


def restore(archive: str, conn) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = client_env(write_passfile(f"{tmp}/pgpass", [conn]))
        subprocess.run([tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--dbname",
                        conn.safe_url(), archive], env=env, check=True, capture_output=True, text=True)


def test_dump_uploads_a_restorable_archive(dump_env, s3, bucket, source_db, make_database, fingerprint, tmp_path):
    logged: list[str] = []
    result = dump_to_s3(load_settings(dump_env), log_line=logged.append)

    assert re.fullmatch(r"pix-dump-\d{8}-\d{6}", result["key"]) and result["bucket"] == bucket
    client = s3.client()
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [result["key"]]
    archive = tmp_path / "downloaded.pgdump"
    client.download_file(bucket, result["key"], str(archive))
    assert archive.stat().st_size == result["bytes"] > 0
    restored = make_database("restored")
    restore(str(archive), restored)
    assert fingerprint(restored) == fingerprint(source_db)
    # the local dump and its passfile are gone; no password in the log
    assert list((tmp_path / "work" / "dump_to_s3").iterdir()) == []
    assert not any(TEST_PASSWORD in line or s3.secret_key in line for line in logged)


def test_dump_through_the_replication_s3_connection(dump_env, s3, bucket, source_db):
    from airflow.sdk import Connection

    connection = Connection(conn_id="replication_s3", conn_type="aws", login=s3.access_key, password=s3.secret_key,
                            extra=json.dumps({"endpoint_url": s3.endpoint, "region_name": s3.region}))
    env = {k: v for k, v in dump_env.items() if k not in ("S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_ACCESS_KEY")}
    settings = load_settings(env, lambda conn_id: connection if conn_id == "replication_s3" else None)
    result = dump_to_s3(settings, log_line=lambda line: None)
    head = s3.client().head_object(Bucket=bucket, Key=result["key"])
    assert head["ContentLength"] == result["bytes"]


@pytest.mark.parametrize("override, setting", [
    ({"S3_ACCESS_KEY": "AKIANOTKNOWN"}, "S3_ACCESS_KEY / S3_SECRET_ACCESS_KEY: the access key is not known"),
    ({"S3_SECRET_ACCESS_KEY": "not-the-secret"}, "S3_ACCESS_KEY / S3_SECRET_ACCESS_KEY: the secret key does not match"),
    ({"S3_BUCKET_NAME": "no-such-bucket"}, "S3_BUCKET_NAME: bucket 'no-such-bucket' does not exist"),
])
def test_bad_s3_input_fails_before_dumping(dump_env, override, setting, tmp_path):
    settings = load_settings({**dump_env, **override})
    with pytest.raises(S3DumpError, match=re.escape(setting)) as info:
        dump_to_s3(settings, log_line=lambda line: None)
    assert info.value.retryable is False
    assert not (tmp_path / "work").exists()  # failed before the dump started
    assert "not-the-secret" not in str(info.value)


def test_unreachable_endpoint_names_the_setting(dump_env):
    from devenv.cluster import free_port

    settings = load_settings({**dump_env, "S3_ENDPOINT": f"127.0.0.1:{free_port()}"})
    with pytest.raises(S3DumpError, match=r"S3_ENDPOINT: cannot reach http://127\.0\.0\.1:\d+") as info:
        dump_to_s3(settings, log_line=lambda line: None)
    assert info.value.retryable is True


def test_failed_pg_dump_uploads_nothing(dump_env, s3, bucket, tmp_path):
    url = dump_env["SOURCE_DATABASE_URL"].replace(TEST_PASSWORD, "wrong-password")
    with pytest.raises(S3DumpError, match="pg_dump exited with status 1.*password authentication failed"):
        dump_to_s3(load_settings({**dump_env, "SOURCE_DATABASE_URL": url}), log_line=lambda line: None)
    assert s3.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert list((tmp_path / "work" / "dump_to_s3").iterdir()) == []


def big_file(path, size_mb: int) -> str:
    with open(path, "wb") as handle:
        for _ in range(size_mb):
            handle.write(os.urandom(1024 * 1024))
    return str(path)


def test_upload_is_multipart(dump_env, s3, bucket, tmp_path):
    hook = make_hook(load_settings(dump_env), chunk_mb=5, concurrency=2)
    path = big_file(tmp_path / "12mb", 12)
    upload_file(hook, path, bucket, "multi", log_line=lambda line: None)
    head = s3.client().head_object(Bucket=bucket, Key="multi")
    assert head["ContentLength"] == 12 * 1024 * 1024
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 5 + 5 + 2 MiB


def test_failed_upload_leaves_no_partial_object(dump_env, s3, bucket, tmp_path):
    hook = make_hook(load_settings(dump_env), chunk_mb=5, concurrency=1)
    path = big_file(tmp_path / "16mb", 16)
    sent = [0]

    def cut_the_line(amount: int) -> None:
        sent[0] += amount
        if sent[0] > 6 * 1024 * 1024:  # after the first part went through
            raise ConnectionResetError("network gone mid-upload")

    logged: list[str] = []
    with pytest.raises(Exception, match="network gone mid-upload"):
        upload_file(hook, path, bucket, "partial", log_line=logged.append, callback=cut_the_line)
    client = s3.client()
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_sweep_aborts_uploads_left_under_the_key_only(s3, bucket):
    from pgrepl.s3_dump import abort_incomplete_uploads

    client = s3.client()
    client.create_multipart_upload(Bucket=bucket, Key="dump-1")
    client.create_multipart_upload(Bucket=bucket, Key="dump-10")
    assert abort_incomplete_uploads(client, bucket, "dump-1") == 1
    assert [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket)["Uploads"]] == ["dump-10"]
