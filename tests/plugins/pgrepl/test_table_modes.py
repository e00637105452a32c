"""BACKUP_MODE on a schema shaped like public sample shops (tests/plugins/pgrepl/data/orders_events.sql), on real
PostgreSQL: first night, later nights, a mode changed from full to incremental and back, partitions, enums,
domains, shared sequences, views and materialized views over kept tables; and the settings preflight refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from dump_helpers import break_biggest_data_file
from psycopg import sql

from pgrepl import fullcopy, incremental, table_modes
from pgrepl.settings import ReplicationSettings, TableMode, TableName

FIXTURE = Path(__file__).parent / "data" / "orders_events.sql"
EVENTS = ("events", "events_2024_01", "events_2024_02", "events_2024_03")


@pytest.fixture
def shop(make_database):
    """A source database loaded with the orders/events fixture, and an empty warehouse."""
    source, target = make_database("shop_source"), make_database("shop_warehouse")
    with source.connect() as db:
        db.execute(FIXTURE.read_text())
        db.commit()
    return source, target


def settings_for(shop, tmp_path, modes: dict[str, str] | None = None, **kwargs) -> ReplicationSettings:
    source, target = shop
    return ReplicationSettings(
        source=source, target=target, work_dir=str(tmp_path / "work"), jobs=2,
        backup_mode={TableName.parse(t): TableMode.of(m) for t, m in (modes or {}).items()}, **kwargs)


def night(settings: ReplicationSettings, key: str) -> dict:
    """One night as the DAG runs it: dump, restore, compat, enrichment, incremental copies, view refresh."""
    result = fullcopy.run_full_copy(settings, key)
    tables = incremental.order_incremental_tables(settings.source, settings.incremental_tables)
    result["incremental"] = [
        incremental.copy_incremental(settings.source, settings.target, table,
                                     incremental_tables=settings.incremental_tables).as_dict()
        for table in tables
    ]
    result["refresh"] = fullcopy.refresh_after_incremental(settings, result["refresh_after_incremental"])
    return result


def contents(conn) -> dict[str, tuple[str, int, str]]:
    """{relation: (kind, rows, md5 of the rows)} of every table, view and materialized view of ``public``."""
    result = {}
    with conn.connect() as db:
        relations = db.execute(
            "SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND relkind IN ('r', 'p', 'v', 'm') ORDER BY 1").fetchall()
        for name, kind in relations:
            count, digest = db.execute(sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {} t"
            ).format(sql.Identifier("public", name))).fetchone()
            result[name] = (kind, count, digest)
    return result


def identities(conn, names) -> dict[str, tuple[int, int]]:
    """{relation: (oid, relfilenode)}: equal after a night means the relation was not recreated nor rewritten."""
    with conn.connect() as db:
        return {name: (oid, node) for name, oid, node in db.execute(
            "SELECT relname, oid::int8, relfilenode::int8 FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND relname = ANY(%s)", (list(names),)).fetchall()}


def one(conn, query, params=None):
    with conn.connect() as db:
        return db.execute(query, params).fetchone()[0]


def day_of_activity(source, n: int) -> None:
    """The source moves on: new orders (one with a label the enum gained), new events in every partition, replaced
    tables changed, a sequence shared by a replaced and a kept table advanced."""
    with source.connect() as db:
        db.execute("ALTER TYPE order_status ADD VALUE IF NOT EXISTS 'refunded' AFTER 'paid'")
        db.commit()
        db.execute("INSERT INTO customers (name) VALUES (%s)", (f"customer of day {n}",))
        db.execute("INSERT INTO orders (customer_id, status, total) SELECT 1 + i % 20, "
                   "(ARRAY['new', 'refunded'])[1 + i % 2]::order_status, i FROM generate_series(1, 15) i")
        db.execute("INSERT INTO order_notes (status, note) VALUES ('refunded', %s)", (f"day {n}",))
        db.execute("UPDATE customers SET name = name || '*' WHERE id % 5 = 0")
        db.execute("INSERT INTO events (occurred_at, order_id, kind) SELECT timestamptz '2024-01-03' + i * interval "
                   "'5 days', i, 'day' || %s FROM generate_series(1, 15) i", (n,))
        db.commit()
        refresh_source_views(db)


def refresh_source_views(db) -> None:
    """The warehouse's materialized views are computed tonight: compare them with the source's, computed now."""
    for view in ("daily_events", "customer_orders", "paid_customers", "note_counts"):
        db.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(view)))
    db.commit()


def test_first_night_creates_kept_tables_then_keeps_them(shop, tmp_path):
    source, target = shop
    settings = settings_for(shop, tmp_path, {"orders": "incremental", "events": "incremental"})

    first = night(settings, "night1")
    assert contents(target) == contents(source)
    # the restore created the kept tables' structure, the incremental step filled them
    assert {r["table"]: r["mode"] for r in first["incremental"]} == {"orders": "bootstrap", "events": "bootstrap"}
    assert not any(r["created"] for r in first["incremental"])
    assert one(target, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass") == 3
    with target.connect() as db:
        indexes = {r[0] for r in db.execute("SELECT indexrelid::regclass::text FROM pg_index "
                                           "WHERE indrelid IN ('orders'::regclass, 'events_2024_01'::regclass)")}
        constraints = {r[0] for r in db.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'orders'::regclass")}
    assert {"orders_pkey", "orders_customer_idx", "orders_status_idx", "orders_number_key",
            "events_2024_01_pkey", "events_2024_01_kind_idx", "events_2024_01_order_idx"} <= indexes
    # FKs between a kept table and replaced ones are not restored (their rows come at different times)
    assert "orders_customer_id_fkey" not in constraints
    assert one(target, "SELECT count(*) FROM pg_constraint WHERE conname = 'order_lines_order_id_fkey'") == 0
    # materialized views over kept tables were refreshed after the incremental step (they equal the source above)
    order = [name for _, name in first["refresh_after_incremental"]]
    assert sorted(order) == ["customer_orders", "daily_events", "paid_customers"]
    assert order.index("customer_orders") < order.index("paid_customers")  # it reads customer_orders
    assert one(target, "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'orders'::regclass "
                       "AND adnum = 5") == "nextval('shared_number_seq'::regclass)"

    kept_names = ("orders", "orders_id_seq", "shared_number_seq", *EVENTS)
    before = identities(target, kept_names)
    type_oids = one(target, "SELECT array_agg(oid::int8 ORDER BY typname) FROM pg_type "
                            "WHERE typname IN ('order_status', 'amount')")
    function_oids = one(target, "SELECT array_agg(oid::int8 ORDER BY proname) FROM pg_proc "
                                "WHERE proname IN ('default_channel', 'is_positive')")
    for n in (2, 3):
        day_of_activity(source, n)
        later = night(settings, f"night{n}")
        assert contents(target) == contents(source), f"night {n}"
        assert identities(target, kept_names) == before, f"night {n}: a kept table was recreated"
        assert {r["mode"] for r in later["incremental"]} == {"append"}
    # the functions its default and check call stayed with it too
    assert one(target, "SELECT array_agg(oid::int8 ORDER BY proname) FROM pg_proc "
                       "WHERE proname IN ('default_channel', 'is_positive')") == function_oids
    assert one(target, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass AND contype = 'c'") == 1
    # the enum and the domain stayed with the kept table; the enum got the source's new label, in its place
    assert one(target, "SELECT array_agg(oid::int8 ORDER BY typname) FROM pg_type "
                       "WHERE typname IN ('order_status', 'amount')") == type_oids
    assert one(target, "SELECT enum_range(NULL::order_status)::text") == "{new,paid,refunded,shipped}"
    # the shared sequence is at the source's value
    assert one(target, "SELECT last_value FROM shared_number_seq") == one(source, "SELECT last_value FROM shared_number_seq")
    assert one(target, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '\\_pgrepl\\_prev%'") == 0


def test_mode_changes_from_full_to_incremental_and_back(shop, tmp_path):
    source, target = shop
    full = settings_for(shop, tmp_path)
    kept = settings_for(shop, tmp_path, {"orders": "incremental", "events": "incremental"})
    night(full, "night1")
    assert contents(target) == contents(source)
    day_of_activity(source, 2)
    night(kept, "night2")  # full -> incremental: yesterday's full copy is kept and appended to
    assert contents(target) == contents(source)
    ids = identities(target, ("orders", *EVENTS))
    day_of_activity(source, 3)
    night(kept, "night3")
    assert contents(target) == contents(source)
    assert identities(target, ("orders", *EVENTS)) == ids
    day_of_activity(source, 4)
    night(full, "night4")  # incremental -> full: replaced from the dump again
    assert contents(target) == contents(source)
    assert identities(target, ("orders",))["orders"] != ids["orders"]
    day_of_activity(source, 5)
    night(kept, "night5")  # and back
    assert contents(target) == contents(source)


def test_none_tables_get_their_structure_on_the_first_night_then_are_kept(shop, tmp_path):
    source, target = shop
    settings = settings_for(shop, tmp_path, {"orders": "none", "events": "none"})
    night(settings, "night1")
    got, expected = contents(target), contents(source)
    for name in ("orders", *EVENTS):
        assert got[name][:2] == (expected[name][0], 0), name  # created, empty
    for name in ("customers", "order_lines", "order_notes", "note_counts"):
        assert got[name] == expected[name], name
    # views over kept tables exist and read the warehouse's (empty) tables
    assert got["order_totals"][1] == got["daily_events"][1] == got["customer_orders"][1] == 0
    with target.connect() as db:  # the warehouse's own rows in a none table stay
        db.execute("INSERT INTO orders (customer_id, total) VALUES (1, 9.5)")
        db.execute("INSERT INTO events (occurred_at, kind) VALUES ('2024-03-03', 'warehouse')")
        db.commit()
    ids = identities(target, ("orders", *EVENTS))
    day_of_activity(source, 2)
    night(settings, "night2")
    got = contents(target)
    assert identities(target, ("orders", *EVENTS)) == ids
    assert got["orders"][1] == 1 and got["events"][1] == got["events_2024_03"][1] == 1
    assert got["customer_orders"][1] == 1 and got["daily_events"][1] == 1  # refreshed over the kept rows
    assert got["order_notes"] == contents(source)["order_notes"]  # rows with the enum's new label loaded


def test_a_new_partition_of_a_kept_parent_is_created_and_attached(shop, tmp_path):
    source, target = shop
    settings = settings_for(shop, tmp_path, {"events": "incremental"})
    night(settings, "night1")
    ids = identities(target, EVENTS)
    with source.connect() as db:
        db.execute("CREATE TABLE events_2024_04 PARTITION OF events FOR VALUES FROM ('2024-04-01') TO ('2024-05-01')")
        db.execute("INSERT INTO events (occurred_at, kind) VALUES ('2024-04-02', 'april'), ('2024-01-09', 'jan')")
        db.commit()
        refresh_source_views(db)
    night(settings, "night2")
    assert contents(target) == contents(source)
    assert identities(target, EVENTS) == ids
    assert one(target, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events_pkey'::regclass") == 4


# -- preflight refusals ---------------------------------------------------------------------------

def refusal(shop, tmp_path, modes) -> str:
    with pytest.raises(fullcopy.PreflightError) as error:
        fullcopy.preflight(settings_for(shop, tmp_path, modes))
    return str(error.value)


def test_preflight_refuses_a_partition_of_a_parent_copied_in_full(shop, tmp_path):
    message = refusal(shop, tmp_path, {"events_2024_01": "incremental"})
    assert message == ("BACKUP_MODE: table events_2024_01 is a partition of events, which is copied in full: set the "
                       "mode on events (a mode on a parent covers all its partitions) or remove events_2024_01")


def test_preflight_refuses_a_partition_with_another_mode_than_its_parent(shop, tmp_path):
    message = refusal(shop, tmp_path, {"events": "incremental", "events_2024_02": "none"})
    assert message == ("BACKUP_MODE: table events_2024_02 is a partition of events, whose entry (events) covers it "
                       "with another mode: remove the entry of events_2024_02")
    fullcopy.preflight(settings_for(shop, tmp_path, {"events": "incremental", "events_2024_02": "incremental"}))


def test_preflight_refuses_a_kept_table_using_a_sequence_owned_by_a_replaced_table(shop, tmp_path):
    source, _ = shop
    with source.connect() as db:
        db.execute("CREATE TABLE order_archive (id integer DEFAULT nextval('orders_id_seq') PRIMARY KEY, note text)")
        db.commit()
    message = refusal(shop, tmp_path, {"order_archive": "none"})
    assert message == (
        "BACKUP_MODE: table order_archive draws a default from sequence orders_id_seq, owned by table orders which "
        "is copied in full (the sequence is replaced with it): add orders to BACKUP_MODE too, or detach the sequence "
        "(ALTER SEQUENCE ... OWNED BY NONE) so that it stays with the kept table")
    fullcopy.preflight(settings_for(shop, tmp_path, {"order_archive": "none", "orders": "incremental"}))


def test_preflight_refuses_a_kept_table_using_the_row_type_of_a_replaced_table(shop, tmp_path):
    source, _ = shop
    with source.connect() as db:
        db.execute("CREATE TABLE customer_snapshots (id serial PRIMARY KEY, snapshot customers)")
        db.commit()
    message = refusal(shop, tmp_path, {"customer_snapshots": "incremental"})
    assert message == ("BACKUP_MODE: table customer_snapshots has a column of type customers, the row type of table "
                       "customers which is copied in full: add customers to BACKUP_MODE too")


def test_refusal_comes_before_any_change(shop, tmp_path):
    """The restore checks the same rules before it moves anything: yesterday's warehouse stays as it was."""
    source, target = shop
    night(settings_for(shop, tmp_path), "night1")
    yesterday = contents(target)
    with pytest.raises(fullcopy.PreflightError, match="events_2024_01 is a partition of events"):
        fullcopy.run_full_copy(settings_for(shop, tmp_path, {"events_2024_01": "incremental"}), "refused")
    assert contents(target) == yesterday


