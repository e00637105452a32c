"""Settings as a task sees them: a bad value fails the task without retry, naming it; Params apply."""

from __future__ import annotations

import dataclasses

from pgrepl.errors import airflow_errors
from pgrepl.settings import (
    SOURCE_CONN_ID,
    TARGET_CONN_ID,
    ReplicationSettings,
    SettingsError,
    airflow_connection_getter,
    load_replication,
)

#: value of the ``restore_fk_constraints`` Param that keeps ``RESTORE_FK_CONSTRAINTS``
FK_AS_CONFIGURED = "as configured"
#: what the Param's values mean (booleans from ``--conf`` of older recipes are accepted too)
FK_PARAM_VALUES = {FK_AS_CONFIGURED: None, None: None, "on": True, "off": False, True: True, False: False}


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
    fk = params.get("restore_fk_constraints")
    if fk not in FK_PARAM_VALUES:
        with airflow_errors():
            raise SettingsError(f"Param restore_fk_constraints: {fk!r} is not one of {FK_AS_CONFIGURED!r}, 'on', 'off'")
    if FK_PARAM_VALUES[fk] is not None:
        overrides["restore_fk_constraints"] = FK_PARAM_VALUES[fk]
    if params.get("jobs") is not None:
        overrides["jobs"] = int(params["jobs"])
    return dataclasses.replace(settings, **overrides) if overrides else settings
