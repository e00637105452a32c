"""The switch and the readers that hold a table across it (issue 14), on real PostgreSQL, calling the full copy
directly (pgrepl.fullcopy) with settings read from the environment as the DAG reads them.

A night moves the kept tables (``BACKUP_MODE``) from the live schema into tonight's under ``SET LOCAL lock_timeout
= SWITCH_LOCK_TIMEOUT``, retried ``SWITCH_RETRIES`` times; renaming the schemas takes no lock on their tables. So:

* a reader holding the kept table (``BEGIN; SELECT ... FROM answers`` and its transaction left open) makes the
  switch wait, then — ``SWITCH_CANCEL_READERS`` off — fail with a message naming the reader's session; the live
  warehouse is yesterday's, complete, nothing of tonight's is left; once the reader ends, the next night succeeds;
* the same with ``SWITCH_CANCEL_READERS=true``: the reader is cancelled (busy in a statement, or idle in its
  transaction) and tonight's warehouse is live. Readers are analysts, other roles than the warehouse's: PostgreSQL
  shows another role's session (state, since when, query) only to a role with ``pg_read_all_stats``, and lets it
  cancel that session only with ``pg_signal_backend``; without them the message still names pid, role and
  application, and a cancel that is not allowed fails the night saying what to grant;
* a reader holding a replaced table does not hold the switch: the night succeeds, the reader goes on (a READ
  COMMITTED reader's next statement reads tonight's table), and yesterday's table is dropped once it has ended;
* a REPEATABLE READ reader spanning the switch reads tonight's replaced tables as empty (their rows are newer than
  its snapshot) and the kept table as of its snapshot, without an error: what the README says.
"""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest
from psycopg import sql

from conftest import TEST_PASSWORD, table_fingerprint
from night_readers import (LongReader, Reader, analyst_role, counts, describe, leftover_schemas, reading_problems,
                           wait_until)
from pgrepl import fullcopy, incremental
from pgrepl.settings import load_replication

REPLACED, KEPT = "users", "answers"
#: a table only the warehouse has (an analysts' table): the switch moves it, like the kept table
OWN_TABLE = "analyst_notes"
#: the switch's lock timeout here (seconds) and its retries: a blocked switch gives up after a few seconds
LOCK_TIMEOUT, RETRIES = 1, 1
#: a night that does not end in this time is stuck (the sample's night takes a few seconds)
NIGHT_TIMEOUT = 120


def url(conn) -> str:
    return f"postgresql://{conn.user}:{TEST_PASSWORD}@{conn.host}:{conn.port}/{conn.dbname}"


def settings_env(source, target, tmp_path, cancel: bool) -> dict[str, str]:
    return {
        "SOURCE_DATABASE_URL": url(source),
        "TARGET_DATABASE_URL": url(target),
        "REPLICATION_WORK_DIR": str(tmp_path / "work"),
        "PG_RESTORE_JOBS": "2",
        "BACKUP_MODE": f'{{"{KEPT}": "incremental"}}',
        "SWITCH_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
        "SWITCH_RETRIES": str(RETRIES),
        "SWITCH_CANCEL_READERS": "true" if cancel else "false",
    }


def night(env: dict[str, str], key: str) -> dict:
    """One night as the DAG runs it: dump, restore (staging, switch, cleanup), compat, enrichment, users' views,
    then the incremental copies and the refresh of views over kept tables."""
    settings = load_replication(env)
    result = fullcopy.run_full_copy(settings, key)
    for table in incremental.order_incremental_tables(settings.source, settings.incremental_tables):
        incremental.copy_incremental(settings.source, settings.target, table,
                                     incremental_tables=settings.incremental_tables)
    fullcopy.refresh_after_incremental(settings, result["refresh_after_incremental"])
    return result


def night_in_thread(env: dict[str, str], key: str) -> tuple[threading.Thread, dict]:
    """Run :func:`night` in a thread: the test watches the warehouse meanwhile. ``outcome`` gets ``result`` or
    ``error``, and ``seconds``."""
    outcome: dict = {}

    def run() -> None:
        started = time.monotonic()
        try:
            outcome["result"] = night(env, key)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome["error"] = exc
        finally:
            outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, name=f"night-{key}", daemon=True)
    thread.start()
    return thread, outcome