# -- pure helpers ---------------------------------------------------------------------------------

def test_missing_labels_keep_the_source_order():
    assert table_modes.missing_labels(["a", "b", "c"], ["a", "c"]) == [("b", "a", None)]
    assert table_modes.missing_labels(["z", "a"], ["a"]) == [("z", None, "a")]
    assert table_modes.missing_labels(["a", "x", "y"], ["a", "old"]) == [("x", "a", None), ("y", "x", None)]
    assert table_modes.missing_labels(["a"], ["a", "gone"]) == []


# -- the DAG ---------------------------------------------------------------------------------------

def test_two_nights_through_the_dag(shop, tmp_path):
    """``airflow dags test pg_replication`` twice on the shop schema: refresh_views runs after the incremental
    copies, verify counts each partitioned row once, the warehouse equals the source."""
    from airflow_helpers import dag_run_state, run_dag_test, task_states
    from conftest import TEST_PASSWORD

    source, target = shop

    def url(conn):
        return f"postgresql://{conn.user}:{TEST_PASSWORD}@{conn.host}:{conn.port}/{conn.dbname}"

    env = {"SOURCE_DATABASE_URL": url(source), "TARGET_DATABASE_URL": url(target), "PG_RESTORE_JOBS": "2",
           "REPLICATION_WORK_DIR": str(tmp_path / "work"),
           "BACKUP_MODE": '{"orders": "incremental", "events": {"mode": "incremental"}}'}
    for n in (1, 2):
        if n == 2:
            day_of_activity(source, 2)
        result = run_dag_test("pg_replication", env, tmp_path / f"night{n}")
        states = task_states(result)
        assert dag_run_state(result) == "success", result.stdout[-4000:]
        assert states["refresh_views"] == states["verify"] == "success"
        assert contents(target) == contents(source), f"night {n}"


