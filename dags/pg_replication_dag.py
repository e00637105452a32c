"""
### pg_replication — nightly copy of production into the warehouse

Replaces the seed's bull queues (`1024pix/pix-db-replication`):

| step | what it does |
|---|---|
| `preflight` | validates every setting, reaches both databases, checks client versions and the target role, takes the run lease |
| `dump` | `pg_dump` directory format with `--jobs`, without the rows of `BACKUP_MODE` tables (their structure is dumped), rows counted in the same snapshot |
| `restore` | tonight's copy built in staging schemas (`pg_restore --jobs`), switched in by one short transaction; readers keep yesterday's warehouse until then, a failure never touches it |
| `rollback` | only after a failed restore: drops what is left of its staging work |
| `compat_views` | `include/sql/compat/*.sql` |
| `enrichment` | `include/sql/indexes/*.sql` again (built by the restore already; here for `BACKUP_MODE` tables), then every `include/sql/enrichment/*.sql`, in name order |
| `incremental_tables` | the `incremental` tables of `BACKUP_MODE`, parents first |
| `incremental` | one mapped task per `incremental` table: new rows by key (and late commits, source deletes), streamed with COPY in one transaction |
| `refresh_views` | refreshes the materialized views that read kept tables, now that the incremental rows are in |
| `kept_comments` | the source's table and column comments onto the tables of `BACKUP_MODE` (`RESTORE_COMMENTS`) |
| `user_views` | the warehouse users' own views and materialized views, saved before the swap, recreated (those that no longer compile are reported, never fatal) |
| `learning_content` | the LCMS API into eight typed tables, swapped atomically (skipped when not configured) |
| `verify` | warehouse row counts against what the copy saw; emits the `warehouse_refreshed` Asset |
| `report` | durations and the per-kind `pg_restore` timings (the seed's `parse-replication-logs`) |
| `notify` | one mapped POST per `NOTIFICATIONS` entry with the run summary (no retry) |
| `release` | frees the run lease, whatever happened |

Any failed task also sends a failure message naming it to every `NOTIFICATIONS` entry.
Restart a failed step: fix the cause, clear it with its downstream tasks, or clear only the failed tasks (UI, or
`airflow tasks clear pg_replication -t <task> --downstream -s <logical date> -e <logical date>`). A failed
`restore` restarts from a fresh dump of the source. Settings: README and `.env.sample`.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from pgrepl.assets import WAREHOUSE_REFRESHED
from pgrepl.dag_defaults import START_DATE, default_args
from pgrepl.lease import release_on_run_end
from pgrepl.notify import WebhookNotifier
from pgrepl.operators.dump_restore import PgDumpOperator, PgRestoreOperator, WarehouseSQLOperator
from pgrepl.operators.end_of_run import WebhookOperator
from pgrepl.operators.incremental import PostgresIncrementalOperator
from pgrepl.operators.learning_content import LearningContentOperator
from pgrepl.settings import schedule_or_default
from pgrepl.sqlfiles import SQL_ROOT, template_names
from pgrepl.task_settings import FK_AS_CONFIGURED

with DAG(
    dag_id="pg_replication",
    description="Nightly copy of production into the warehouse: dump, restore behind a swap, incremental, learning content",
    doc_md=__doc__,
    schedule=schedule_or_default(),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["replication", "warehouse", "postgres"],
    template_searchpath=[str(SQL_ROOT)],
    # every path that ends a run frees its lease (a run restarted with "clear only failed tasks" included)
    on_success_callback=release_on_run_end,
    on_failure_callback=[WebhookNotifier(ignore_tasks=("notify",)), release_on_run_end],
    params={
        "restore_fk_constraints": Param(
            FK_AS_CONFIGURED,
            type="string",
            enum=[FK_AS_CONFIGURED, "on", "off"],
            values_display={FK_AS_CONFIGURED: "as configured (RESTORE_FK_CONSTRAINTS)", "on": "on: restore foreign keys",
                            "off": "off: no foreign keys"},
            title="Foreign keys",
            description="Restore the foreign keys in this run, or follow the RESTORE_FK_CONSTRAINTS setting",
        ),
        "jobs": Param(
            None, type=["null", "integer"], minimum=1, maximum=64,
            description="Override PG_RESTORE_JOBS for this run's dump and restore (null: the setting)",
        ),
    },
    default_args=default_args(),
) as dag:

    @task(retries=0)
    def preflight(run_id: str | None = None, dag_run=None) -> dict:
        """Settings, databases, tools, roles, work folder, run lease."""
        from pgrepl.tasks import preflight as run_preflight

        return run_preflight(run_id, dag_run.dag_id)

    checked = preflight()

    dump = PgDumpOperator(task_id="dump")
    restore = PgRestoreOperator(task_id="restore")

    @task(trigger_rule="one_failed", retries=0)
    def rollback(run_id: str | None = None) -> list[str]:
        """After a failed restore: its staging work dropped (the live warehouse was never touched)."""
        from pgrepl.tasks import rollback as run_rollback

        return run_rollback(run_id)

    compat_views = WarehouseSQLOperator(
        task_id="compat_views",
        sql=template_names("compat"),
    )
    enrichment = WarehouseSQLOperator(
        task_id="enrichment",
        sql=template_names("indexes") + template_names("enrichment"),
    )

    @task(retries=0)
    def incremental_tables() -> list[str]:
        """The `incremental` tables of BACKUP_MODE, parents first (one mapped copy each)."""
        from pgrepl.tasks import incremental_plan

        return incremental_plan()

    planned = incremental_tables()
    incremental = PostgresIncrementalOperator.partial(
        task_id="incremental", map_index_template="{{ task.table }}"
    ).expand(table=planned)

    @task(trigger_rule="none_failed")
    def refresh_views(restore_result: dict, run_id: str | None = None) -> dict:
        """Materialized views reading kept tables: refreshed once the incremental rows are in (the restore created
        them empty)."""
        import psycopg

        from pgrepl.errors import airflow_errors
        from pgrepl.fullcopy import refresh_after_incremental
        from pgrepl.task_settings import replication_settings

        views = (restore_result or {}).get("refresh_after_incremental") or []
        # a view that fails to compute fails at once; a lost connection or a busy warehouse is retried
        with airflow_errors("refreshing materialized views failed: ", catch=(psycopg.Error,)):
            return refresh_after_incremental(replication_settings(), views, run_id)

    refreshed = refresh_views(restore.output)

    @task(trigger_rule="none_failed")
    def kept_comments(run_id: str | None = None, **context) -> dict:
        """Table and column comments of the kept tables, copied from the source (RESTORE_COMMENTS)."""
        from pgrepl.tasks import kept_comments as copy_kept_comments
        return copy_kept_comments(run_id, context)

    @task(trigger_rule="none_failed")
    def user_views(run_id: str | None = None, **context) -> dict:
        """The warehouse users' views saved before the swap, recreated now (under the warehouse lock)."""
        from pgrepl.user_views import recreate_task

        return recreate_task(run_id, context)

    recreated_views = user_views()
    learning_content = LearningContentOperator(task_id="learning_content", trigger_rule="none_failed")

    # A restore that took a fresh dump (restart after a failed restore) returns it: its counts and timings count.
    # Learning content's XCom is pulled only when preflight saw it configured (a skipped task has none to pull).

    @task(trigger_rule="none_failed", outlets=[WAREHOUSE_REFRESHED])
    def verify(dump_result: dict, restore_result: dict, checked_result: dict, incremental_results=None,
               ti=None) -> dict:
        """Warehouse row counts equal what the copy saw."""
        from pgrepl.operators.end_of_run import verify_run

        learning = ti.xcom_pull(task_ids="learning_content") if checked_result.get("learning_content") else None
        return verify_run(restore_result.get("dump") or dump_result, incremental_results, learning)

    @task(trigger_rule="none_failed")
    def report(dump_result: dict, restore_result: dict, enrichment_result: dict, dag_run=None) -> dict:
        """Durations and per-kind pg_restore timings, in the log and XCom."""
        from pgrepl.operators.end_of_run import report_run

        return report_run(restore_result.get("dump") or dump_result, restore_result, enrichment_result,
                          started_at=dag_run.start_date)

    @task(trigger_rule="none_failed")
    def notifications(report_result: dict, checked_result: dict, incremental_results=None, user_views_result=None,
                      dag_run=None, ti=None) -> list[dict]:
        """One request per NOTIFICATIONS entry, carrying the run summary."""
        import os

        from pgrepl.notify import notification_requests, run_summary
        from pgrepl.settings import parse_notifications

        learning = ti.xcom_pull(task_ids="learning_content") if checked_result.get("learning_content") else None
        summary = run_summary(dag_run.dag_id, dag_run.run_id, "success", report_result,
                              incremental_results, learning, user_views_result)
        return notification_requests(parse_notifications(os.environ), summary)

    @task(trigger_rule="all_done", retries=0)
    def release(run_id: str | None = None) -> bool:
        """Free the run lease, whatever happened."""
        from pgrepl.tasks import release as run_release

        return run_release(run_id)

    verified = verify(dump.output, restore.output, checked, incremental.output)
    reported = report(dump.output, restore.output, enrichment.output)
    requests = notifications(reported, checked, incremental.output, recreated_views)
    notify = WebhookOperator.partial(task_id="notify", retries=0).expand_kwargs(requests)

    checked >> dump >> restore >> compat_views >> enrichment >> planned
    incremental >> refreshed >> kept_comments() >> recreated_views >> learning_content >> verified
    restore >> rollback()
    verified >> requests
    [verified, learning_content] >> release()
