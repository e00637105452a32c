"""The many-tables generator (``devenv.many_tables``): what it builds is what the issue-19 tests and bench rely on."""

from __future__ import annotations

from devenv import many_tables


def test_build_makes_tables_indexes_fks_views_and_rows(make_database):
    conn = make_database("many")
    built = many_tables.build(conn, 120, ("public", "tenant_b"), rows=4, batch=50)
    assert built.tables()[:3] == [("public", "mt_00001"), ("tenant_b", "mt_00002"), ("public", "mt_00003")]
    with conn.connect() as db:
        kinds = dict(db.execute(
            "SELECT c.relkind, count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('public', 'tenant_b') GROUP BY 1").fetchall())
        fks = db.execute("SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
                         "WHERE contype = 'f' ORDER BY 1").fetchall()
        rows = db.execute("SELECT count(*) FROM tenant_b.mt_00120").fetchone()[0]
        summary = db.execute("SELECT sum(n) FROM mt_summary").fetchone()[0]
        views = db.execute("SELECT n FROM tenant_b.mvv_00100").fetchone()[0]
    assert kinds == {"r": 120, "i": 240, "v": 4 + 1, "m": 1}  # pkey + label index each; mv_ every 25th, mvv_ 100th
    assert len(fks) == 12 and ("tenant_b.mt_00010", "mt_00009") in fks
    assert rows == 4 and summary == 12 and views == 2


def test_pick_incremental_spreads_five_percent_outside_foreign_keys():
    picked = many_tables.pick_incremental(3000, 0.05, ("public", "tenant_b"))
    assert len(picked) == len(set(picked)) == 150
    numbers = [int(name[3:]) for _, name in picked]
    assert all(n % 10 not in (0, 9) for n in numbers)  # neither the FK's table nor its target
    assert min(numbers) < 100 and max(numbers) > 2900
    assert {schema for schema, _ in picked} == {"public", "tenant_b"}
