"""
# pg_replication_deadline — tells the webhooks when the night is late

Runs once a day at `DEADLINE` (default `08:00`, Europe/Paris). If `pg_replication` still has a run queued or
running then, one message goes to every `NOTIFICATIONS` entry naming the run that holds the warehouse and its
unfinished tasks (`status: "late"`); otherwise it does nothing. One short task, no sensor: nothing waits.
See `pgrepl.deadline` for why this is not Airflow's `DeadlineAlert`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, task

from pgrepl.dag_defaults import START_DATE, default_args
from pgrepl.deadline import deadline_cron

with DAG(
    dag_id="pg_replication_deadline",
    description="At DEADLINE (08:00 Paris): webhooks name what pg_replication still runs",
    doc_md=__doc__,
    schedule=deadline_cron(),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["pg-replication", "alerting"],
    default_args=default_args(timedelta(minutes=1)),
) as dag:

    @task(retries=0, execution_timeout=timedelta(minutes=10))
    def check_deadline() -> dict:
        """Report a pg_replication run still queued or running to every NOTIFICATIONS entry."""
        from pgrepl.deadline import check_deadline as run_check

        return run_check()

    check_deadline()
