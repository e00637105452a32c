"""Webhooks: the run summary posted on success, the failure message posted when a task fails.

Each ``NOTIFICATIONS`` entry ``{"url": ..., "token": ...}`` receives a ``POST`` with a JSON body and,
when a token is given, the header ``Authorization: <token>`` (the seed's contract).

* success: one mapped :class:`~pgrepl.operators.end_of_run.WebhookOperator` (an ``HttpOperator``) per
  entry, built from :func:`notification_requests`; no retry, a failing webhook fails only its own task;
* failure: :class:`WebhookNotifier`, the DAG's ``on_failure_callback``, posts :func:`failure_summary`
  naming the failed task to every entry.

Tokens never reach XCom, rendered templates, logs or argv: the mapped kwargs carry the entry's index
and URL, the token is read from the settings when the request is sent, and masked in the task log.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from airflow.sdk import BaseNotifier

from pgrepl.redact import redact
from pgrepl.settings import Notification, SettingsError, parse_notifications

CONTENT_TYPE = {"Content-Type": "application/json"}
DEFAULT_TIMEOUT = 60.0
def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def run_summary(dag_id: str, run_id: str, status: str, report: Mapping | None,
                incremental: Iterable[Mapping] | None = None, learning_content: Mapping | None = None,
                user_views: Mapping | None = None) -> dict:
    """The JSON body of the success webhook.

    :param report: :func:`pgrepl.report.build_report`'s result (durations, rows restored, restore items)
    :param incremental: the mapped ``incremental`` results (``None`` entries of skipped tables are ignored)
    :param learning_content: ``{"tables": {name: rows}, "seconds": x}`` or ``None`` when skipped
    :param user_views: :func:`pgrepl.user_views.recreate_saved`'s result (users' views recreated, and those that
        no longer compile) or ``None`` when the step did not run
    :return: ``{"dag_id", "run_id", "status", "durations", "tables", "restore", "learning_content",
        "deleted_at_source", "user_views"}``
    """
    report = report or {}
    durations = {step: _round(seconds) for step, seconds in (report.get("durations") or {}).items()}
    tables: dict[str, dict] = {}
    for table, rows in sorted((report.get("rows_restored") or {}).items()):
        tables[table] = {"mode": "full", "rows": int(rows)}
    incremental = [result for result in (incremental or []) if result]
    for result in incremental:
        name = str(result["table"])
        key = name if "." in name else f"public.{name}"
        tables[key] = {
            "mode": result.get("mode", "append"),
            "copied": result.get("copied"),
            "rows": result.get("rows_after"),
            "rows_per_second": _round(result.get("rows_per_second")),
        }
        for name in ("late_copied", "deleted_at_source", "deleted_propagated"):
            if result.get(name):
                tables[key][name] = result[name]
    if incremental:
        durations["incremental"] = _round(sum(float(r.get("seconds") or 0) for r in incremental))
    if learning_content:
        durations["learning_content"] = _round(learning_content.get("seconds"))
    items = report.get("restore_items") or {}
    restore = {
        kind: {"count": entry["count"], "seconds": _round(entry["seconds"]), "slowest": entry.get("slowest", [])}
        for kind, entry in (items.get("kinds") or {}).items()
    }
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "status": status,
        "durations": durations,
        "tables": tables,
        "restore": restore,
        "learning_content": dict((learning_content or {}).get("tables") or {}) or None,
        # rows deleted at the source that the warehouse keeps ("deletes": "ignore"): reported, not a failure
        "deleted_at_source": {key: entry["deleted_at_source"] for key, entry in tables.items()
                              if entry.get("deleted_at_source")},
        "user_views": {key: list(user_views.get(key) or []) for key in ("recreated", "failed", "owner_not_restored")}
        if user_views else None,
    }


def failure_summary(dag_id: str, run_id: str | None, failed_task: str | None, *, map_index: int | None = None,
                    reason: str | None = None, try_number: int | None = None) -> dict:
    """The JSON body of the failure webhook, naming the failed task."""
    task = failed_task or "unknown task"
    if map_index is not None and map_index >= 0:
        task = f"{task}[{map_index}]"
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "status": "failed",
        "failed_task": failed_task,
        "map_index": map_index if map_index is not None and map_index >= 0 else None,
        "try_number": try_number,
        "reason": redact(reason) if reason else None,
        "message": f"{dag_id} run {run_id} failed at task {task}",
    }


def request_headers(notification: Notification) -> dict[str, str]:
    """``Content-Type: application/json`` plus ``Authorization: <token>`` when the entry has a token."""
    headers = dict(CONTENT_TYPE)
    if notification.token:
        headers["Authorization"] = notification.token
    return headers


def split_url(url: str) -> tuple[str, str]:
    """``https://h:1/a/b?q`` -> ``("https://h:1", "/a/b?q")``: base URL for the hook, endpoint for the request."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{parts.scheme}://{parts.netloc}", path + (f"?{parts.query}" if parts.query else "")


