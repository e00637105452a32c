"""Pure helpers of bench/seed_bench.py: the seed's phases from its log, Airflow's span, the inflate script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from seed_parse import airflow_span, inflate_for_scale, rotation, seed_phases  # noqa: E402


def _bunyan(msg: str, time: str) -> str:
    return json.dumps({"name": "pix-db-replication", "level": 30, "msg": msg, "time": time, "v": 0})


def test_seed_phases_from_bunyan_lines_skip_other_output():
    lines = [
        _bunyan("Start create Backup", "2026-11-30T14:52:16.651Z"),
        "pg_dump: dumping contents of table \"public.answers\"",
        _bunyan("End create Backup", "2026-11-30T14:52:17.478Z"),
        _bunyan("Start restore", "2026-11-30T14:52:17.500Z"),
        "{not json",
        _bunyan("Restore done", "2026-11-30T14:52:19.000Z"),
        _bunyan("enrichment.add - Started", "2026-11-30T14:52:19.051Z"),
    ]
    phases = seed_phases(lines)
    assert phases["dump_seconds"] == pytest.approx(0.827)
    assert phases["restore_seconds"] == pytest.approx(1.5)
    assert "enrichment_seconds" not in phases  # no end message: no figure rather than a wrong one


def test_airflow_span_is_dump_start_to_enrichment_end():
    tasks = [
        {"task_id": "preflight", "map_index": -1, "state": "success",
         "start_date": "2026-11-30 14:00:00.000000+00:00", "end_date": "2026-11-30 14:00:05.000000+00:00"},
        {"task_id": "dump", "map_index": -1, "state": "success",
         "start_date": "2026-11-30 14:00:06.500000+00:00", "end_date": "2026-11-30 14:00:10.000000+00:00"},
        {"task_id": "enrichment", "map_index": -1, "state": "success",
         "start_date": "2026-11-30 14:00:30.000000+00:00", "end_date": "2026-11-30 14:00:36.000000+00:00"},
        {"task_id": "incremental", "map_index": 0, "state": "success",
         "start_date": "2026-11-30 14:00:37+00:00", "end_date": "2026-11-30 14:00:38+00:00"},
    ]
    span = airflow_span(tasks)
    assert span["total_seconds"] == pytest.approx(29.5)
    assert span["dump_seconds"] == pytest.approx(3.5)
    assert "incremental_seconds" not in span  # mapped tasks are not phases of the full copy


def test_airflow_span_names_the_task_that_did_not_succeed():
    tasks = [{"task_id": "dump", "map_index": -1, "state": "success", "start_date": "2026-11-30T14:00:00+00:00",
              "end_date": "2026-11-30T14:00:01+00:00"},
             {"task_id": "enrichment", "map_index": -1, "state": "upstream_failed", "start_date": None,
              "end_date": None}]
    with pytest.raises(ValueError, match="'enrichment'.*upstream_failed"):
        airflow_span(tasks)


def test_rotation_puts_each_method_first_once():
    methods = ["seed", "pgcopydb", "project"]
    orders = [rotation(methods, rep) for rep in range(3)]
    assert [o[0] for o in orders] == methods
    assert all(sorted(o) == sorted(methods) for o in orders)


SCRIPT = "\\set users 100000 * :scale\n\\set answers 2000000 * :scale\nSELECT g % :users FROM generate_series(1, :answers) g;\n"


def test_inflate_whole_scale_is_unchanged():
    assert inflate_for_scale(SCRIPT, 3) == SCRIPT
    assert inflate_for_scale(SCRIPT, 1.0) == SCRIPT


def test_inflate_fractional_scale_gets_integer_counts():
    out = inflate_for_scale(SCRIPT, 0.1)
    assert out.splitlines()[0] == "\\set users '((' 100000 * :scale ')::int)'"
    assert out.splitlines()[1] == "\\set answers '((' 2000000 * :scale ')::int)'"
    assert out.splitlines()[2] == SCRIPT.splitlines()[2]
