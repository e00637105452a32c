"""``PostgresIncrementalOperator``: one append-only table copied from the source to the warehouse by ``id``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

if TYPE_CHECKING:
    from airflow.sdk import Context


class PostgresIncrementalOperator(BaseOperator):
    """Copy the source rows of ``table`` whose ``id`` is above the warehouse's ``max(id)``, in one transaction.

    A table missing or empty in the warehouse is bootstrapped (created from the source definition, every row
    copied). A warehouse ``max(id)`` above the source's fails the task without copying (the source was rewound);
    so does a table without an integer ``id``. Source and target come from the connections
    ``replication_source`` / ``replication_target`` (or their URL variables), read when the task runs.

    :param table: ``table`` or ``schema.table``, as in ``BACKUP_MODE`` (templated; mapped over in the DAG)
    :param count_source: also count the source table in the copy's snapshot (``source_count`` in the XCom,
        which verification compares to ``rows_after``); turn off to spare a full scan of a huge table
    :return: the XCom, e.g. ``{"table": "answers", "mode": "append", "rows_before": 10, "copied": 5,
        "rows_after": 15, "source_count": 15, "source_max_id": 15, "seconds": 0.1, "rows_per_second": 50.0, ...}``
    """

    template_fields: Sequence[str] = ("table",)
    ui_color = "#cfe8d5"

    def __init__(self, *, table: str, count_source: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.count_source = count_source

    def execute(self, context: Context) -> dict:
        import psycopg

        from pgrepl.incremental import IncrementalError, copy_incremental
        from pgrepl.settings import TableName
        from pgrepl.task_settings import replication_settings

        settings = replication_settings(context)
        table = TableName.parse(str(self.table).strip())
        mode = settings.table_mode(table)
        if mode is None or not mode.incremental:
            self.log.warning("table %s is not \"incremental\" in BACKUP_MODE; copying it incrementally as asked", table)
        try:
            result = copy_incremental(
                settings.source, settings.target, table,
                incremental_tables=settings.incremental_tables, count_source=self.count_source, logger=self.log,
            )
        except IncrementalError as exc:
            if exc.permanent:
                raise AirflowFailException(str(exc)) from None
            raise AirflowException(str(exc)) from None
        except psycopg.Error as exc:  # network, killed session, server restart: worth a retry
            raise AirflowException(
                f"table {table}: incremental copy failed, nothing committed ({type(exc).__name__}: {exc})"
            ) from exc
        return result.as_dict()
