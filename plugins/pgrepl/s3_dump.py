"""Ad hoc full dump of the source database to S3 (``dump_to_s3`` DAG).

``pg_dump --format=custom`` of the whole source (nothing excluded: owners and grants are in the archive,
``pg_restore --no-owner`` may drop them) into the work dir, then a multipart upload of that file through
the amazon provider's :class:`S3Hook` to ``s3://<S3_BUCKET_NAME>/<S3_OBJECT_NAME_PREFIX>-YYYYMMDD-HHmmss``
(UTC), then the local file is removed.

Why a file and not pg_dump's stdout streamed into the upload: the dump is complete and pg_dump's exit
status known before the first byte leaves, so a failed dump never reaches the bucket; the upload reads
the file in parts (boto3 ``upload_file`` + ``TransferConfig``), so memory stays flat whatever the dump's
size (``bench/bench_s3_upload.py``), and a failed part is retried from the file. The cost is disk: the
work dir must hold one compressed dump.

On a failed upload the multipart upload is aborted (s3transfer does it; :func:`upload_file` then sweeps
any upload left under the key), so no partial object and no billed orphan parts remain.

Plain Python with boto3/the provider: the Airflow operator in :mod:`pgrepl.operators.dump_to_s3` binds it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from pgrepl.errors import PgreplError
from pgrepl.pgtools import PgConn, client_env, tool, write_passfile
from pgrepl.schema_export import run_logged
from pgrepl.settings import (
    S3_CONN_ID,
    SOURCE_CONN_ID,
    SOURCE_URL_VARIABLES,
    ConnectionGetter,
    S3Settings,
    SettingsError,
    default_work_dir,
    load_s3,
    parse_bool,
    parse_cron,
    resolve_database,
)

LogLine = Callable[[str], None]

SCHEDULE_VAR = "DUMP_TO_S3_SCHEDULE"
MB = 1024 * 1024
#: part size and parallel parts of the multipart upload (peak memory ~ a few parts' buffers, not the dump)
DEFAULT_CHUNK_MB = 32
DEFAULT_CONCURRENCY = 4


class S3DumpError(PgreplError, RuntimeError):
    """The dump or the upload failed; the message names the setting to look at when one is at fault.

    ``retryable`` is false when a retry cannot help (unknown bucket, rejected credentials).
    """


# -- settings ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DumpToS3Settings:
    source: PgConn
    s3: S3Settings
    work_dir: str
    pg_bin_dir: str | None = None
    #: the Airflow connection ``s3_conn_id`` when defined (credentials, endpoint, region come from it)
    s3_connection: Any = None
    s3_conn_id: str = S3_CONN_ID

    @property
    def credentials_setting(self) -> str:
        """Where the credentials come from, for error messages."""
        if self.s3_connection is not None:
            return f"connection {self.s3_conn_id} (login / password)"
        return "S3_ACCESS_KEY / S3_SECRET_ACCESS_KEY"

    @property
    def endpoint_setting(self) -> str:
        return f"connection {self.s3_conn_id} (extra endpoint_url)" if self.s3_connection is not None else "S3_ENDPOINT"

    @property
    def endpoint(self) -> str:
        """The endpoint URL requests go to (for messages)."""
        if self.s3_connection is not None:
            extra = getattr(self.s3_connection, "extra_dejson", None) or {}
            return extra.get("endpoint_url") or "the AWS S3 endpoint"
        return self.s3.endpoint or "the AWS S3 endpoint"


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if value and value.strip() else None


def normalize_s3_env(env: Mapping[str, str]) -> dict[str, str]:
    """The seed accepted ``S3_ENDPOINT=host:port`` with ``S3_SSL_ENABLED`` choosing the scheme: add it."""
    env = dict(env)
    endpoint = _get(env, "S3_ENDPOINT")
    if endpoint and "://" not in endpoint:
        scheme = "https" if parse_bool(env, "S3_SSL_ENABLED", True) else "http"
        env["S3_ENDPOINT"] = f"{scheme}://{endpoint}"
    return env


def load_settings(env: Mapping[str, str] | None = None, get_connection: ConnectionGetter | None = None, *,
                  source_conn_id: str = SOURCE_CONN_ID, s3_conn_id: str = S3_CONN_ID) -> DumpToS3Settings:
    """Settings of ``dump_to_s3``: source database, S3 target, work dir. Raises :class:`SettingsError`."""
    env = normalize_s3_env(os.environ if env is None else env)
    source = resolve_database(env, get_connection, source_conn_id, SOURCE_URL_VARIABLES)
    s3 = load_s3(env)
    work_dir = _get(env, "REPLICATION_WORK_DIR") or default_work_dir(env)
    if not os.path.isabs(work_dir):
        raise SettingsError(f"REPLICATION_WORK_DIR: {work_dir!r} must be an absolute path")
    if _get(env, SCHEDULE_VAR):
        parse_cron(env, SCHEDULE_VAR, "0 3 * * 0")
    connection = get_connection(s3_conn_id) if get_connection else None
    if connection is not None and (getattr(connection, "conn_type", None) or "aws") != "aws":
        raise SettingsError(f"connection {s3_conn_id}: expected type 'aws', got {connection.conn_type!r}")
    return DumpToS3Settings(source=source, s3=s3, work_dir=work_dir, pg_bin_dir=_get(env, "PG_BIN_DIR"),
                            s3_connection=connection, s3_conn_id=s3_conn_id)


def schedule_or_none(env: Mapping[str, str] | None = None) -> str | None:
    """``DUMP_TO_S3_SCHEDULE`` for the DAG file at parse time; ``None`` (ad hoc only) when unset or invalid.

    An invalid value also makes the task fail at run time, naming the variable.
    """
    env = os.environ if env is None else env
    if not _get(env, SCHEDULE_VAR):
        return None
    try:
        return parse_cron(env, SCHEDULE_VAR, "0 3 * * 0")
    except SettingsError:
        return None


def object_key(prefix: str, now: datetime | None = None) -> str:
    """``{prefix}-YYYYMMDD-HHmmss`` in UTC, as the seed named its objects."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{prefix}-{now:%Y%m%d-%H%M%S}"


