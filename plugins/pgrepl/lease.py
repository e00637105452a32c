"""A run lease never outlives its run.

The lease row (``_pgrepl.lease``, see :mod:`pgrepl.swap`) is freed by the ``release`` task, and by the
DAG's success and failure callbacks (:func:`release_on_run_end`): a run restarted with "clear only failed tasks"
takes the lease again in its cleared tasks while its ``release`` task, already done, is not cleared; the callback
frees it when that run ends. Whatever still slips through (a scheduler that died before the callback, a lease taken
by hand) is caught by ``preflight`` (:func:`take_lease`): a lease whose run Airflow knows and reports neither
running nor queued is taken over, and the log says so. A holder Airflow does not know (another deployment pointed
at the same warehouse) is never taken over before the lease's time-to-live.
"""

from __future__ import annotations

import logging
from typing import Callable

from pgrepl import swap

log = logging.getLogger(__name__)

#: Airflow run states in which a lease holder is alive
LIVE_STATES = ("queued", "running")

#: ``run_id -> state`` of a run of this DAG in Airflow, ``None`` when Airflow does not know the run
RunState = Callable[[str], "str | None"]


def airflow_run_state(dag_id: str) -> RunState:
    """The state of a run of ``dag_id`` as Airflow's Task SDK reports it (from inside a task; no ORM)."""

    def state(run_id: str) -> str | None:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        if RuntimeTaskInstance.get_dr_count(dag_id=dag_id, run_ids=[run_id]) == 0:
            return None
        state = RuntimeTaskInstance.get_dagrun_state(dag_id=dag_id, run_id=run_id)
        return str(getattr(state, "value", state))  # DagRunState.SUCCESS -> "success"

    return state


def holder(db) -> tuple[str, object] | None:
    """``(run_id, acquired_at)`` of the lease, or ``None`` when free."""
    swap.ensure_state(db)
    row = db.execute("SELECT run_id, acquired_at FROM _pgrepl.lease").fetchone()
    db.rollback()
    return (row[0], row[1]) if row else None


def take_lease(db, run_id: str, run_state: RunState | None = None) -> str | None:
    """Take the lease for ``run_id``; take it over from a run that is over in Airflow.

    :param run_state: how to ask Airflow for a run's state (:func:`airflow_run_state`); without it, no takeover
    :returns: the run id taken over from, or ``None``
    :raises swap.WarehouseBusy: a live run, or one this Airflow does not know, holds the lease
    """
    try:
        swap.acquire_lease(db, run_id)
        return None
    except swap.WarehouseBusy:
        if run_state is None:
            raise
        current = holder(db)
        if current is None:  # freed meanwhile
            swap.acquire_lease(db, run_id)
            return None
        other, since = current
        state = run_state(other)
        if state is None or state in LIVE_STATES:
            raise
        # the holder's run is over (success or failed) but did not free the lease: take it over
        freed = db.execute("DELETE FROM _pgrepl.lease WHERE run_id = %s", (other,)).rowcount
        db.commit()
        log.warning(
            "took over the run lease from %s (held since %s): that run is %s in Airflow, so it no longer writes "
            "the warehouse", other, since, state,
        )
        swap.acquire_lease(db, run_id)
        return other if freed else None


def release_on_run_end(context) -> None:
    """DAG success/failure callback: free the lease of the run that just ended (best effort, logged)."""
    from pgrepl.settings import SettingsError, airflow_connection_getter, load_replication

    dag_run = context.get("dag_run")
    run_id = getattr(dag_run, "run_id", None) or context.get("run_id")
    if not run_id:
        return
    try:
        settings = load_replication(get_connection=airflow_connection_getter)
        with settings.target.connect(connect_timeout=15) as db:
            released = swap.release_lease(db, run_id)
    except SettingsError:
        return  # no valid settings: preflight failed before any lease was taken
    except Exception as exc:  # noqa: BLE001 - a callback must not fail; preflight takes over a stale lease anyway
        log.warning("could not free the run lease of %s at the end of the run: %s", run_id, exc)
        return
    if released:
        log.info("run %s ended: its run lease is freed", run_id)
