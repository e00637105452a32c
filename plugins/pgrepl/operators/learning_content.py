"""``LearningContentOperator``: step 7 of the nightly ``pg_replication`` DAG."""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowSkipException

from pgrepl.settings import LCMS_CONN_ID, TARGET_CONN_ID


class LearningContentOperator(BaseOperator):
    """Replace the warehouse's learning-content tables with the LCMS API's content, atomically.

    Settings are read when the task runs: connection ``lcms_conn_id`` or ``LCMS_API_URL`` /
    ``LCMS_API_KEY`` (and ``APP``) for the API - the task is skipped, saying so, when neither is set -
    and connection ``target_conn_id`` (or ``TARGET_DATABASE_URL`` / ``DATABASE_URL``) for the
    warehouse. Bad settings, HTTP 4xx, a body that is not JSON and content that does not fit the
    tables fail the task without retry; 5xx answers and timeouts are retried inside the task
    (``http_retries``) and then by Airflow.

    :param endpoint: path under the API URL (templated)
    :param timeout_seconds: connect and read timeout of one HTTP attempt
    :param http_retries: extra attempts after a 5xx answer, a timeout or a refused connection
    :param retry_wait_seconds: first back-off between attempts (doubles each time, at most 60 s)
    :param drop_dependents: drop views / foreign keys that depend on the old tables (the seed's
        ``DROP TABLE ... CASCADE``); by default such a dependency fails the task and nothing changes
    :param lcms_conn_id: connection of the API (``lcms_api``)
    :param target_conn_id: connection of the warehouse (``replication_target``)
    :return (XCom): ``{"tables": {table: rows}, "seconds": elapsed}``
    """

    template_fields: Sequence[str] = ("endpoint",)
    ui_color = "#e8f4fa"

    def __init__(
        self,
        *,
        endpoint: str = "databases/airtable",
        timeout_seconds: float = 180.0,
        http_retries: int = 3,
        retry_wait_seconds: float = 5.0,
        drop_dependents: bool = False,
        lcms_conn_id: str = LCMS_CONN_ID,
        target_conn_id: str = TARGET_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.timeout_seconds = timeout_seconds
        self.http_retries = http_retries
        self.retry_wait_seconds = retry_wait_seconds
        self.drop_dependents = drop_dependents
        self.lcms_conn_id = lcms_conn_id
        self.target_conn_id = target_conn_id

    def execute(self, context: Context) -> dict:
        from pgrepl.errors import airflow_errors
        from pgrepl.hooks.postgres import WarehouseHook
        from pgrepl.learning_content.sync import sync_learning_content
        from pgrepl.settings import airflow_connection_getter, load_lcms

        with airflow_errors():
            lcms = load_lcms(get_connection=airflow_connection_getter, conn_id=self.lcms_conn_id)
        if lcms is None:
            self.log.info(
                "learning content not configured (no connection %s, no LCMS_API_URL/LCMS_API_KEY): skipping",
                self.lcms_conn_id,
            )
            raise AirflowSkipException("learning content not configured")
        with airflow_errors():
            target = WarehouseHook(self.target_conn_id).get_pgconn()
        with airflow_errors("learning content: "):
            result = sync_learning_content(
                lcms,
                target,
                endpoint=self.endpoint,
                timeout=self.timeout_seconds,
                retries=self.http_retries,
                retry_wait=self.retry_wait_seconds,
                cascade=self.drop_dependents,
                lcms_conn_id=self.lcms_conn_id,
                logger=self.log,
            )
        self.log.info("learning content loaded in %.1f s: %s", result["seconds"], result["tables"])
        return result
