"""DEADLINE parsing and the late message (the scheduler side: tests/test_scheduler_restart.py)."""

from __future__ import annotations

import pytest

from pgrepl.deadline import deadline_cron, late_message, parse_deadline
from pgrepl.settings import SettingsError


def test_deadline_default_and_values():
    assert parse_deadline({}) == (8, 0)
    assert parse_deadline({"DEADLINE": "7:05"}) == (7, 5)
    assert deadline_cron({}) == "0 8 * * *"
    assert deadline_cron({"DEADLINE": "09:30"}) == "30 9 * * *"
    assert deadline_cron({"DEADLINE": "25:00"}) == "0 8 * * *"  # parse time falls back; the task names it


@pytest.mark.parametrize("value", ["8h", "24:00", "08:60", "08:00:00", "noon"])
def test_bad_deadline_is_named(value):
    with pytest.raises(SettingsError, match=r"DEADLINE: .* HH:MM"):
        parse_deadline({"DEADLINE": value})


def test_late_message_names_the_run_and_its_unfinished_tasks():
    body = late_message("pg_replication", 1, "night_4", {"incremental": "running", "verify": None}, "08:00")
    assert body["status"] == "late" and body["run_id"] == "night_4"
    assert body["text"] == ("pg_replication: run night_4 is not finished at the deadline 08:00; running: "
                            "incremental (running); not started yet: verify")
    queued = late_message("pg_replication", 2, None, {}, "08:00")
    assert "2 run(s) queued or running" in queued["text"]
