"""
# dump_to_s3 — a full dump of the source database, uploaded to S3 (ad hoc)

`pg_dump --format=custom` of the whole source (connection `replication_source` or
`SOURCE_DATABASE_URL`; nothing excluded) into the work dir (`REPLICATION_WORK_DIR`), uploaded in parts to
`s3://$S3_BUCKET_NAME/$S3_OBJECT_NAME_PREFIX-YYYYMMDD-HHmmss` (UTC) through the amazon provider, then the
local file is removed. Memory stays flat whatever the dump's size; a failed upload is aborted, leaving no
partial object. Restore with `pg_restore --no-owner --dbname ... <file>`.

* **S3:** connection `replication_s3` (type `aws`) if defined, else `S3_ENDPOINT`, `S3_REGION`,
  `S3_ACCESS_KEY`, `S3_SECRET_ACCESS_KEY`, `S3_SSL_ENABLED`. Custom endpoints (OVH, MinIO) use
  path-style addressing.
* **When:** `airflow dags trigger dump_to_s3`; or on the cron in `DUMP_TO_S3_SCHEDULE` (Europe/Paris).
* **Errors:** an unknown bucket, rejected keys or an unreachable endpoint fail the task with a line naming
  the setting; the first two are not retried.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from pgrepl.dag_defaults import START_DATE, default_args
from pgrepl.operators.dump_to_s3 import DumpToS3Operator
from pgrepl.s3_dump import schedule_or_none

with DAG(
    dag_id="dump_to_s3",
    description='Ad hoc: full pg_dump of the source, streamed to S3 (S3_BUCKET_NAME)',
    doc_md=__doc__,
    schedule=schedule_or_none(),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["pg-replication", "backup", "s3"],
    default_args=default_args(timedelta(minutes=1)),
) as dag:
    DumpToS3Operator(task_id="dump_and_upload", execution_timeout=timedelta(hours=12))
