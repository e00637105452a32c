"""Incremental copy that loses no row, on real PostgreSQL: late commits, concurrent sessions, source deletes
(kept and reported, or propagated), a row lost in the warehouse, keys other than ``id``, partitioned parents."""

from __future__ import annotations

import json
import threading

import pytest
from airflow.sdk.exceptions import AirflowFailException
from psycopg import sql

from conftest import TEST_PASSWORD
from pgrepl import tasks, verify
from pgrepl.incremental import NoUsableKeyError, check_incremental_keys, copy_incremental, next_recheck_from
from pgrepl.operators.end_of_run import verify_run
from pgrepl.notify import run_summary
from pgrepl.settings import TableMode, TableName

T = TableName.parse
ORDERS = T("orders")
ORDERS_DDL = """
CREATE TABLE orders (order_id bigserial PRIMARY KEY, customer int NOT NULL, amount numeric(10, 2),
                     created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO orders (customer, amount) SELECT i % 97, i FROM generate_series(1, 3000) i;
"""


def run(conn, statement, params=None):
    with conn.connect(autocommit=True) as db:
        cur = db.execute(statement, params)
        return cur.fetchall() if cur.description else []


def keys_of(conn, table: TableName, key: str) -> list[int]:
    return [r[0] for r in run(conn, sql.SQL("SELECT {} FROM {} ORDER BY 1").format(
        sql.Identifier(key), sql.Identifier(table.schema, table.name)))]


def state(conn, table: TableName, key: str):
    """(count, count of distinct keys, md5 of every row in key order)."""
    return run(conn, sql.SQL("SELECT count(*), count(DISTINCT {k}), md5(coalesce(string_agg(t::text, '|' ORDER BY {k}), '')) "
                             "FROM {t} t").format(k=sql.Identifier(key), t=sql.Identifier(table.schema, table.name)))[0]


def verify_results(target, results):
    """verify as the DAG runs it, on the incremental results only (no dump counts)."""
    expected, max_ids = verify.expected_from_runs({}, results)
    found = verify.incremental_findings(results)
    return verify.verify_counts(target, expected, max_ids, found["key_columns"], found["losses"])


def warm_up(source, target, table=ORDERS, runs=4, **kwargs):
    """Bootstrap, then enough copies that the late-commit window is bounded (see next_recheck_from)."""
    results = [copy_incremental(source, target, table, **kwargs) for _ in range(runs)]
    assert results[0].mode == "bootstrap" and results[-1].window[0] is not None
    return results[-1]


def add_orders(conn, n):
    run(conn, "INSERT INTO orders (customer, amount) SELECT i, i FROM generate_series(1, %s) i", (n,))


# -- pure ---------------------------------------------------------------------------------------------------------

def test_next_recheck_from_goes_back_to_the_copy_before_the_last_one_no_running_transaction_had_written_by():
    h = [{"w": 10, "xmin": 100, "xmax": 101}, {"w": 20, "xmin": 150, "xmax": 152},
         {"w": 30, "xmin": 200, "xmax": 201}]
    # xmax of copy 2 (152) <= xmin of copy 3 (200): a transaction running at copy 3 wrote nothing by copy 2;
    # one more copy back for the nextval()-to-xid gap: keys above 10
    assert next_recheck_from(h) == (10, h)
    # a transaction running since before copy 2 (xmin 140 at copy 3): only copy 1 qualifies, no copy before it
    assert next_recheck_from(h[:2] + [{"w": 30, "xmin": 140, "xmax": 201}])[0] is None
    assert next_recheck_from(h[:1]) == (None, h[:1])
    four = h + [{"w": 40, "xmin": 250, "xmax": 251}]
    assert next_recheck_from(four) == (20, four[1:])  # older history is dropped


def test_key_ranges_names_the_first_runs():
    assert verify.key_ranges([9, 1, 2, 3, 7, 10]) == ["1-3", "7", "9-10"]
    assert verify.key_ranges(list(range(0, 20, 2)), limit=2) == ["0", "2", "... (8 more range(s))"]


# -- late commits ---------------------------------------------------------------------------------------------------