def finish(thread: threading.Thread, outcome: dict, reader: LongReader | None = None, cluster=None) -> dict:
    """Wait for the night; a night stuck behind ``reader`` fails the test (after ending the reader, so that the
    night can end too)."""
    thread.join(NIGHT_TIMEOUT)
    if thread.is_alive():
        if reader is not None:
            reader.close(cluster)
        thread.join(60)
        pytest.fail(f"the night did not end within {NIGHT_TIMEOUT} s while a reader held a table", pytrace=False)
    return outcome


def waiting_for(pg_cluster, dbname: str, table_oid: int) -> list[tuple]:
    """Sessions of ``dbname`` waiting for a lock on the relation ``table_oid``: (pid, application_name, mode)."""
    return pg_cluster.execute(
        "SELECT l.pid, a.application_name, l.mode FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE NOT l.granted AND l.locktype = 'relation' AND l.relation = %s AND a.datname = %s",
        params=(table_oid, dbname))


class Watcher(threading.Thread):
    """Records every session seen waiting for a lock on one table, polling every 20 ms until stopped."""

    def __init__(self, pg_cluster, dbname: str, table_oid: int) -> None:
        super().__init__(name="lock-watcher", daemon=True)
        self.args_ = (pg_cluster, dbname, table_oid)
        self.seen: set[tuple] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.seen.update(waiting_for(*self.args_))
            self.halt.wait(0.02)

    def stop(self) -> set[tuple]:
        self.halt.set()
        self.join(10)
        return self.seen


def oid_of(conn, table: str) -> int:
    with conn.connect() as db:
        return db.execute("SELECT %s::regclass::oid::int8", (f'public."{table}"',)).fetchone()[0]


def relation_exists(conn, oid: int) -> bool:
    with conn.connect() as db:
        return db.execute("SELECT 1 FROM pg_class WHERE oid = %s", (oid,)).fetchone() is not None


def views_answer(conn) -> dict[str, int]:
    with conn.connect() as db:
        names = [r[0] for r in db.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'").fetchall()]
        return {name: db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", name))).fetchone()[0]
                for name in names}


@pytest.fixture
def yesterday(source_db, target_db, pg_cluster, tmp_path):
    """Night 1 done; the source then gains users and answers. Returns (env without cancel, env with cancel,
    the analyst's connection, yesterday's fingerprint)."""
    quiet = settings_env(source_db, target_db, tmp_path, cancel=False)
    night(quiet, "night1")
    analyst = analyst_role(pg_cluster, target_db, f"analyst_{target_db.dbname}")
    before = table_fingerprint(target_db)
    with source_db.connect() as db:
        db.execute("INSERT INTO users (\"firstName\", \"lastName\", email) "
                   "SELECT 'Night', 'Two', 'night2-' || g || '@example.net' FROM generate_series(1, 25) g")
        db.execute("INSERT INTO answers (value, result, \"challengeId\") "
                   "SELECT 'v', 'ok', 'recNight' || g FROM generate_series(1, 40) g")
        db.commit()
    return quiet, settings_env(source_db, target_db, tmp_path, cancel=True), analyst, before


def grant_session_rights(pg_cluster, target, *rights: str) -> None:
    """Give the warehouse role predefined roles: ``pg_read_all_stats`` (it then sees other roles' sessions: state,
    since when, query) and ``pg_signal_backend`` (it may then cancel or terminate them)."""
    for right in rights:
        pg_cluster.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(right), sql.Identifier(target.user))
                           .as_string())


def blocked_night(env, target_db, pg_cluster, reader: LongReader, key: str) -> tuple[BaseException, set]:
    """Run a night while ``reader`` holds the kept table; it must fail. (its error, the sessions seen waiting for
    the kept table's lock)."""
    watcher = Watcher(pg_cluster, target_db.dbname, oid_of(target_db, KEPT))
    watcher.start()
    try:
        thread, outcome = night_in_thread(env, key)
        finish(thread, outcome, reader, pg_cluster)
    finally:
        waited = watcher.stop()
    print(f"\nswitch blocked by a reader of {KEPT}: the night failed after {outcome['seconds']:.1f} s "
          f"(lock timeout {LOCK_TIMEOUT} s, {RETRIES} retry); its message: {outcome.get('error')}")
    assert "error" in outcome, "the night succeeded although a reader held the kept table"
    return outcome["error"], waited


def assert_yesterday_untouched(target_db, reader: LongReader, before: dict, views_before: dict) -> None:
    """The reader never noticed (its transaction goes on, on yesterday's rows); the live warehouse is yesterday's,
    complete, views answering; nothing of tonight's is left, nor the lease."""
    assert reader.count(KEPT) == before[KEPT][0]
    assert reader.count(REPLACED) == before[REPLACED][0]
    assert table_fingerprint(target_db) == before
    assert views_answer(target_db) == views_before
    assert leftover_schemas(target_db) == []
    with target_db.connect() as db:
        assert db.execute("SELECT count(*) FROM _pgrepl.lease").fetchone()[0] == 0