# -- S3 client ------------------------------------------------------------------------------------

def settings_connection(s3: S3Settings, conn_id: str = S3_CONN_ID):
    """An in-memory ``aws`` Airflow connection built from the seed's ``S3_*`` variables."""
    from airflow.sdk import Connection

    extra: dict[str, Any] = {}
    if s3.endpoint:
        extra["endpoint_url"] = s3.endpoint
    if s3.region:
        extra["region_name"] = s3.region
    return Connection(conn_id=f"{conn_id} (S3_* variables)", conn_type="aws", login=s3.access_key,
                      password=s3.secret_key, extra=json.dumps(extra))


def botocore_config(custom_endpoint: bool, connection_extra: Mapping | None = None):
    """Path-style addressing and plain checksums for custom endpoints (OVH, MinIO, Ceph), standard retries.

    Recent boto3 sends CRC checksums (trailers) by default that several S3-compatible stores reject:
    ``when_required`` keeps the classic behaviour there. A connection's own ``config_kwargs`` win.
    """
    from botocore.config import Config

    if connection_extra and connection_extra.get("config_kwargs"):
        return None  # the provider builds the Config from the connection's extra
    kwargs: dict[str, Any] = {"retries": {"max_attempts": 5, "mode": "standard"}, "connect_timeout": 10,
                              "read_timeout": 120}
    if custom_endpoint:
        kwargs.update(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                      response_checksum_validation="when_required")
    return Config(**kwargs)


def make_hook(settings: DumpToS3Settings, chunk_mb: int = DEFAULT_CHUNK_MB, concurrency: int = DEFAULT_CONCURRENCY):
    """An :class:`S3Hook` on the connection ``replication_s3`` if defined, else on the ``S3_*`` variables."""
    from pgrepl.hooks.s3 import ResolvedConnectionS3Hook

    connection = settings.s3_connection or settings_connection(settings.s3, settings.s3_conn_id)
    extra = getattr(connection, "extra_dejson", None) or {}
    transfer = {"multipart_threshold": chunk_mb * MB, "multipart_chunksize": chunk_mb * MB,
                "max_concurrency": concurrency, "use_threads": True}
    return ResolvedConnectionS3Hook(connection, transfer_config_args=transfer,
                                    config=botocore_config(bool(extra.get("endpoint_url")), extra))


