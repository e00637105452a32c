"""``BACKUP_MODE`` on a real schema: which source objects each mode covers, what is impossible, and what the swap and
the restore list must keep with the tables the warehouse keeps.

Pure functions over facts read in a few set-based catalog queries (one scan each, whatever the number of tables):

* a mode on a partitioned (or inheritance) parent covers all its descendants, found through ``pg_inherits``;
* the dump holds every kept table's *structure* (``--exclude-table-data``): on the night a kept table is missing
  from the warehouse the restore creates it empty, with its columns, defaults, indexes and constraints, and the
  incremental step fills it; on the other nights its structure entries are left out and the table is kept;
* enums, domains, sequences and functions (of defaults and checks) a kept table uses stay with it across the swap
  (moved back, their dump entries dropped); an enum that gained labels in the source gets them before the restore loads rows; a shared sequence
  is set to the source's value by the dump's ``SEQUENCE SET``;
* materialized views that read a kept table (directly or through other views) are created empty by the restore
  and refreshed after the incremental step, in dependency order;
* :func:`problems` names each setting the copy cannot honour (checked by ``preflight``, before any change).

Objects are identified by OIDs inside each database; between the source and the warehouse, by exact qualified name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from psycopg import sql

from pgrepl import sqlfiles
from pgrepl.catalog import Relation, resolve_tables
from pgrepl.settings import ReplicationSettings, TableMode, TableName

PG_TYPE, PG_CLASS, PG_PROC, PG_CONSTRAINT = 1247, 1259, 1255, 2606


@dataclass
class SourceFacts:
    """Facts of the source catalog (see ``include/sql/source/table_modes.sql`` and ``types.sql``)."""

    parents: dict[int, int] = field(default_factory=dict)  # child table -> parent table (pg_inherits)
    uses: dict[int, set[tuple[str, int]]] = field(default_factory=dict)  # table/type -> {("t"|"S", oid)}
    reads: dict[int, set[int]] = field(default_factory=dict)  # view/matview -> relations it reads
    types: dict[int, tuple[str, str, str, int, list[int]]] = field(default_factory=dict)  # oid -> (schema, name, typtype, table, constraints)
    partition_indexes: dict[tuple[str, str], tuple[int, int | None]] = field(default_factory=dict)  # name -> (index, constraint)

    def children(self) -> dict[int, list[int]]:
        result: dict[int, list[int]] = {}
        for child, parent in self.parents.items():
            result.setdefault(parent, []).append(child)
        return result


def read_source_facts(db) -> SourceFacts:
    """Read :class:`SourceFacts` from the database behind ``db`` (three queries)."""
    facts = SourceFacts()
    for kind, from_oid, to_oid, to_kind in db.execute(sqlfiles.load("source/table_modes")).fetchall():
        if kind == "inherits":
            facts.parents[from_oid] = to_oid
        elif kind == "uses":
            facts.uses.setdefault(from_oid, set()).add((to_kind, to_oid))
        else:
            facts.reads.setdefault(from_oid, set()).add(to_oid)
    for oid, schema, name, typtype, table_oid, constraints in db.execute(sqlfiles.load("source/types")).fetchall():
        facts.types[oid] = (schema, name, typtype, table_oid, list(constraints or []))
    for schema, name, index_oid, constraint_oid in db.execute(sqlfiles.load("source/partition_indexes")).fetchall():
        facts.partition_indexes[(schema, name)] = (index_oid, constraint_oid)
    return facts


@dataclass
class ModePlan:
    """Every source relation a ``BACKUP_MODE`` entry covers.

    :param kept: ``oid -> (the BACKUP_MODE entry's table, its mode)`` for the named tables and their descendants.
    :param names: ``oid -> (schema, name)`` of the kept relations.
    """

    kept: dict[int, tuple[TableName, TableMode]]
    names: dict[int, tuple[str, str]]

    def mode(self, oid: int) -> TableMode | None:
        entry = self.kept.get(oid)
        return entry[1] if entry else None

    def table_names(self) -> list[TableName]:
        """Every kept relation (partitions included), for ``pg_dump --exclude-table-data``."""
        return sorted((TableName(*self.names[oid]) for oid in self.kept), key=str)


def plan_modes(settings: ReplicationSettings, relations: list[Relation], facts: SourceFacts) -> ModePlan:
    """Expand ``BACKUP_MODE`` over partitions and inheritance children (recursively), from the catalog."""
    found, _missing = resolve_tables(relations, settings.kept_tables)
    names = {r.oid: (r.schema, r.name) for r in relations}
    children = facts.children()
    kept: dict[int, tuple[TableName, TableMode]] = {}
    # parents first, so that a descendant named in BACKUP_MODE too keeps its root's entry (problems() reports it)
    def depth(oid: int) -> int:
        n = 0
        while oid in facts.parents:
            oid, n = facts.parents[oid], n + 1
        return n

    for table, oid in sorted(found.items(), key=lambda item: depth(item[1])):
        if oid in kept:
            continue
        mode = settings.table_mode(table)
        stack = [oid]
        while stack:
            current = stack.pop()
            kept[current] = (table, mode)
            stack.extend(children.get(current, []))
    return ModePlan(kept=kept, names={oid: names.get(oid, ("?", "?")) for oid in kept})


def _display(schema: str, name: str) -> str:
    return str(TableName(schema, name))


def problems(settings: ReplicationSettings, relations: list[Relation], facts: SourceFacts) -> list[str]:
    """One line per ``BACKUP_MODE`` entry the copy cannot honour: the table, the object, the fix."""
    plan = plan_modes(settings, relations, facts)
    found, _missing = resolve_tables(relations, settings.kept_tables)
    by_oid = {r.oid: r for r in relations}
    lines: list[str] = []
    misplaced: set[int] = set()  # partitions named alone: their parent's objects are not kept, said once
    for table, oid in sorted(found.items(), key=lambda item: str(item[0])):
        parent = facts.parents.get(oid)
        if parent is None:
            continue
        parent_name = _display(*plan.names.get(parent, (by_oid[parent].schema, by_oid[parent].name)))
        root, root_mode = plan.kept[oid]
        kind = "a partition" if by_oid[parent].kind == "p" else "an inheritance child"
        if root == table:
            misplaced.update(o for o, (entry, _mode) in plan.kept.items() if entry == table)
            lines.append(
                f"BACKUP_MODE: table {table} is {kind} of {parent_name}, which is copied in full: set the mode on "
                f"{parent_name} (a mode on a parent covers all its partitions) or remove {table}"
            )
        elif root_mode != settings.table_mode(table):
            lines.append(
                f"BACKUP_MODE: table {table} is {kind} of {parent_name}, whose entry ({root}) covers it with another "
                f"mode: remove the entry of {table}"
            )
    for oid in sorted(set(plan.kept) - misplaced, key=lambda o: plan.names[o]):
        schema, name = plan.names[oid]
        for kind, used in sorted(facts.uses.get(oid, ())):
            if kind == "S":
                sequence = by_oid.get(used)
                owner = sequence.owner_table if sequence else None
                if sequence and owner and owner not in plan.kept:
                    owner_name = _display(by_oid[owner].schema, by_oid[owner].name)
                    lines.append(
                        f"BACKUP_MODE: table {_display(schema, name)} draws a default from sequence "
                        f"{_display(sequence.schema, sequence.name)}, owned by table {owner_name} which is copied in "
                        f"full (the sequence is replaced with it): add {owner_name} to BACKUP_MODE too, or detach "
                        f"the sequence (ALTER SEQUENCE ... OWNED BY NONE) so that it stays with the kept table"
                    )
            else:
                info = facts.types.get(used)
                if info and info[3] and info[3] not in plan.kept and info[3] in by_oid:
                    row_table = _display(by_oid[info[3]].schema, by_oid[info[3]].name)
                    lines.append(
                        f"BACKUP_MODE: table {_display(schema, name)} has a column of type {_display(info[0], info[1])}, "
                        f"the row type of table {row_table} which is copied in full: add {row_table} to BACKUP_MODE too"
                    )
    return lines


# -- the warehouse's side ----------------------------------------------------------------------

@dataclass
class WarehouseKept:
    """What the warehouse holds of the kept tables, read once before the swap.

    :param present: ``(schema, name)`` of the kept tables the warehouse has (their dump entries are left out).
    :param types: ``(schema, name) -> typtype`` of the types they use (kept with them across the swap).
    :param sequences: ``(schema, name)`` of the sequences their defaults use, not owned by a table.
    :param functions: ``(schema, name, identity arguments)`` of the functions their defaults, check constraints
        and domains call.
    """

    present: set[tuple[str, str]] = field(default_factory=set)
    types: dict[tuple[str, str], str] = field(default_factory=dict)
    sequences: set[tuple[str, str]] = field(default_factory=set)
    functions: set[tuple[str, str, str]] = field(default_factory=set)


def read_warehouse_kept(db, tables: Iterable[TableName], schemas: set[str]) -> WarehouseKept:
    """The :class:`WarehouseKept` of ``tables`` (one query); objects outside the dump's ``schemas`` are ignored."""
    tables = list(tables)
    result = WarehouseKept()
    if not tables:
        return result
    params = {"schemas": [t.schema for t in tables], "names": [t.name for t in tables]}
    for kind, schema, name, detail in db.execute(sqlfiles.load("warehouse/kept_objects"), params).fetchall():
        if kind == "r":
            result.present.add((schema, name))
        elif schema not in schemas:
            continue
        elif kind == "t":
            result.types[(schema, name)] = detail
        elif kind == "f":
            result.functions.add((schema, name, detail))
        else:
            result.sequences.add((schema, name))
    return result


def source_functions(db, functions: Iterable[tuple[str, str, str]]) -> set[int]:
    """OIDs of the source functions with these ``(schema, name, identity arguments)`` (one query)."""
    functions = set(functions)
    if not functions:
        return set()
    params = {"schemas": [f[0] for f in functions], "names": [f[1] for f in functions]}
    rows = db.execute(sqlfiles.load("source/functions"), params).fetchall()
    return {oid for oid, schema, name, args in rows if (schema, name, args) in functions}


def enum_labels(db, enums: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    """``(schema, enum) -> labels in order`` (one query)."""
    enums = list(enums)
    labels: dict[tuple[str, str], list[str]] = {}
    if enums:
        params = {"schemas": [s for s, _ in enums], "names": [n for _, n in enums]}
        for schema, name, label in db.execute(sqlfiles.load("both/enum_labels"), params).fetchall():
            labels.setdefault((schema, name), []).append(label)
    return labels


def missing_labels(source: list[str], target: list[str]) -> list[tuple[str, str | None, str | None]]:
    """``(label, after, before)`` to add to the warehouse's enum so that it has every source label, in the source's
    order where the warehouse allows it (labels the source dropped stay in the warehouse: enums cannot lose one)."""
    have = list(target)
    added = []
    for i, label in enumerate(source):
        if label in have:
            continue
        after = next((source[j] for j in range(i - 1, -1, -1) if source[j] in have), None)
        before = None if after else next((source[j] for j in range(i + 1, len(source)) if source[j] in have), None)
        added.append((label, after, before))
        have.insert(have.index(after) + 1 if after else (have.index(before) if before else len(have)), label)
    return added


def add_enum_labels(db, source_labels: dict, target_labels: dict) -> list[str]:
    """``ALTER TYPE ... ADD VALUE`` for each source label the warehouse's kept enum lacks; return what was added."""
    added = []
    for (schema, name), labels in sorted(source_labels.items()):
        if (schema, name) not in target_labels:
            continue
        for label, after, before in missing_labels(labels, target_labels[(schema, name)]):
            statement = sql.SQL("ALTER TYPE {} ADD VALUE IF NOT EXISTS {}").format(
                sql.Identifier(schema, name), sql.Literal(label))
            if after is not None:
                statement = sql.SQL("{} AFTER {}").format(statement, sql.Literal(after))
            elif before is not None:
                statement = sql.SQL("{} BEFORE {}").format(statement, sql.Literal(before))
            db.execute(statement)
            added.append(f"{_display(schema, name)}.{label}")
    return added


# -- materialized views -----------------------------------------------------------------------

def matviews_to_refresh(relations: list[Relation], facts: SourceFacts, kept: Iterable[int]) -> list[int]:
    """Materialized views reading a kept table, directly or through views: their rows are computed after the
    incremental step. Returned in dependency order (a materialized view after those it reads)."""
    kinds = {r.oid: r.kind for r in relations}
    readers: dict[int, set[int]] = {}
    for view, read in facts.reads.items():
        for relation in read:
            readers.setdefault(relation, set()).add(view)
    affected: set[int] = set()
    stack = list(kept)
    while stack:
        for view in readers.get(stack.pop(), ()):
            if view not in affected:
                affected.add(view)
                stack.append(view)
    matviews = sorted((oid for oid in affected if kinds.get(oid) == "m"), key=lambda oid: oid)
    ordered: list[int] = []
    placed: set[int] = set()

    def place(oid: int, path: frozenset = frozenset()) -> None:
        if oid in placed or oid in path:
            return
        for read in sorted(_reads_through_views(oid, facts, kinds)):
            if read in affected and kinds.get(read) == "m":
                place(read, path | {oid})
        placed.add(oid)
        ordered.append(oid)

    for oid in matviews:
        place(oid)
    return ordered


def _reads_through_views(oid: int, facts: SourceFacts, kinds: dict[int, str]) -> set[int]:
    """Relations ``oid`` reads, looking through plain views."""
    seen, stack, result = set(), list(facts.reads.get(oid, ())), set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        result.add(current)
        if kinds.get(current) == "v":
            stack.extend(facts.reads.get(current, ()))
    return result


def refresh_matviews(db, views: list[list[str]]) -> dict[str, float]:
    """``REFRESH MATERIALIZED VIEW`` each ``[schema, name]`` in the given order, each committed; seconds per view."""
    import time

    timings = {}
    for schema, name in views:
        started = time.monotonic()
        db.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(schema, name)))
        db.commit()
        timings[_display(schema, name)] = round(time.monotonic() - started, 3)
    return timings
