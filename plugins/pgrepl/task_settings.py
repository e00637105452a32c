"""Settings as a task sees them: a bad value fails the task without retry, naming it; Params apply."""

from __future__ import annotations

import dataclasses

from pgrepl.errors import airflow_errors
from pgrepl.settings import SOURCE_CONN_ID, TARGET_CONN_ID, ReplicationSettings, airflow_connection_getter, load_replication


def replication_settings(context=None, *, source_conn_id: str = SOURCE_CONN_ID,
                         target_conn_id: str = TARGET_CONN_ID) -> ReplicationSettings:
    """The replication settings, with the run's Params applied (``restore_fk_constraints``, ``jobs``, when set);
    a bad setting raises :class:`AirflowFailException` (no retry) whose message names it.

    :param source_conn_id: connection of the source (its URL variables when it is not defined)
    :param target_conn_id: connection of the warehouse (its URL variables when it is not defined)
    """
    with airflow_errors():
        settings = load_replication(get_connection=airflow_connection_getter, source_conn_id=source_conn_id,
                                    target_conn_id=target_conn_id)
    params = (context or {}).get("params") or {}
    overrides = {}
    if params.get("restore_fk_constraints") is not None:
        overrides["restore_fk_constraints"] = bool(params["restore_fk_constraints"])
    if params.get("jobs") is not None:
        overrides["jobs"] = int(params["jobs"])
    return dataclasses.replace(settings, **overrides) if overrides else settings