# -- errors ---------------------------------------------------------------------------------------

_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                     "AuthorizationHeaderMalformed", "InvalidSecurity"}


def explain_s3_error(exc: BaseException, settings: DumpToS3Settings, action: str) -> S3DumpError:
    """Turn a botocore/boto3 error into one line naming the setting at fault."""
    from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, NoCredentialsError

    bucket = settings.s3.bucket
    text = str(exc)
    cause = exc if isinstance(exc, ClientError) else (exc.__cause__ or exc.__context__)
    code = cause.response.get("Error", {}).get("Code", "") if isinstance(cause, ClientError) else ""
    if not code:  # boto3's S3UploadFailedError keeps only the message of the ClientError
        for candidate in ("NoSuchBucket", *_CREDENTIAL_CODES, "AccessDenied"):
            if f"({candidate})" in text:
                code = candidate
                break
    if code in ("NoSuchBucket", "404"):
        return S3DumpError(f"S3_BUCKET_NAME: bucket {bucket!r} does not exist at {settings.endpoint} ({action})",
                           retryable=False)
    if code == "InvalidAccessKeyId":
        return S3DumpError(f"{settings.credentials_setting}: the access key is not known to {settings.endpoint} "
                           f"({action})", retryable=False)
    if code == "SignatureDoesNotMatch":
        return S3DumpError(f"{settings.credentials_setting}: the secret key does not match the access key "
                           f"({action} at {settings.endpoint})", retryable=False)
    if code in _CREDENTIAL_CODES:
        return S3DumpError(f"{settings.credentials_setting}: credentials rejected by {settings.endpoint} "
                           f"({code}, {action})", retryable=False)
    if code in ("AccessDenied", "403"):
        return S3DumpError(f"{settings.credentials_setting}: access denied to bucket {bucket!r} "
                           f"(S3_BUCKET_NAME) at {settings.endpoint} ({action})", retryable=False)
    if isinstance(exc, NoCredentialsError):
        return S3DumpError(f"{settings.credentials_setting}: not set, and boto3 found no other AWS credentials",
                           retryable=False)
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)) or "Could not connect to the endpoint" in text:
        return S3DumpError(f"{settings.endpoint_setting}: cannot reach {settings.endpoint} ({action}): {text}")
    return S3DumpError(f"S3 {action} to s3://{bucket} at {settings.endpoint} failed: {code or type(exc).__name__}: "
                       f"{text}")


def check_bucket(client, settings: DumpToS3Settings, log_line: LogLine = print) -> None:
    """Fail fast, before an hours-long dump, on an unknown bucket, bad credentials or a dead endpoint.

    A key allowed to write but not to list (``AccessDenied``) only gets a warning: the upload will tell.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.list_objects_v2(Bucket=settings.s3.bucket, MaxKeys=1)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "AccessDenied":
            log_line(f"warning: cannot list bucket {settings.s3.bucket!r} (AccessDenied); trying the upload anyway")
            return
        raise explain_s3_error(exc, settings, "checking the bucket") from None
    except BotoCoreError as exc:
        raise explain_s3_error(exc, settings, "checking the bucket") from None


# -- dump and upload ------------------------------------------------------------------------------

def pg_dump_argv(pg_dump: str, source: PgConn, out_file: str) -> list[str]:
    """Full ``pg_dump`` of the source in custom format (compressed, one file, read by ``pg_restore``)."""
    return [pg_dump, "--format=custom", "--no-password", "--file", out_file, "--dbname", source.safe_url()]


def dump_source(settings: DumpToS3Settings, out_file: str, log_line: LogLine = print) -> int:
    """``pg_dump`` the whole source into ``out_file``; return its size in bytes."""
    folder = os.path.dirname(out_file)
    passfile = write_passfile(os.path.join(folder, f".{os.path.basename(out_file)}.pgpass"), [settings.source])
    try:
        run_logged(pg_dump_argv(tool("pg_dump", settings.pg_bin_dir), settings.source, out_file),
                   client_env(passfile), log_line, error=S3DumpError)
    finally:
        if passfile:
            os.unlink(passfile)
    return os.path.getsize(out_file)


class _Progress:
    """Thread-safe byte counter for boto3's ``Callback``, logging every ``step`` fraction."""

    def __init__(self, total: int, log_line: LogLine, step: float = 0.1) -> None:
        self.total, self.log_line, self.step = total, log_line, step
        self.sent = 0
        self.next_mark = step
        self.lock = threading.Lock()

    def __call__(self, amount: int) -> None:
        with self.lock:
            self.sent += amount
            if self.total and self.sent / self.total >= self.next_mark:
                self.log_line(f"uploaded {self.sent / MB:.1f} MB of {self.total / MB:.1f} MB "
                              f"({100 * self.sent / self.total:.0f} %)")
                while self.sent / self.total >= self.next_mark:
                    self.next_mark += self.step