def test_failed_restore_puts_kept_types_functions_and_partitions_back(shop, tmp_path):
    import glob
    import os

    source, target = shop
    settings = settings_for(shop, tmp_path, {"orders": "incremental", "events": "incremental"})
    night(settings, "night1")
    yesterday, ids = contents(target), identities(target, ("orders", *EVENTS))
    day_of_activity(source, 2)
    fullcopy.dump(settings, "bad")
    break_biggest_data_file(os.path.join(settings.work_dir, "bad", "dump"))  # pg_restore fails mid-way
    with pytest.raises(RuntimeError, match="command failed"):
        fullcopy.restore(settings, "bad", "bad-run")
    assert contents(target) == yesterday
    assert identities(target, ("orders", *EVENTS)) == ids
    assert one(target, "SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
                       "AND proname IN ('default_channel', 'is_positive')") == 2
    assert one(target, "SELECT count(*) FROM pg_type WHERE typnamespace = 'public'::regnamespace "
                       "AND typname IN ('order_status', 'amount')") == 2
    assert one(target, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '\\_pgrepl\\_prev%'") == 0
    from pgrepl import swap as warehouse

    with target.connect() as db:  # what the DAG's release task does
        warehouse.release_lease(db, "bad-run")
    night(settings, "night2")  # and the next attempt goes through
    assert contents(target) == contents(source)


def test_a_crashed_attempt_is_healed_before_the_restore_list_reads_the_warehouse(shop, tmp_path):
    """A worker died mid-restore on the night ``orders`` was to be created: the half-restored ``orders`` must not
    count as "the warehouse has it" (its structure would then be left out of tonight's restore)."""
    from pgrepl import swap as warehouse

    source, target = shop
    settings = settings_for(shop, tmp_path, {"orders": "incremental", "events": "incremental"})
    night(settings, "night1")
    with target.connect() as db:  # the warehouse loses orders (say, an analyst dropped it)
        db.execute("DROP TABLE orders CASCADE")
        db.commit()
        everything = {r[0] for r in db.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace").fetchall()}
        warehouse.prepare_swap(db, "dead-run", {"public": everything}, {})
        db.execute("CREATE TABLE public.orders (id bigint)")  # what the dead attempt's pg_restore had done
        db.commit()
        warehouse.release_lease(db, "dead-run")
    night(settings, "night2")
    assert contents(target) == contents(source)

