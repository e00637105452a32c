"""The run lease against Airflow's view of the holder's run (real PostgreSQL; Airflow's answer given)."""

from __future__ import annotations

import logging

import pytest

from pgrepl import lease
from pgrepl import swap as warehouse


def holder(target_db):
    with target_db.connect() as db:
        return lease.holder(db)


def test_takeover_only_from_a_run_airflow_reports_over(target_db, caplog):
    airflow = {"night_1": "success", "night_2": "running", "night_3": "queued", "night_4": "failed"}
    state = airflow.get
    with target_db.connect() as db:
        assert lease.take_lease(db, "night_1", state) is None
        # a live holder (running or queued) keeps it
        for live in ("night_2", "night_3"):
            with target_db.connect() as other:
                warehouse.release_lease(other, "night_1")
                warehouse.acquire_lease(other, live)
            with pytest.raises(warehouse.WarehouseBusy, match=live):
                lease.take_lease(db, "night_5", state)
            with target_db.connect() as other:
                warehouse.release_lease(other, live)
        # a holder Airflow does not know (another deployment on this warehouse) keeps it too
        warehouse.acquire_lease(db, "elsewhere__x")
        with pytest.raises(warehouse.WarehouseBusy, match="elsewhere__x"):
            lease.take_lease(db, "night_5", state)
        warehouse.release_lease(db, "elsewhere__x")
        # a holder whose run is over is taken over, and the log says so
        warehouse.acquire_lease(db, "night_4")
        with caplog.at_level(logging.WARNING, logger="pgrepl.lease"):
            assert lease.take_lease(db, "night_5", state) == "night_4"
        assert "took over the run lease from night_4" in caplog.text and "failed in Airflow" in caplog.text
    assert holder(target_db)[0] == "night_5"
    # without a way to ask Airflow (tests, benchmarks): no takeover
    with target_db.connect() as db, pytest.raises(warehouse.WarehouseBusy):
        lease.take_lease(db, "night_6")


def test_release_on_run_end_frees_that_runs_lease(replication_env, target_db):
    class Run:
        run_id = "night_9"

    with target_db.connect() as db:
        warehouse.acquire_lease(db, "night_9")
    lease.release_on_run_end({"dag_run": Run()})
    assert holder(target_db) is None
    lease.release_on_run_end({"dag_run": Run()})  # nothing held: nothing to do, no error


def test_the_compat_view_going_with_yesterdays_tables_is_not_news():
    from pgrepl.swap import _recreated_by_compat

    assert _recreated_by_compat('rule _RETURN on view "schooling-registrations"')
    assert _recreated_by_compat('rule _RETURN on view public."schooling-registrations"')
    assert not _recreated_by_compat('rule _RETURN on view "active-users"')
    assert not _recreated_by_compat('constraint kept_fk on table "schooling-registrations-archive"')
