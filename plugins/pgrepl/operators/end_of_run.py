"""End of the nightly run: verification, the timing report, the success webhooks.

* :func:`verify_run` and :func:`report_run` are the bodies of the DAG's ``verify`` and ``report`` tasks;
* :class:`WebhookOperator` is an ``HttpOperator`` that posts to a full URL (no Airflow connection per
  webhook): map it with ``WebhookOperator.partial(task_id="notify", retries=0).expand_kwargs(...)`` over
  :func:`pgrepl.notify.notification_requests`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from airflow.providers.http.hooks.http import HttpHook
from airflow.providers.http.operators.http import HttpOperator
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.log import mask_secret

from pgrepl import report as reporting
from pgrepl.errors import airflow_errors
from pgrepl.hooks.webhook import WEBHOOK_CONN_ID, UrlHttpHook
from pgrepl.hooks.postgres import WarehouseHook
from pgrepl.notify import CONTENT_TYPE, DEFAULT_TIMEOUT, request_headers, split_url
from pgrepl.pgtools import PgConn
from pgrepl.settings import TARGET_CONN_ID, Notification, parse_notifications
from pgrepl.verify import expected_from_runs, incremental_findings, verify_counts

log = logging.getLogger(__name__)


def verify_run(dump: Mapping | None, incremental: Iterable[Mapping] | None = None,
               learning_content: Mapping | None = None, target: PgConn | None = None,
               target_conn_id: str = TARGET_CONN_ID) -> dict:
    """Compare the warehouse with what the copy saw; ``AirflowFailException`` naming every mismatch.

    :param dump: XCom of ``dump`` (``source_counts``)
    :param incremental: XComs of the mapped ``incremental`` task (may be empty or hold ``None``)
    :param learning_content: XCom of ``learning_content`` or ``None`` when skipped
    :param target: the warehouse; by default the connection ``target_conn_id`` (or its URL variables)
    """
    incremental = list(incremental or [])
    expected, max_ids = expected_from_runs(dump, incremental, learning_content)
    if not expected:
        raise AirflowFailException("verify: nothing to check (the dump reported no table counts)")
    found = incremental_findings(incremental)
    for table, rows in sorted(found["deleted_at_source"].items()):
        log.warning("table %s: %s row(s) deleted at the source are kept in the warehouse (\"deletes\": \"ignore\"); "
                    "not a failure", table, rows)
    for table, rows in sorted(found["deleted_propagated"].items()):
        log.info("table %s: %s row(s) deleted at the source were deleted in the warehouse", table, rows)
    for table, rows in sorted(found["late_copied"].items()):
        log.info("table %s: %s late-committed row(s) below the watermark copied", table, rows)
    with airflow_errors():
        target = target or WarehouseHook(target_conn_id).get_pgconn()
        result = verify_counts(target, expected, max_ids, found["key_columns"], found["losses"])
    log.info("warehouse verified: %s tables, %s rows, as the copy saw them", result["tables"], result["rows"])
    summary = {"tables": result["tables"], "rows": result["rows"]}
    for name in ("deleted_at_source", "deleted_propagated"):  # rows per table, only when there are some
        if found[name]:
            summary[name] = found[name]
    return summary


def report_run(dump: Mapping | None, restore: Mapping | None, enrichment: Mapping | None,
               started_at: datetime | None = None, total_seconds: float | None = None) -> dict:
    """Build the run report, print it in the task log, return it (for XCom and the webhook body).

    :param started_at: start of the DAG run (``context["dag_run"].start_date``): total = now - start
    """
    if total_seconds is None and started_at is not None:
        total_seconds = (datetime.now(timezone.utc) - started_at).total_seconds()
    result = reporting.build_report(dump, restore, enrichment, total_seconds)
    for line in reporting.format_report(result).splitlines():
        log.info("%s", line)
    return result


class WebhookOperator(HttpOperator):
    """POST a JSON body to one ``NOTIFICATIONS`` entry, with ``Authorization: <token>`` when it has one.

    :param notification: index of the entry in ``NOTIFICATIONS`` (its token is read at run time, never
        passed through XCom or templates)
    :param endpoint: the entry's full URL (templated)
    :param data: the JSON body (templated)
    :param notifications: the entries (tests); by default ``NOTIFICATIONS`` at run time
    :param timeout: seconds for the request
    """

    template_fields: Sequence[str] = ("endpoint", "data", "notification")

    def __init__(self, *, notification: int, endpoint: str, data: str,
                 notifications: Sequence[Notification] | None = None, timeout: float = DEFAULT_TIMEOUT,
                 **kwargs: Any) -> None:
        kwargs.setdefault("method", "POST")
        kwargs.setdefault("http_conn_id", WEBHOOK_CONN_ID)
        super().__init__(endpoint=endpoint, data=data, headers=dict(CONTENT_TYPE),
                         extra_options={"timeout": timeout}, **kwargs)
        self.notification = notification
        self.notifications = notifications
        self.timeout = timeout
        self._base_url = ""

    def _entry(self) -> Notification:
        with airflow_errors():
            entries = list(self.notifications) if self.notifications is not None else parse_notifications(os.environ)
        index = int(self.notification)
        if index >= len(entries) or entries[index].url != self.endpoint:
            raise AirflowFailException(
                f"NOTIFICATIONS: entry {index} is no longer {self.endpoint!r} (the setting changed during the run)"
            )
        return entries[index]

    @property
    def hook(self) -> HttpHook:
        return UrlHttpHook(self._base_url, method=self.method, tcp_keep_alive=self.tcp_keep_alive)

    def execute(self, context: Any) -> dict:
        entry = self._entry()
        if entry.token:
            mask_secret(entry.token)
        url = entry.url
        self._base_url, self.endpoint = split_url(url)
        self.headers = request_headers(entry)
        self.log.info("POST run summary (%s bytes) to %s", len(self.data or ""), url)
        status = super().execute(context)
        return {"url": url, "status_code": status}

    def process_response(self, context: Any, response: Any) -> Any:
        self.log.info("webhook answered HTTP %s", response.status_code)
        return response.status_code