def test_uncommitted_insert_open_across_a_copy_arrives_next_run_and_verify_passes(make_database, target_db):
    source = make_database("late")
    run(source, ORDERS_DDL)
    warm_up(source, target_db)
    with source.connect() as late:  # takes its key now, commits after the copy
        late_key = late.execute("INSERT INTO orders (customer, amount) VALUES (1, 1) RETURNING order_id").fetchone()[0]
        add_orders(source, 50)  # committed rows with keys above the open one
        during = copy_incremental(source, target_db, ORDERS)
        assert during.key == "order_id" and during.copied == 50 and during.source_max_id > late_key
        assert late_key not in keys_of(target_db, ORDERS, "order_id")
        verify_results(target_db, [during.as_dict()])
        late.commit()
    after = copy_incremental(source, target_db, ORDERS)
    assert (after.copied, after.late_copied, after.missing) == (0, 1, 0)
    assert after.window[0] is not None and after.window[0] < late_key <= after.window[1]  # a window, not the table
    assert state(target_db, ORDERS, "order_id") == state(source, ORDERS, "order_id")
    verify_results(target_db, [after.as_dict()])
    quiet = copy_incremental(source, target_db, ORDERS)
    assert (quiet.copied, quiet.late_copied, quiet.buckets_compared) == (0, 0, 0)  # totals agree: no bucket read


def test_interleaved_sessions_under_insert_load_every_committed_row_arrives_within_two_runs(make_database, target_db):
    source = make_database("load")
    run(source, ORDERS_DDL)
    warm_up(source, target_db)
    cond = threading.Condition()
    progress = {"copies": 0, "holding": 0, "commits": [0, 0, 0, 0]}
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        """Small transactions without pause; writers 0 and 1 hold every third one open until a copy has finished."""
        try:
            with source.connect() as db:
                i = 0
                while not stop.is_set():
                    i += 1
                    db.execute("INSERT INTO orders (customer, amount) SELECT %s, g FROM generate_series(1, %s) g",
                               (n, 1 + i % 3))
                    if n < 2 and i % 3 == 0:
                        with cond:
                            seen = progress["copies"]
                            progress["holding"] += 1
                            cond.notify_all()
                            cond.wait_for(lambda: progress["copies"] > seen or stop.is_set(), timeout=120)
                            progress["holding"] -= 1
                    db.commit()
                    with cond:
                        progress["commits"][n] += 1
                        cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    committed_before: list[set[int]] = []
    results = []
    try:
        for _ in range(5):
            with cond:  # both holders have an insert open and the free writers committed since the last copy
                floor = list(progress["commits"])
                assert cond.wait_for(lambda: progress["holding"] == 2 and all(
                    progress["commits"][n] >= floor[n] + 3 for n in (2, 3)) or errors, timeout=120)
            assert not errors, errors
            committed_before.append(set(keys_of(source, ORDERS, "order_id")))
            results.append(copy_incremental(source, target_db, ORDERS))  # the free writers go on during the copy
            with cond:
                progress["copies"] += 1
                cond.notify_all()
            if len(committed_before) >= 2:
                # every row committed before copy i is in the warehouse after copy i + 1
                assert committed_before[-2] <= set(keys_of(target_db, ORDERS, "order_id"))
    finally:
        stop.set()
        with cond:
            cond.notify_all()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors
    assert sum(r.late_copied for r in results) > 0, "the load should have produced late commits"
    assert all(r.missing == 0 and r.deleted_at_source == 0 for r in results)
    final = [copy_incremental(source, target_db, ORDERS) for _ in range(2)][-1]
    count, distinct, _ = state(target_db, ORDERS, "order_id")
    assert count == distinct  # no duplicates
    assert state(target_db, ORDERS, "order_id") == state(source, ORDERS, "order_id")
    verify_results(target_db, [final.as_dict()])


# -- deletes at the source, losses in the warehouse -------------------------------------------------------------------

