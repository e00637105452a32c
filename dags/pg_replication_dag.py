"""
### pg_replication — nightly copy of production into the warehouse

Replaces the seed's bull queues (`1024pix/pix-db-replication`):

| step | what it does |
|---|---|
| `preflight` | validates every setting, reaches both databases, checks client versions and the target role, takes the run lease |
| `dump` | `pg_dump` directory format with `--jobs`, tables of `BACKUP_MODE` excluded, rows counted in the same snapshot |
| `restore` | `pg_restore --jobs --no-owner --use-list` behind a schema swap: a failure puts yesterday's warehouse back |
| `rollback` | only after a failed restore: makes sure yesterday's warehouse is back in place |
| `compat_views` | `include/sql/compat/*.sql` |
| `enrichment` | every `include/sql/enrichment/*.sql`, in name order |
| `release` | frees the run lease, whatever happened |

Restart a failed step: clear it with its downstream tasks (UI, or
`airflow tasks clear pg_replication -t <task> --downstream`). Settings: README and `.env.sample`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, task

from pgrepl.operators.dump_restore import PgDumpOperator, PgRestoreOperator, WarehouseSQLOperator
from pgrepl.settings import DEFAULT_TIMEZONE, retries_or_default, schedule_or_default

SQL_ROOT = Path(__file__).resolve().parents[1] / "include" / "sql"

with DAG(
    dag_id="pg_replication",
    doc_md=__doc__,
    schedule=schedule_or_default(),
    start_date=pendulum.datetime(2024, 1, 1, tz=DEFAULT_TIMEZONE),
    catchup=False,
    max_active_runs=1,
    tags=["replication", "warehouse", "postgres"],
    template_searchpath=[str(SQL_ROOT)],
    default_args={
        "owner": "data-engineering",
        "retries": retries_or_default(),
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
    },
) as dag:

    @task(retries=0)
    def preflight(run_id: str | None = None) -> dict:
        """Settings, databases, tools, roles, run lease."""
        from pgrepl.tasks import preflight as run_preflight

        return run_preflight(run_id)

    checked = preflight()

    dump = PgDumpOperator(task_id="dump")
    restore = PgRestoreOperator(task_id="restore")

    @task(trigger_rule="one_failed", retries=0)
    def rollback(run_id: str | None = None) -> list[str]:
        """After a failed restore: yesterday's warehouse back in place."""
        from pgrepl.tasks import rollback as run_rollback

        return run_rollback(run_id)

    compat_views = WarehouseSQLOperator(
        task_id="compat_views",
        sql=sorted(f"compat/{p.name}" for p in (SQL_ROOT / "compat").glob("*.sql")),
    )
    enrichment = WarehouseSQLOperator(
        task_id="enrichment",
        sql=sorted(f"enrichment/{p.name}" for p in (SQL_ROOT / "enrichment").glob("*.sql")),
    )

    @task(trigger_rule="all_done", retries=0)
    def release(run_id: str | None = None) -> bool:
        """Free the run lease, whatever happened."""
        from pgrepl.tasks import release as run_release

        return run_release(run_id)

    checked >> dump >> restore >> compat_views >> enrichment
    restore >> rollback()
    enrichment >> release()
