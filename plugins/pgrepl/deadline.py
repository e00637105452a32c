"""``DEADLINE``: a night still running at that time (default 08:00, Europe/Paris) is reported to every
``NOTIFICATIONS`` entry, with what is still running.

Why not Airflow's own ``DeadlineAlert`` (``airflow.sdk.definitions.deadline``, 3.1+)? In 3.3 its references are a run's
logical date or queue time plus a fixed interval (or a fixed datetime), not a time of day: a manual run, or a
changed ``SCHEDULE``, would move the deadline. And its callbacks (``SyncCallback`` on the executor,
``AsyncCallback`` in the triggerer) only reach connections and variables: they cannot say which tasks are still
running. So the deadline is a tiny scheduled DAG, ``pg_replication_deadline`` (cron ``M H * * *`` from
``DEADLINE``), with one short task (no sensor, nothing waits): it asks Airflow, through the Task SDK, whether
``pg_replication`` has a run queued or running; if so it names the run holding the warehouse's lease and its
unfinished tasks, and posts that to every webhook.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Mapping

from pgrepl.settings import SettingsError

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = "08:00"
WATCHED_DAG = "pg_replication"
#: task states that mean "not finished yet"
UNFINISHED = ("queued", "scheduled", "running", "up_for_retry", "up_for_reschedule", "deferred", "restarting", None)


def parse_deadline(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``DEADLINE`` (``HH:MM``, 24-hour, Europe/Paris) as ``(hour, minute)``."""
    env = os.environ if env is None else env
    value = (env.get("DEADLINE") or "").strip() or DEFAULT_DEADLINE
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value)
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise SettingsError(f"DEADLINE: {value!r} is not a time of day HH:MM (24-hour, Europe/Paris), e.g. 08:00")
    return int(match.group(1)), int(match.group(2))


def deadline_cron(env: Mapping[str, str] | None = None) -> str:
    """The watchdog's cron at parse time; a bad ``DEADLINE`` falls back to the default (the task then fails on it)."""
    try:
        hour, minute = parse_deadline(env)
    except SettingsError:
        hour, minute = parse_deadline({})
    return f"{minute} {hour} * * *"


def late_message(dag_id: str, live_runs: int, holder: str | None, unfinished: Mapping[str, str | None],
                 deadline: str) -> dict:
    """The webhook body."""
    running = ", ".join(f"{task} ({state})" for task, state in sorted(unfinished.items()) if state)
    waiting = ", ".join(task for task, state in sorted(unfinished.items()) if not state)
    if holder:
        text = (f"{dag_id}: run {holder} is not finished at the deadline {deadline}; running: {running or 'nothing'}"
                + (f"; not started yet: {waiting}" if waiting else ""))
    else:
        text = f"{dag_id}: {live_runs} run(s) queued or running at the deadline {deadline}, none has started writing"
    return {
        "dag_id": dag_id,
        "status": "late",
        "deadline": deadline,
        "run_id": holder,
        "live_runs": live_runs,
        "unfinished_tasks": dict(sorted(unfinished.items())),
        "text": text,
    }


def check_deadline(dag_id: str = WATCHED_DAG) -> dict:
    """The watchdog task: report a ``dag_id`` run still queued or running now to every ``NOTIFICATIONS`` entry."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    from pgrepl import lease
    from pgrepl.errors import airflow_errors
    from pgrepl.notify import post_webhooks
    from pgrepl.settings import airflow_connection_getter, load_replication, parse_notifications

    with airflow_errors():  # a bad DEADLINE or NOTIFICATIONS fails at once, naming it
        hour, minute = parse_deadline()
        notifications = parse_notifications(os.environ)
    deadline = f"{hour:02d}:{minute:02d}"
    live = RuntimeTaskInstance.get_dr_count(dag_id=dag_id, states=list(lease.LIVE_STATES))
    if not live:
        log.info("%s: no run queued or running at the deadline %s", dag_id, deadline)
        return {"late": False}
    holder = None
    try:
        settings = load_replication(get_connection=airflow_connection_getter)
        with settings.target.connect(connect_timeout=15) as db:
            current = lease.holder(db)
        holder = current[0] if current else None
    except Exception as exc:  # noqa: BLE001 - the alert matters more than naming the run
        log.warning("cannot read the run lease from the warehouse: %s", exc)
    unfinished: dict[str, str | None] = {}
    if holder:
        states = RuntimeTaskInstance.get_task_states(dag_id=dag_id, run_ids=[holder]).get(holder, {})
        unfinished = {task: (str(getattr(state, "value", state)) if state else None)
                      for task, state in states.items() if state in UNFINISHED}
    body = late_message(dag_id, live, holder, unfinished, deadline)
    log.warning("%s", body["text"])
    results = post_webhooks(notifications, body, log=log) if notifications else []
    return {"late": True, "text": body["text"], "notified": results}
