"""The timing report, on pg_restore logs captured from real runs (data/capture_restore_logs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgrepl import report

DATA = Path(__file__).resolve().parent / "data"
JOBS2 = DATA / "pg_restore_verbose_jobs2.log"
SEQUENTIAL = DATA / "pg_restore_verbose_sequential.log"

#: items of the sample schema: 7 tables, 4 indexes, 7 primary keys + 2 unique, 6 foreign keys, 6 sequences
SAMPLE_COUNTS = {"TABLE DATA": 7, "INDEX": 4, "CONSTRAINT": 9, "FK CONSTRAINT": 6, "SEQUENCE SET": 6}


def test_parallel_log_counts_every_item_by_kind():
    summary = report.parse_restore_log(JOBS2)
    assert {kind: entry["count"] for kind, entry in summary["kinds"].items()} == SAMPLE_COUNTS
    launched = sum("launching item" in line for line in JOBS2.read_text().splitlines())
    assert launched == sum(SAMPLE_COUNTS.values())
    assert summary["unfinished"] == []


def test_parallel_items_last_from_launch_to_finish_while_interleaved():
    summary = report.parse_restore_log(JOBS2)
    data = summary["kinds"]["TABLE DATA"]
    # answers: launched 19:10:48.237638, finished 19:10:48.798387 while knowledge-elements ran beside it
    assert data["slowest"][0] == {"item": "TABLE DATA answers", "seconds": pytest.approx(0.560749)}
    assert data["slowest"][1] == {"item": "TABLE DATA knowledge-elements", "seconds": pytest.approx(0.424471)}
    assert len(data["slowest"]) == 3
    index = summary["kinds"]["INDEX"]["slowest"]
    assert [s["item"] for s in index[:2]] == ["INDEX answers_assessmentid_index", "INDEX knowledge_elements_userid_index"]
    assert index[0]["seconds"] == pytest.approx(0.897949 - 0.798475)
    assert summary["kinds"]["FK CONSTRAINT"]["slowest"][0] == {
        "item": "FK CONSTRAINT knowledge-elements knowledge-elements_answerId_fkey",
        "seconds": pytest.approx(49.098771 - 49.018280),
    }
    # totals are summed over items (both jobs), so above the slowest item and sorted slowest first
    for entry in summary["kinds"].values():
        seconds = [s["seconds"] for s in entry["slowest"]]
        assert seconds == sorted(seconds, reverse=True)
        assert entry["seconds"] >= sum(seconds) - 1e-6


def test_pre_data_items_of_a_parallel_restore_are_not_reported_kinds():
    items = report.parse_lines(JOBS2.read_text().splitlines())
    tables = [i for i in items if i.description == "TABLE users"]
    assert len(tables) == 1 and tables[0].kind is None and tables[0].end is not None


def test_sequential_log_infers_item_ends_from_the_next_item():
    summary = report.parse_restore_log(SEQUENTIAL)
    assert {kind: entry["count"] for kind, entry in summary["kinds"].items()} == SAMPLE_COUNTS
    slowest = summary["kinds"]["TABLE DATA"]["slowest"][0]
    # "processing data for table public.answers" at .271385, next item starts at .561893
    assert slowest == {"item": "TABLE DATA public.answers", "seconds": pytest.approx(0.561893 - 0.271385)}
    # "dropping ..." lines of --clean are not items
    assert not [i for i in report.parse_lines(SEQUENTIAL.read_text().splitlines()) if "dropping" in i.description]


def test_glued_prefixes_unfinished_items_and_untimestamped_lines():
    lines = [
        "2024-01-01T00:00:00.000000+00:00 pg_restore: entering main parallel loop",
        "2024-01-01T00:00:00.000000+00:00 pg_restore: launching item 10 INDEX a_idx",
        "2024-01-01T00:00:00.500000+00:00 pg_restore:pg_restore: launching item 11 TABLE DATA big pg_restore:",
        "not a timestamp pg_restore: finished item 10 INDEX a_idx",
        "2024-01-01T00:00:02.000000+00:00 pg_restore: finished item 10 INDEX a_idx",
        "2024-01-01T00:00:02.000000+00:00 pg_restore: finished item 99 INDEX never_launched",
        "2024-01-01T00:00:03.000000+00:00 pg_restore: error: could not execute query: ERROR:  boom",
    ]
    summary = report.summarize(report.parse_lines(lines))
    assert summary["kinds"]["INDEX"] == {"count": 1, "seconds": 2.0, "slowest": [{"item": "INDEX a_idx", "seconds": 2.0}]}
    assert summary["kinds"]["TABLE DATA"]["count"] == 0
    assert summary["unfinished"] == ["TABLE DATA big"]


def test_kind_of_distinguishes_look_alike_kinds():
    assert report.kind_of("FK CONSTRAINT t t_fkey") == "FK CONSTRAINT"
    assert report.kind_of("CONSTRAINT t t_pkey") == "CONSTRAINT"
    assert report.kind_of("CHECK CONSTRAINT t c") is None
    assert report.kind_of("SEQUENCE SET s") == "SEQUENCE SET"
    assert report.kind_of("SEQUENCE s") is None
    assert report.kind_of("INDEX ATTACH p_idx") is None
    assert report.kind_of("TABLE t") is None


@pytest.mark.parametrize("seconds, text", [(0.0421, "0.042s"), (75.4, "1min 15s"), (3725.2, "1h 2min 5s"), (None, "-")])
def test_format_duration(seconds, text):
    assert report.format_duration(seconds) == text


def test_build_and_format_report_like_the_seed(tmp_path):
    dump = {"dump_dir": "/x", "seconds": 12.5, "source_counts": {"public.users": 5000}, "log_file": "/x/pg_dump.log"}
    restore = {"seconds": 3725.2, "log_file": str(JOBS2), "items": 32}
    result = report.build_report(dump, restore, {"seconds": 1.25, "files": []}, 4000)
    json.dumps(result)  # goes to XCom
    assert result["durations"] == {"dump": 12.5, "restore": 3725.2, "enrichment": 1.25, "total": 4000.0}
    assert result["rows_restored"] == {"public.users": 5000}
    text = report.format_report(result)
    assert text.splitlines()[:4] == ["Dump duration: 12.500s", "Restore duration: 1h 2min 5s",
                                     "Enrichment duration: 1.250s", "Total duration: 1h 6min 40s"]
    assert "TABLE DATA total duration : " in text and "\tTABLE DATA answers : 0.561s" in text
    assert "FK CONSTRAINT total duration : " in text and "(6 items)" in text


def test_build_report_survives_a_missing_log(tmp_path):
    result = report.build_report({"seconds": 1}, {"seconds": 2, "log_file": str(tmp_path / "nope.log")}, None, None)
    assert result["restore_items"] is None
    assert "nope.log" in result["warnings"][0]
    assert result["durations"]["enrichment"] is None
    assert "warning: restore log" in report.format_report(result)


def test_cli_text_and_json(capsys, tmp_path):
    assert report.main([str(JOBS2)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Restore duration: ") and "INDEX total duration : " in out
    assert report.main([str(JOBS2), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kinds"]["CONSTRAINT"]["count"] == 9 and data["wall_seconds"] > 0
    empty = tmp_path / "empty.log"
    empty.write_text("")
    assert report.main([str(empty)]) == 1
    assert "no pg_restore items" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing.log")]) == 1


def test_report_run_logs_the_report_and_returns_it(monkeypatch):
    from datetime import datetime, timedelta, timezone

    from pgrepl.operators import end_of_run

    logged: list[str] = []
    monkeypatch.setattr(end_of_run, "log", type("L", (), {"info": staticmethod(lambda fmt, *a: logged.append(fmt % a))}))
    result = end_of_run.report_run({"seconds": 2}, {"seconds": 3, "log_file": str(JOBS2)}, {"seconds": 1}, total_seconds=90)
    assert result["durations"]["total"] == 90
    assert result["restore_items"]["kinds"]["INDEX"]["count"] == 4
    assert "Total duration: 1min 30s" in logged and "\tTABLE DATA answers : 0.561s" in logged
    started = datetime.now(timezone.utc) - timedelta(hours=2)
    assert end_of_run.report_run(None, None, None, started_at=started)["durations"]["total"] >= 7200