def abort_incomplete_uploads(client, bucket: str, key: str) -> int:
    """Abort every multipart upload left under exactly ``key``; return how many there were."""
    aborted = 0
    response = client.list_multipart_uploads(Bucket=bucket, Prefix=key)
    for upload in response.get("Uploads", []):
        if upload.get("Key") == key:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            aborted += 1
    return aborted


def upload_file(hook, path: str, bucket: str, key: str, log_line: LogLine = print,
                callback: Callable[[int], None] | None = None) -> None:
    """Multipart upload of ``path`` with the hook's client and ``TransferConfig``; nothing left on failure.

    (``S3Hook.load_file`` does the same call but takes no progress ``Callback``.)
    """
    client = hook.get_conn()
    progress = _Progress(os.path.getsize(path), log_line)

    def on_bytes(amount: int) -> None:
        progress(amount)
        if callback is not None:
            callback(amount)

    try:
        client.upload_file(path, bucket, key, ExtraArgs=hook.extra_args, Config=hook.transfer_config,
                           Callback=on_bytes)
    except BaseException:
        try:
            aborted = abort_incomplete_uploads(client, bucket, key)
            if aborted:
                log_line(f"aborted {aborted} incomplete multipart upload(s) of {key}")
        except Exception as cleanup_exc:  # noqa: BLE001 - report the upload's error, not the sweep's
            log_line(f"warning: could not list/abort incomplete uploads of {key}: {cleanup_exc}")
        raise


def dump_to_s3(settings: DumpToS3Settings, hook=None, log_line: LogLine = print, now: datetime | None = None,
               upload_callback: Callable[[int], None] | None = None) -> dict:
    """Check the bucket, dump the source, upload the dump, remove it; return what was uploaded.

    :returns: ``{"bucket", "key", "bytes", "dump_seconds", "upload_seconds"}``
    """
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    hook = hook or make_hook(settings)
    client = hook.get_conn()
    bucket, key = settings.s3.bucket, object_key(settings.s3.prefix, now)
    check_bucket(client, settings, log_line)

    folder = os.path.join(settings.work_dir, "dump_to_s3")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, f"{key}.pgdump")
    try:
        started = time.monotonic()
        free_mb = shutil.disk_usage(folder).free / MB
        log_line(f"pg_dump --format=custom of {settings.source.safe_url()} into {path} ({free_mb:.0f} MB free)")
        size = dump_source(settings, path, log_line)
        dumped = time.monotonic()
        log_line(f"dump is {size / MB:.1f} MB; uploading to s3://{bucket}/{key} at {settings.endpoint}")
        try:
            upload_file(hook, path, bucket, key, log_line, upload_callback)
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise explain_s3_error(exc, settings, f"uploading {key}") from None
        uploaded = time.monotonic()
    finally:
        if os.path.exists(path):
            os.unlink(path)
    log_line(f"uploaded s3://{bucket}/{key} ({size} bytes); local dump removed")
    return {"bucket": bucket, "key": key, "bytes": size, "dump_seconds": round(dumped - started, 3),
            "upload_seconds": round(uploaded - dumped, 3)}

