"""``PostgresIncrementalOperator``: one append-only table copied from the source to the warehouse by its key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from airflow.sdk import BaseOperator

from pgrepl.settings import SOURCE_CONN_ID, TARGET_CONN_ID

if TYPE_CHECKING:
    from airflow.sdk import Context


class PostgresIncrementalOperator(BaseOperator):
    """Copy the source rows of ``table`` whose key is above the warehouse's ``max(key)``, in one transaction.

    The key is ``BACKUP_MODE``'s ``key``, else an integer ``id``, else the single-column integer primary key. In
    the same transaction: rows committed late below the watermark are copied, rows deleted at the source are
    deleted (``"deletes": "propagate"``) or counted, rows missing in the warehouse are copied back and reported
    (``missing`` in the XCom: ``verify`` fails the run). A table missing or empty in the warehouse is bootstrapped
    (created from the source definition, a partitioned table with its partitions, every row copied). A warehouse
    ``max(key)`` above the source's fails the task without copying (the source was rewound); so does a table
    without a usable key, and so does a constraint the new rows violate; a lost connection is retried. Source and
    target come from the connections ``source_conn_id`` / ``target_conn_id`` (or their URL variables), read when
    the task runs.

    :param table: ``table`` or ``schema.table``, as in ``BACKUP_MODE`` (templated; mapped over in the DAG)
    :param count_source: also count the source table in the copy's snapshot (``source_count`` in the XCom,
        which verification compares to ``rows_after``); turn off to spare a full scan of a huge table
    :param source_conn_id: connection of the source (``SOURCE_DATABASE_URL`` when it is not defined)
    :param target_conn_id: connection of the warehouse (``TARGET_DATABASE_URL`` / ``DATABASE_URL`` when it is not)
    :return: the XCom, e.g. ``{"table": "answers", "mode": "append", "rows_before": 10, "copied": 5,
        "rows_after": 15, "source_count": 15, "source_max_id": 15, "seconds": 0.1, "rows_per_second": 50.0, ...}``
    """

    template_fields: Sequence[str] = ("table",)
    ui_color = "#cfe8d5"

    def __init__(self, *, table: str, count_source: bool = True, source_conn_id: str = SOURCE_CONN_ID,
                 target_conn_id: str = TARGET_CONN_ID, **kwargs) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.count_source = count_source
        self.source_conn_id = source_conn_id
        self.target_conn_id = target_conn_id

    def execute(self, context: Context) -> dict:
        import psycopg

        from pgrepl.errors import PgreplError, airflow_errors, is_retryable
        from pgrepl.incremental import copy_incremental
        from pgrepl.settings import TableName
        from pgrepl.task_settings import replication_settings

        settings = replication_settings(context, source_conn_id=self.source_conn_id, target_conn_id=self.target_conn_id)
        table = TableName.parse(str(self.table).strip())
        mode = settings.table_mode(table)
        if mode is None or not mode.incremental:
            self.log.warning("table %s is not \"incremental\" in BACKUP_MODE; copying it incrementally as asked", table)
        with airflow_errors():
            try:
                result = copy_incremental(
                    settings.source, settings.target, table,
                    incremental_tables=settings.incremental_tables, count_source=self.count_source, logger=self.log,
                    modes=settings.backup_mode,
                )
            except psycopg.Error as exc:  # a constraint fails at once; network, killed session, restart: retried
                raise PgreplError(
                    f"table {table}: incremental copy failed, nothing committed ({type(exc).__name__}: {exc})",
                    retryable=is_retryable(exc),
                ) from exc
        return result.as_dict()
