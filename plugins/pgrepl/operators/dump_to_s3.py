"""``DumpToS3Operator``: full ``pg_dump`` of the source, uploaded to S3 in parts."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from pgrepl.pgtools import PgToolError
from pgrepl.s3_dump import DEFAULT_CHUNK_MB, DEFAULT_CONCURRENCY, S3DumpError, dump_to_s3, load_settings, make_hook
from pgrepl.settings import SettingsError, airflow_connection_getter


class DumpToS3Operator(BaseOperator):
    """Dump the whole source (custom format) into the work dir, upload it to S3, remove the local file.

    Source: connection ``replication_source`` or ``SOURCE_DATABASE_URL``. S3: connection ``replication_s3``
    (type ``aws``: login/password = keys, extra ``endpoint_url``, ``region_name``) if defined, else the
    seed's ``S3_*`` variables; the bucket and object prefix always come from ``S3_BUCKET_NAME`` and
    ``S3_OBJECT_NAME_PREFIX``. Object key: ``{S3_OBJECT_NAME_PREFIX}-YYYYMMDD-HHmmss`` (UTC).

    Bad settings, an unknown bucket or rejected credentials fail without retry; an unreachable endpoint
    or a failed dump is retried.

    :param chunk_mb: multipart part size in MiB (memory use is a few parts, whatever the dump's size).
    :param max_concurrency: parts uploaded in parallel.
    """

    ui_color = "#f7e3c8"

    def __init__(self, *, chunk_mb: int = DEFAULT_CHUNK_MB, max_concurrency: int = DEFAULT_CONCURRENCY,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chunk_mb = chunk_mb
        self.max_concurrency = max_concurrency

    def execute(self, context: Any) -> dict:
        try:
            settings = load_settings(get_connection=airflow_connection_getter)
        except SettingsError as exc:
            raise AirflowFailException(str(exc)) from None
        hook = make_hook(settings, chunk_mb=self.chunk_mb, concurrency=self.max_concurrency)
        try:
            result = dump_to_s3(settings, hook, log_line=lambda line: self.log.info("%s", line))
        except PgToolError as exc:
            raise AirflowFailException(f"PG_BIN_DIR: {exc}") from None
        except S3DumpError as exc:
            if exc.retryable:
                raise AirflowException(str(exc)) from None
            raise AirflowFailException(str(exc)) from None
        self.log.info("s3://%s/%s: %s bytes, dump %.1f s, upload %.1f s", result["bucket"], result["key"],
                      result["bytes"], result["dump_seconds"], result["upload_seconds"])
        return result