def test_source_delete_is_reported_not_failed_then_propagated_when_opted_in(make_database, target_db):
    source = make_database("gdpr")
    run(source, ORDERS_DDL)
    warm_up(source, target_db)
    run(source, "DELETE FROM orders WHERE order_id IN (17, 18, 2500)")  # a GDPR erasure of old rows
    add_orders(source, 10)
    kept = copy_incremental(source, target_db, ORDERS)
    assert (kept.copied, kept.deleted_at_source, kept.missing, kept.deleted_propagated) == (10, 3, 0, 0)
    assert kept.rows_after == kept.source_count + 3 == state(target_db, ORDERS, "order_id")[0]
    # O(buckets + differing rows): a few levels of at most 64 buckets a side, never the 3000 keys
    assert 0 < kept.buckets_compared <= 3 * 2 * 64
    result = verify_results(target_db, [kept.as_dict()])
    assert result["rows"] == kept.rows_after
    body = run_summary("pg_replication", "r1", "success", None, [kept.as_dict()])
    assert body["deleted_at_source"] == {"public.orders": 3} and body["tables"]["public.orders"]["deleted_at_source"] == 3
    again = copy_incremental(source, target_db, ORDERS)  # the kept rows are remembered: no bucket read
    assert (again.deleted_at_source, again.buckets_compared) == (3, 0)

    propagate = {ORDERS: TableMode("incremental", deletes="propagate")}
    run(source, "DELETE FROM orders WHERE order_id = 40")
    add_orders(source, 5)
    gone = copy_incremental(source, target_db, ORDERS, modes=propagate)
    assert (gone.copied, gone.deleted_propagated, gone.deleted_at_source) == (5, 4, 0)
    assert state(target_db, ORDERS, "order_id") == state(source, ORDERS, "order_id")
    verify_results(target_db, [gone.as_dict()])


def test_row_missing_in_the_warehouse_fails_the_run_naming_it(make_database, target_db):
    source = make_database("loss")
    run(source, ORDERS_DDL)
    warm_up(source, target_db)
    add_orders(source, 5)
    run(target_db, "DELETE FROM orders WHERE order_id IN (100, 101, 102, 700)")  # something deleted warehouse rows
    result = copy_incremental(source, target_db, ORDERS).as_dict()
    assert (result["missing"], result["missing_ranges"], result["copied"]) == (4, ["100-102", "700"], 5)
    with pytest.raises(AirflowFailException) as failure:
        verify_run({}, [result], None, target=target_db)
    message = str(failure.value)
    assert "table public.orders: 4 row(s) the source has were missing in the warehouse (keys 100-102, 700)" in message
    assert "\n" not in message
    assert state(target_db, ORDERS, "order_id") == state(source, ORDERS, "order_id")  # put back from the source
    verify_run({}, [copy_incremental(source, target_db, ORDERS).as_dict()], None, target=target_db)  # next night passes


# -- keys -------------------------------------------------------------------------------------------------------------

EVENTS_DDL = """
CREATE TABLE events (occurred_at timestamptz NOT NULL, event_id bigint NOT NULL, kind text,
                     PRIMARY KEY (occurred_at, event_id));
INSERT INTO events SELECT timestamptz '2026-01-01' + i * interval '1 hour', i, 'k' || i % 5 FROM generate_series(1, 500) i;
CREATE TABLE tokens (id uuid PRIMARY KEY, v int);
CREATE TABLE notes (note_id int, body text);
"""


def test_key_choice_and_refusals_in_one_catalog_query(make_database):
    source = make_database("keys")
    run(source, ORDERS_DDL + EVENTS_DDL)
    with source.connect() as db:
        ok = check_incremental_keys(db, {ORDERS: TableMode("incremental"), T("events"): TableMode("incremental", "event_id"),
                                         T("tokens"): TableMode("none")})
        assert [(str(c.table), c.column) for c in ok] == [("events", "event_id"), ("orders", "order_id")]
        with pytest.raises(NoUsableKeyError) as refused:
            check_incremental_keys(db, {T("events"): TableMode("incremental"), T("tokens"): TableMode("incremental"),
                                        T("notes"): TableMode("incremental", "note"),
                                        ORDERS: TableMode("incremental", "created_at")})
    message = str(refused.value)
    assert message.startswith("BACKUP_MODE: table events: no usable incremental key (no column id; primary key "
                              "(occurred_at, event_id) has several columns); name an integer column")
    assert "table notes: key column 'note' does not exist in the source table" in message
    assert "table orders: key column 'created_at' is timestamp with time zone, not an integer" in message
    assert "table tokens: no usable incremental key (column id is uuid, not an integer; primary key (id) is not an integer)" in message
    assert '{"tokens": {"mode": "incremental", "key": "<column>"}}' in message and "\n" not in message