@pytest.mark.parametrize("rights", [pytest.param((), id="plain warehouse role"),
                                    pytest.param(("pg_read_all_stats",), id="pg_read_all_stats")])
def test_a_reader_of_a_kept_table_makes_the_switch_fail_when_not_cancelled(yesterday, source_db, target_db,
                                                                           pg_cluster, rights):
    """The reader is another role (an analyst): without ``pg_read_all_stats`` the warehouse role sees its pid,
    role and application only; with it, also since when and its query."""
    quiet, _, analyst, _ = yesterday
    grant_session_rights(pg_cluster, target_db, *rights)
    with target_db.connect() as db:  # an analysts' table: the switch moves it too
        db.execute(sql.SQL("CREATE TABLE {} AS SELECT g AS id FROM generate_series(1, 17) g").format(
            sql.Identifier("public", OWN_TABLE)))
        db.commit()
    before, views_before = table_fingerprint(target_db), views_answer(target_db)
    reader = LongReader(analyst, KEPT).begin()
    others = Reader(analyst, [REPLACED, KEPT, OWN_TABLE], app_name="other-readers")
    try:
        assert reader.first_count == before[KEPT][0]
        others.start()
        others.wait_for_rounds(2)
        try:
            error, waited = blocked_night(quiet, target_db, pg_cluster, reader, "blocked")
        finally:
            samples = others.stop()
        # other readers meanwhile: yesterday's rows, no error; how long they waited is printed (readers of the kept
        # table queue behind the waiting switch, up to SWITCH_LOCK_TIMEOUT per try)
        print("other readers during the blocked switch:\n" + describe(samples, [REPLACED, KEPT, OWN_TABLE]))
        assert reading_problems(samples, {n: [before[n][0]] for n in (REPLACED, KEPT, OWN_TABLE)}) == [], \
            describe(samples, [REPLACED, KEPT, OWN_TABLE])
        # the switch waited for the reader's lock before giving up
        assert any(app != reader.app_name for _pid, app, _mode in waited), waited
        # one clear, retryable error that names the blocking session and the setting
        assert getattr(error, "retryable", None) is True, repr(error)
        message = str(error)
        details = [str(reader.pid), analyst.user, reader.app_name, "SWITCH_LOCK_TIMEOUT"]
        if rights:
            details.append(f'FROM "public"."{KEPT}"')
            assert re.search(r"\d\d:\d\d:\d\d", message), f"since when the reader holds it: {message}"
        for detail in details:
            assert detail in message, (detail, message)
        assert_yesterday_untouched(target_db, reader, before, views_before)
    finally:
        reader.close(pg_cluster)
    # the reader gone, the next night goes through (and keeps the analysts' table)
    night(quiet, "after-the-reader")
    tonight = table_fingerprint(target_db)
    assert tonight.pop(OWN_TABLE) == before[OWN_TABLE]
    assert tonight == table_fingerprint(source_db)
    assert leftover_schemas(target_db) == []