def notification_requests(notifications: Sequence[Notification], summary: Mapping) -> list[dict]:
    """Mapped kwargs for ``WebhookOperator.partial(...).expand_kwargs(...)``, one per ``NOTIFICATIONS`` entry.

    Each holds the entry's index, its URL and the JSON body; the token is added when the request is sent.
    """
    body = json.dumps(summary, sort_keys=True, default=str)
    return [{"notification": index, "endpoint": entry.url, "data": body} for index, entry in enumerate(notifications)]


def post_webhooks(notifications: Sequence[Notification], body: Mapping, timeout: float = DEFAULT_TIMEOUT,
                  log=None) -> list[dict]:
    """POST ``body`` to every entry (each independently) through the same hook as the success webhooks
    (:class:`~pgrepl.hooks.webhook.UrlHttpHook`); ``[{"url", "status_code" | "error"}]``."""
    import requests
    from airflow.sdk.exceptions import AirflowException

    from pgrepl.hooks.webhook import UrlHttpHook

    data = json.dumps(body, sort_keys=True, default=str)
    results = []
    for notification in notifications:
        base_url, endpoint = split_url(notification.url)
        try:
            response = UrlHttpHook(base_url, method="POST").run(
                endpoint, data=data, headers=request_headers(notification), extra_options={"timeout": timeout})
            results.append({"url": notification.url, "status_code": response.status_code})
            if log:
                log.info("notified %s: HTTP %s", notification.url, response.status_code)
        except (requests.RequestException, AirflowException) as exc:
            error = redact(str(exc))
            if notification.token:
                error = error.replace(notification.token, "***")
            results.append({"url": notification.url, "error": error})
            if log:
                log.error("webhook %s failed: %s", notification.url, error)
    return results


def _context_task(context: Mapping) -> tuple[str | None, int | None, int | None]:
    ti = context.get("task_instance") or context.get("ti")
    if ti is None:
        return None, None, None
    return getattr(ti, "task_id", None), getattr(ti, "map_index", None), getattr(ti, "try_number", None)


class WebhookNotifier(BaseNotifier):
    """POST a failure message naming the failed task to every ``NOTIFICATIONS`` entry.

    Use as the DAG's ``on_failure_callback`` (it runs in the dag processor, which needs ``NOTIFICATIONS``
    in its environment) or as a task's. A webhook that fails is logged and the others are still sent;
    the callback then raises so the failure shows in the processor's log.

    :param notifications: the entries; by default ``NOTIFICATIONS`` read when the callback runs
    :param ignore_tasks: task ids whose failure sends nothing (e.g. the success webhooks themselves)
    :param timeout: seconds per request
    """

    def __init__(self, *, notifications: Sequence[Notification] | None = None, ignore_tasks: Sequence[str] = (),
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.notifications = list(notifications) if notifications is not None else None
        self.ignore_tasks = tuple(ignore_tasks)
        self.timeout = timeout

    def render_template_fields(self, context: Mapping, jinja_env=None) -> None:
        # Nothing to render; and under ``airflow dags test`` the context's dag is a SerializedDAG
        # without ``get_template_env``, which made BaseNotifier fail before sending anything.
        if self.template_fields:
            super().render_template_fields(context, jinja_env)

    def _entries(self) -> list[Notification]:
        if self.notifications is not None:
            return self.notifications
        return parse_notifications(os.environ)

    def notify(self, context: Mapping) -> None:
        dag = context.get("dag")
        dag_run = context.get("dag_run")
        dag_id = getattr(dag, "dag_id", None) or getattr(dag_run, "dag_id", None) or context.get("dag_id")
        run_id = context.get("run_id") or getattr(dag_run, "run_id", None)
        task_id, map_index, try_number = _context_task(context)
        if task_id is not None and task_id in self.ignore_tasks:
            self.log.info("task %s failed; no failure webhook for it", task_id)
            return
        try:
            entries = self._entries()
        except SettingsError as exc:
            self.log.error("no failure webhook sent: %s", exc)
            return
        if not entries:
            return
        body = failure_summary(str(dag_id), run_id, task_id, map_index=map_index, try_number=try_number,
                               reason=context.get("reason"))
        results = post_webhooks(entries, body, self.timeout, self.log)
        failed = [r["url"] for r in results if "error" in r]
        if failed:
            raise RuntimeError(f"failure webhook not delivered to {', '.join(failed)}")