@pytest.fixture
def preflight_env(make_database, target_db, tmp_path, monkeypatch):
    source = make_database("pfkeys")
    run(source, ORDERS_DDL + EVENTS_DDL)
    for name in ("AIRFLOW_CONN_REPLICATION_SOURCE", "AIRFLOW_CONN_REPLICATION_TARGET", "DATABASE_URL", "LCMS_API_URL",
                 "LCMS_API_KEY", "AIRFLOW_CONN_LCMS_API", "NOTIFICATIONS", "PG_BIN_DIR"):
        monkeypatch.delenv(name, raising=False)
    url = lambda c: f"postgresql://{c.user}:{TEST_PASSWORD}@{c.host}:{c.port}/{c.dbname}"  # noqa: E731
    monkeypatch.setenv("SOURCE_DATABASE_URL", url(source))
    monkeypatch.setenv("TARGET_DATABASE_URL", url(target_db))
    monkeypatch.setenv("REPLICATION_WORK_DIR", str(tmp_path / "work"))
    return monkeypatch


def test_no_usable_key_is_refused_at_preflight_before_anything_changes(preflight_env, target_db):
    preflight_env.setenv("BACKUP_MODE", json.dumps({"events": "incremental", "orders": "incremental"}))
    with pytest.raises(AirflowFailException) as refused:
        tasks.preflight("keys-bad")
    assert str(refused.value).startswith("BACKUP_MODE: table events: no usable incremental key")
    assert "orders" not in str(refused.value) and "\n" not in str(refused.value)
    assert run(target_db, "SELECT to_regclass('_pgrepl.lease')") == [(None,)]  # no lease taken: nothing changed
    preflight_env.setenv("BACKUP_MODE", json.dumps({"events": {"mode": "incremental", "key": "event_id"},
                                                    "orders": "incremental"}))
    assert tasks.preflight("keys-good")["incremental_tables"] == ["events", "orders"]
    assert tasks.release("keys-good")


def test_composite_primary_key_table_copied_by_the_named_key(make_database, target_db):
    source = make_database("events")
    run(source, EVENTS_DDL)
    events = T("events")
    modes = {events: TableMode("incremental", "event_id")}
    first = copy_incremental(source, target_db, events, modes=modes)
    assert (first.mode, first.key, first.copied) == ("bootstrap", "event_id", 500)
    run(source, "INSERT INTO events SELECT now(), i, 'new' FROM generate_series(501, 520) i")
    second = copy_incremental(source, target_db, events, modes=modes)
    assert (second.copied, second.source_max_id) == (20, 520)
    assert state(target_db, events, "event_id") == state(source, events, "event_id")
    verify_results(target_db, [second.as_dict()])


# -- partitioned parent ------------------------------------------------------------------------------------------------

PARTITIONED_DDL = """
CREATE SCHEMA stats;
CREATE TABLE stats.events (event_id bigint NOT NULL, occurred_at timestamptz NOT NULL, kind text,
                           PRIMARY KEY (event_id, occurred_at)) PARTITION BY RANGE (occurred_at);
CREATE TABLE stats.events_2025 PARTITION OF stats.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE stats.events_2026 PARTITION OF stats.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')
    PARTITION BY HASH (event_id);
CREATE TABLE stats.events_2026_h0 PARTITION OF stats.events_2026 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE stats.events_2026_h1 PARTITION OF stats.events_2026 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE stats.events_other PARTITION OF stats.events DEFAULT;
CREATE INDEX events_kind_idx ON stats.events (kind);
INSERT INTO stats.events SELECT i, timestamptz '2025-06-01' + i * interval '1 day', (ARRAY['a', 'b'])[1 + i % 2]
FROM generate_series(1, 800) i;
"""


