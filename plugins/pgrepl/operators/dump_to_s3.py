"""``DumpToS3Operator``: full ``pg_dump`` of the source, uploaded to S3 in parts."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from pgrepl.errors import airflow_errors
from pgrepl.s3_dump import DEFAULT_CHUNK_MB, DEFAULT_CONCURRENCY, dump_to_s3, load_settings, make_hook
from pgrepl.settings import S3_CONN_ID, SOURCE_CONN_ID, airflow_connection_getter


class DumpToS3Operator(BaseOperator):
    """Dump the whole source (custom format) into the work dir, upload it to S3, remove the local file.

    Source: connection ``source_conn_id`` or ``SOURCE_DATABASE_URL``. S3: connection ``s3_conn_id``
    (type ``aws``: login/password = keys, extra ``endpoint_url``, ``region_name``) if defined, else the
    seed's ``S3_*`` variables; the bucket and object prefix always come from ``S3_BUCKET_NAME`` and
    ``S3_OBJECT_NAME_PREFIX``. Object key: ``{S3_OBJECT_NAME_PREFIX}-YYYYMMDD-HHmmss`` (UTC).

    Bad settings, an unknown bucket or rejected credentials fail without retry; an unreachable endpoint
    or a failed dump is retried.

    :param chunk_mb: multipart part size in MiB (memory use is a few parts, whatever the dump's size).
    :param max_concurrency: parts uploaded in parallel.
    :param source_conn_id: connection of the source (``replication_source``)
    :param s3_conn_id: ``aws`` connection of the bucket (``replication_s3``)
    """

    ui_color = "#f7e3c8"

    def __init__(self, *, chunk_mb: int = DEFAULT_CHUNK_MB, max_concurrency: int = DEFAULT_CONCURRENCY,
                 source_conn_id: str = SOURCE_CONN_ID, s3_conn_id: str = S3_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chunk_mb = chunk_mb
        self.max_concurrency = max_concurrency
        self.source_conn_id = source_conn_id
        self.s3_conn_id = s3_conn_id

    def execute(self, context: Any) -> dict:
        with airflow_errors():
            settings = load_settings(get_connection=airflow_connection_getter, source_conn_id=self.source_conn_id,
                                     s3_conn_id=self.s3_conn_id)
            hook = make_hook(settings, chunk_mb=self.chunk_mb, concurrency=self.max_concurrency)
            result = dump_to_s3(settings, hook, log_line=lambda line: self.log.info("%s", line))
        self.log.info("s3://%s/%s: %s bytes, dump %.1f s, upload %.1f s", result["bucket"], result["key"],
                      result["bytes"], result["dump_seconds"], result["upload_seconds"])
        return result