@pytest.mark.parametrize("state, who", [
    ("busy in a statement", "an analyst"),
    ("idle in its transaction", "an analyst"),
    ("idle in its transaction", "the warehouse role"),
])
def test_a_reader_of_a_kept_table_is_cancelled_when_configured(yesterday, source_db, target_db, pg_cluster, state,
                                                               who):
    """With ``SWITCH_CANCEL_READERS=true``. An analyst's session: the warehouse role is given the right to see and
    signal other roles' sessions; a session of the warehouse role itself needs no grant."""
    _, cancelling, analyst, before = yesterday
    if who == "an analyst":
        grant_session_rights(pg_cluster, target_db, "pg_read_all_stats", "pg_signal_backend")
    reader = LongReader(analyst if who == "an analyst" else target_db, KEPT).begin()
    try:
        assert reader.first_count == before[KEPT][0]
        if state == "busy in a statement":
            reader.start_long_statement(300)
            assert wait_until(lambda: pg_cluster.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'", params=(reader.pid,)), 30)
        thread, outcome = night_in_thread(cancelling, "cancelling")
        finish(thread, outcome, reader, pg_cluster)
        print(f"\nreader {state} cancelled: the night took {outcome['seconds']:.1f} s")
        assert "error" not in outcome, f"the night failed: {outcome.get('error')}"
        # the reader lost its statement / transaction: it no longer holds yesterday's table
        if state == "busy in a statement":
            assert reader.statement_done.wait(30)
            assert isinstance(reader.statement_error, psycopg.errors.QueryCanceled), repr(reader.statement_error)
        else:
            with pytest.raises(psycopg.Error):
                reader.count(KEPT)
        # tonight's data is live, for the analyst too
        tonight = table_fingerprint(target_db)
        assert tonight == table_fingerprint(source_db)
        assert tonight != before
        assert counts(analyst, [REPLACED, KEPT]) == {REPLACED: tonight[REPLACED][0], KEPT: tonight[KEPT][0]}
        assert leftover_schemas(target_db) == []
    finally:
        reader.close(pg_cluster)


def test_cancel_without_the_right_to_signal_fails_clearly(yesterday, target_db, pg_cluster):
    """``SWITCH_CANCEL_READERS=true`` but the warehouse role may not signal the analyst's session (no
    ``pg_signal_backend``): the night fails naming what to grant; nothing switched, the reader untouched."""
    _, cancelling, analyst, before = yesterday
    views_before = views_answer(target_db)
    reader = LongReader(analyst, KEPT).begin()
    try:
        error, _ = blocked_night(cancelling, target_db, pg_cluster, reader, "cannot-cancel")
        assert "pg_signal_backend" in str(error), str(error)
        assert str(reader.pid) in str(error), str(error)
        assert_yesterday_untouched(target_db, reader, before, views_before)
    finally:
        reader.close(pg_cluster)


def test_a_reader_of_a_replaced_table_does_not_hold_the_switch(yesterday, source_db, target_db, pg_cluster):
    quiet, _, analyst, before = yesterday
    old_users = oid_of(target_db, REPLACED)
    reader = LongReader(analyst, REPLACED).begin()
    try:
        assert reader.first_count == before[REPLACED][0]
        thread, outcome = night_in_thread(quiet, "replaced-held")
        finish(thread, outcome, reader, pg_cluster)
        print(f"\nreader of {REPLACED} held across the night: the night took {outcome['seconds']:.1f} s")
        assert "error" not in outcome, f"a reader of a replaced table failed the night: {outcome.get('error')}"
        assert table_fingerprint(target_db) == table_fingerprint(source_db)
        assert oid_of(target_db, REPLACED) != old_users
        # the reader goes on: in READ COMMITTED its next statement reads tonight's table
        assert reader.count(REPLACED) == counts(source_db, [REPLACED])[REPLACED]
        assert reader.count(KEPT) == counts(source_db, [KEPT])[KEPT]
    finally:
        reader.close(pg_cluster)
    # yesterday's table goes once the reader has ended: by the cleanup, at the latest by the next night
    night(quiet, "next-night")
    assert not relation_exists(target_db, old_users)
    assert leftover_schemas(target_db) == []
    assert table_fingerprint(target_db) == table_fingerprint(source_db)


def test_a_repeatable_read_reader_spanning_the_switch(yesterday, source_db, target_db, pg_cluster):
    """What the README says of REPEATABLE READ readers: after the switch their statements reach tonight's replaced
    tables, whose rows a parallel restore loaded frozen (``COPY ... FREEZE``): PostgreSQL shows frozen rows to every
    snapshot, so the reader sees tonight's complete tables, not empty ones; the kept table shows the snapshot's
    rows; no error either way."""
    quiet, _, analyst, before = yesterday
    reader = LongReader(analyst, REPLACED, isolation="REPEATABLE READ").begin()
    try:
        assert reader.first_count == before[REPLACED][0]
        thread, outcome = night_in_thread(quiet, "repeatable-read")
        finish(thread, outcome, reader, pg_cluster)
        assert "error" not in outcome, f"the night failed: {outcome.get('error')}"
        assert counts(target_db, [REPLACED]) == counts(source_db, [REPLACED])
        tonight = counts(source_db, [REPLACED, "organization-learners"])
        assert tonight[REPLACED] != before[REPLACED][0]
        assert reader.count(REPLACED) == tonight[REPLACED]  # tonight's table, its rows frozen: visible to any snapshot
        # a replaced table it had not read before the switch: the same
        assert reader.count("organization-learners") == tonight["organization-learners"] > 0
        assert reader.count(KEPT) == before[KEPT][0]  # the same table as yesterday: its snapshot's rows
    finally:
        reader.close(pg_cluster)