def partition_counts(conn):
    return run(conn, "SELECT c.relname, (SELECT count(*) FROM stats.events e WHERE e.tableoid = c.oid) "
                     "FROM pg_partition_tree('stats.events') t JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf ORDER BY 1")


def test_partitioned_parent_is_bootstrapped_with_its_partitions_and_copied_through_the_parent(make_database, target_db):
    source = make_database("parts")
    run(source, PARTITIONED_DDL)
    events = T("stats.events")
    first = copy_incremental(source, target_db, events, modes={events: TableMode("incremental", "event_id")})
    assert (first.mode, first.key, first.copied, first.source_count) == ("bootstrap", "event_id", 800, 800)
    assert run(target_db, "SELECT relkind FROM pg_class WHERE oid = 'stats.events'::regclass") == [("p",)]
    assert partition_counts(target_db) == partition_counts(source)  # rows routed to the same leaves
    assert len(partition_counts(target_db)) == 4
    assert run(target_db, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'stats'") == \
        run(source, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'stats'")
    run(source, "INSERT INTO stats.events SELECT i, timestamptz '2027-02-01', 'z' FROM generate_series(801, 830) i")
    run(source, "DELETE FROM stats.events WHERE event_id = 3")
    second = copy_incremental(source, target_db, events, modes={events: TableMode("incremental", "event_id", "propagate")})
    assert (second.copied, second.deleted_propagated, second.rows_after) == (30, 1, 829)
    assert partition_counts(target_db) == partition_counts(source)
    assert state(target_db, events, "event_id") == state(source, events, "event_id")
    verify_results(target_db, [second.as_dict()])  # each row counted once, through the parent


# -- the DAG's task bodies, settings from the environment -------------------------------------------------------------

def test_operator_and_verify_task_with_backup_mode_object_form(make_database, target_db, monkeypatch, tmp_path):
    """BACKUP_MODE's key/deletes reach the copy; a late commit across a run arrives next run; verify's result and the
    webhook summary report the kept source deletes."""
    from pgrepl.operators.incremental import PostgresIncrementalOperator

    source = make_database("opsrc")
    run(source, ORDERS_DDL + EVENTS_DDL)
    url = lambda c: f"postgresql://{c.user}:{TEST_PASSWORD}@{c.host}:{c.port}/{c.dbname}"  # noqa: E731
    for name in ("AIRFLOW_CONN_REPLICATION_SOURCE", "AIRFLOW_CONN_REPLICATION_TARGET", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SOURCE_DATABASE_URL", url(source))
    monkeypatch.setenv("TARGET_DATABASE_URL", url(target_db))
    monkeypatch.setenv("REPLICATION_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("BACKUP_MODE", json.dumps({"orders": "incremental",
                                                  "events": {"mode": "incremental", "key": "event_id",
                                                             "deletes": "propagate"}}))
    ops = {name: PostgresIncrementalOperator(task_id=f"incremental_{name}", table=name) for name in ("orders", "events")}

    def night():
        results = [op.execute(context={}) for op in ops.values()]
        return results, verify_run({}, results, None, target=target_db)

    for _ in range(4):
        results, _ = night()
    assert [r["key"] for r in results] == ["order_id", "event_id"]
    with source.connect() as late:
        late.execute("INSERT INTO orders (customer, amount) VALUES (7, 7)")
        add_orders(source, 3)
        run(source, "DELETE FROM orders WHERE order_id = 5; DELETE FROM events WHERE event_id = 9")
        results, verified = night()  # the late row is not committed yet
        late.commit()
    assert results[0]["copied"] == 3 and results[0]["deleted_at_source"] == 1
    assert results[1]["deleted_propagated"] == 1
    assert verified["deleted_at_source"] == {"public.orders": 1}
    assert verified["deleted_propagated"] == {"public.events": 1}
    results, verified = night()
    assert results[0]["late_copied"] == 1 and results[0]["deleted_at_source"] == 1
    assert state(target_db, T("events"), "event_id") == state(source, T("events"), "event_id")
    assert run_summary("pg_replication", "r", "success", None, results)["deleted_at_source"] == {"public.orders": 1}
