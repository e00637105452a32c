"""Settings as a task sees them: a bad value fails the task without retry, naming it; Params apply."""

from __future__ import annotations

import dataclasses

from airflow.sdk.exceptions import AirflowFailException

from pgrepl.settings import ReplicationSettings, SettingsError, airflow_connection_getter, load_replication


def replication_settings(context=None) -> ReplicationSettings:
    """The replication settings, with the run's Params applied (``restore_fk_constraints``, ``jobs``, when set);
    a bad setting raises :class:`AirflowFailException` (no retry) whose message names it."""
    try:
        settings = load_replication(get_connection=airflow_connection_getter)
    except SettingsError as exc:
        raise AirflowFailException(str(exc)) from None
    params = (context or {}).get("params") or {}
    overrides = {}
    if params.get("restore_fk_constraints") is not None:
        overrides["restore_fk_constraints"] = bool(params["restore_fk_constraints"])
    if params.get("jobs") is not None:
        overrides["jobs"] = int(params["jobs"])
    return dataclasses.replace(settings, **overrides) if overrides else settings
