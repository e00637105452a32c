"""Pure parts of the incremental copy: ordering, column matching, the rewind guard, bootstrap DDL."""

from __future__ import annotations

import pytest
from psycopg import sql

from pgrepl.incremental import (
    Column,
    SchemaMismatchError,
    SourceRewoundError,
    check_watermark,
    column_ddl,
    copy_columns,
    topological_order,
)
from pgrepl.settings import TableName

T = TableName.parse


def test_parents_come_first_and_order_is_otherwise_kept():
    tables = [T("knowledge-elements"), T("answers"), T("users"), T("snapshots")]
    edges = [(T("knowledge-elements"), T("answers")), (T("answers"), T("users")), (T("knowledge-elements"), T("users"))]
    assert topological_order(tables, edges) == [T("users"), T("answers"), T("knowledge-elements"), T("snapshots")]


def test_order_ignores_outside_tables_self_references_and_survives_cycles():
    tables = [T("b"), T("a"), T("c")]
    edges = [(T("b"), T("outside")), (T("b"), T("b")), (T("a"), T("c")), (T("c"), T("a"))]
    # a and c form a cycle: kept in the given order after b
    assert topological_order(tables, edges) == [T("b"), T("a"), T("c")]
    assert topological_order([], edges) == []


def test_watermark_guard():
    check_watermark(T("answers"), None, None)
    check_watermark(T("answers"), None, 5)
    check_watermark(T("answers"), 5, 5)
    check_watermark(T("answers"), 5, 9)
    with pytest.raises(SourceRewoundError, match=r"table answers: target max\(id\) = 12 .* source max\(id\) = 7"):
        check_watermark(T("answers"), 12, 7)
    with pytest.raises(SourceRewoundError, match=r"stats.hits.*= 3 .*none \(empty table\)"):
        check_watermark(T("stats.hits"), 3, None)


def col(name, oid=23, type_sql="integer", **kw):
    return Column(name=name, type_oid=oid, type_sql=type_sql, **kw)


def test_copy_columns_binary_only_when_every_builtin_type_matches():
    source = [col("id"), col("value", 25, "text"), col("total", 23, generated="s", default_sql="id * 2")]
    names, binary = copy_columns(T("t"), source, [col("id"), col("value", 25, "text"), col("extra", 25, "text")])
    assert (names, binary) == (["id", "value"], True)  # generated columns are never copied
    names, binary = copy_columns(T("t"), source, [col("id", 20, "bigint"), col("value", 25, "text")])
    assert (names, binary) == (["id", "value"], False)  # int4 -> int8: text, converted by the target
    user_type = [col("id"), col("mood", 16500, "public.mood")]
    assert copy_columns(T("t"), user_type, user_type)[1] is False  # user types differ in OID between databases


def test_copy_columns_refuses_to_drop_source_columns():
    with pytest.raises(SchemaMismatchError, match=r"table my-table: the target lacks source column\(s\) value"):
        copy_columns(T("my-table"), [col("id"), col("value", 25, "text")], [col("id")])


def test_bootstrap_column_ddl_drops_sequence_defaults_keeps_others():
    serial = col("id", not_null=True, default_sql="nextval('public.answers_id_seq'::regclass)", default_uses_sequence=True)
    created = col("createdAt", 1184, "timestamp with time zone", not_null=True, default_sql="now()")
    label = col("label", 25, "text", collation_sql='pg_catalog."C"')
    generated = col("double", 23, generated="s", default_sql="(id * 2)")
    render = lambda c: column_ddl(c).as_string(None)  # noqa: E731
    assert render(serial) == '"id" integer NOT NULL'
    assert render(created) == '"createdAt" timestamp with time zone DEFAULT now() NOT NULL'
    assert render(label) == '"label" text COLLATE pg_catalog."C"'
    assert render(generated) == '"double" integer GENERATED ALWAYS AS ((id * 2)) STORED'
    assert isinstance(column_ddl(serial), sql.Composed)
