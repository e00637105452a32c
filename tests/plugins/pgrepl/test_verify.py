"""Verification of the warehouse: pure comparison, then a real restored sample tampered with."""

from __future__ import annotations

import subprocess

import pytest

from pgrepl import verify
from pgrepl.pgtools import client_env, tool, write_passfile


def test_expected_from_runs_merges_full_incremental_and_learning_content():
    dump = {"source_counts": {"public.users": 10, "answers-archive": 3}}
    incremental = [
        {"table": "answers", "mode": "append", "rows_before": 5, "copied": 2, "rows_after": 7, "source_count": 7,
         "source_max_id": 70},
        None,  # a skipped mapped instance
        {"table": "stats.events", "mode": "append", "rows_before": 1, "copied": 1, "rows_after": 2, "source_count": None,
         "source_max_id": 9},  # the copy did not count the source: rows_after
        {"table": "purged", "mode": "append", "rows_before": 5, "copied": 0, "rows_after": 5, "source_count": 4,
         "source_max_id": 5},  # the source lost a row the warehouse keeps: the source's count is expected
    ]
    counts, max_ids = verify.expected_from_runs(dump, incremental, {"tables": {"areas": 4}, "seconds": 1})
    assert counts == {"public.users": 10, "public.answers-archive": 3, "public.answers": 7, "stats.events": 2,
                      "public.purged": 4, "public.areas": 4}
    assert max_ids == {"public.answers": 70, "stats.events": 9, "public.purged": 5}


def test_compare_lists_every_mismatch_with_both_numbers():
    mismatches = verify.compare({"public.a": 3, "public.b": 5, "public.c": 1}, {"public.a": 3, "public.b": 4, "public.c": None},
                                {"public.b": 9}, {"public.b": 8})
    assert [str(m) for m in mismatches] == [
        "table public.b: 5 rows expected (source), 4 in the warehouse",
        "table public.c is missing from the warehouse (expected 1 rows)",
        "table public.b: 9 max(id) expected (source), 8 in the warehouse",
    ]
    assert verify.compare({"public.a": 3}, {"public.a": 3}) == []


@pytest.fixture
def restored(source_db, target_db, tmp_path):
    """The sample source restored into the warehouse with the real pg_dump / pg_restore."""
    env = client_env(write_passfile(tmp_path / "pgpass", [source_db, target_db]))
    archive = tmp_path / "sample.dump"
    subprocess.run([tool("pg_dump"), "-Fc", "--no-owner", "--no-privileges", "-f", str(archive), source_db.safe_url()],
                   env=env, check=True, capture_output=True)
    subprocess.run([tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "-d", target_db.safe_url(),
                    str(archive)], env=env, check=True, capture_output=True)
    with source_db.connect() as db:
        db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        tables = [f"public.{r[0]}" for r in db.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'").fetchall()]
        counts = verify.count_rows(db, tables)
        ids = verify.max_ids(db, ["public.answers"])
    return source_db, target_db, counts, ids


def test_faithful_copy_passes(restored):
    _, target, counts, ids = restored
    assert counts["public.answers"] > 0 and "public.knowledge-elements" in counts
    result = verify.verify_counts(target, counts, ids)
    assert result["tables"] == len(counts)
    assert result["rows"] == sum(counts.values())
    assert result["counts"]["public.answers"] == counts["public.answers"]


def test_tampered_warehouse_fails_naming_tables_and_counts(restored):
    _, target, counts, ids = restored
    with target.connect() as db:
        removed = db.execute('DELETE FROM "knowledge-elements" WHERE "answerId" = (SELECT max(id) FROM answers) '
                             'OR id IN (SELECT id FROM "knowledge-elements" ORDER BY id LIMIT 3)').rowcount
        db.execute("DELETE FROM answers WHERE id = (SELECT max(id) FROM answers)")
        db.execute('DROP TABLE "organization-learners"')
    with pytest.raises(verify.VerificationError) as failure:
        verify.verify_counts(target, counts, ids)
    message = str(failure.value)
    ke, answers, learners = counts["public.knowledge-elements"], counts["public.answers"], counts["public.organization-learners"]
    assert f"table public.knowledge-elements: {ke} rows expected (source), {ke - removed} in the warehouse" in message
    assert f"table public.answers: {answers} rows expected (source), {answers - 1} in the warehouse" in message
    assert f"table public.answers: {ids['public.answers']} max(id) expected (source), {ids['public.answers'] - 1} " in message
    assert f"table public.organization-learners is missing from the warehouse (expected {learners} rows)" in message
    assert len(failure.value.mismatches) == 4
    assert "public.users" not in message


def test_verify_run_raises_airflow_fail_exception(restored):
    from airflow.sdk.exceptions import AirflowFailException

    from pgrepl.operators.end_of_run import verify_run

    _, target, counts, ids = restored
    dump = {"source_counts": counts}
    incremental = [{"table": "answers", "rows_after": counts["public.answers"], "source_max_id": ids["public.answers"]}]
    assert verify_run(dump, incremental, None, target=target) == {"tables": len(counts), "rows": sum(counts.values())}
    with target.connect() as db:
        db.execute("INSERT INTO users (\"firstName\", \"lastName\") VALUES ('x', 'y')")
    with pytest.raises(AirflowFailException, match=rf"public.users: {counts['public.users']} rows expected .*, {counts['public.users'] + 1} in"):
        verify_run(dump, incremental, None, target=target)


def test_counts_are_taken_in_bounded_transactions(target_db, monkeypatch):
    """Each count locks its table until its transaction ends: verify counts COUNT_BATCH tables per transaction, so
    the locks it holds at once stay bounded whatever the number of tables."""
    from pgrepl import verify

    names = [f"t{i}" for i in range(7)]
    with target_db.connect() as db:
        for name in names:
            db.execute(f"CREATE TABLE {name} AS SELECT g FROM generate_series(1, 3) g")
        db.commit()
    held = []
    real = verify.count_rows

    def spying(db, tables):
        counted = real(db, tables)
        held.append(db.execute("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' "
                               "AND relation IN (SELECT oid FROM pg_class WHERE relname LIKE 't_')").fetchone()[0])
        return counted

    monkeypatch.setattr(verify, "COUNT_BATCH", 3)
    monkeypatch.setattr(verify, "count_rows", spying)
    result = verify.verify_counts(target_db, {f"public.{n}": 3 for n in names})
    assert result["tables"] == 7 and result["rows"] == 21
    assert held == [3, 3, 1]  # never more than one batch's tables locked at once
