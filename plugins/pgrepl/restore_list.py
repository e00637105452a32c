"""The restore list: which entries of a dump's table of contents ``pg_restore --use-list`` restores.

Pure functions over the text of ``pg_restore -l`` and facts read from the source catalog. Objects are matched to
their table by catalog identity (``pg_class``/``pg_constraint``/``pg_attrdef``... OIDs recorded in the dump), never
by substring: the seed's regular expressions also dropped ``answers-archive`` when ``answers`` was excluded, and
treated ``-`` and ``_`` alike so that knex's ``knowledge_elements_userid_index`` followed ``knowledge-elements``.
Here an index follows the table it is built on, whatever its name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: TOC entry kinds made of several words, longest first (from pg_dump's source)
MULTI_WORD_DESCS = sorted(
    [
        "TABLE DATA", "SEQUENCE SET", "SEQUENCE OWNED BY", "FK CONSTRAINT", "CHECK CONSTRAINT", "DEFAULT ACL",
        "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW", "INDEX ATTACH", "TABLE ATTACH", "ROW SECURITY",
        "FOREIGN TABLE", "FOREIGN DATA WRAPPER", "USER MAPPING", "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "PROCEDURAL LANGUAGE",
        "ACCESS METHOD", "EVENT TRIGGER", "LARGE OBJECT", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA",
        "SHELL TYPE", "DATABASE PROPERTIES", "OPERATOR CLASS", "OPERATOR FAMILY",
    ],
    key=len,
    reverse=True,
)

#: the multi-word kinds by their first word, longest first (one dictionary lookup per line instead of a scan)
_MULTI_WORD_BY_FIRST: dict[str, list[str]] = {}
for _desc in MULTI_WORD_DESCS:
    _MULTI_WORD_BY_FIRST.setdefault(_desc.split(" ", 1)[0], []).append(_desc)

#: kinds whose dumpId line carries no catalog id ("0 0") and whose tag names a sequence
SEQUENCE_NAMED = ("SEQUENCE SET", "SEQUENCE OWNED BY")

#: ``pg_extension``'s catalog oid: only an extension's owner (a superuser, as a rule) may comment on it
PG_EXTENSION = 3079

PRECREATED_SCHEMA = "schema created by the restore step"


@dataclass(frozen=True)
class TocEntry:
    """One line of ``pg_restore -l``."""

    line: str
    dump_id: int
    classid: int
    objid: int
    desc: str
    rest: str  # "<schema> <tag> <owner>" as printed (names are not quoted by pg_restore -l)


@dataclass
class SourceCatalog:
    """What the filter needs to know about the source database.

    :param owners: ``(catalog oid, object oid) -> oid of the table it belongs to`` for tables themselves, their
        indexes, constraints, defaults, triggers, rules, policies, extended statistics and owned sequences.
    :param sequences: ``(schema, sequence name) -> oid of the owning table`` (for SEQUENCE SET / OWNED BY lines,
        which carry no catalog id).
    :param tables: ``oid -> (schema, table name)`` of every table-like relation.
    :param references: ``(catalog oid, object oid) -> oid of the relation it references`` for FK constraints (the
        referenced table) and column defaults (a sequence of another table, as in ``nextval('answers_id_seq')``).
    """

    owners: dict[tuple[int, int], int] = field(default_factory=dict)
    references: dict[tuple[int, int], int] = field(default_factory=dict)
    sequences: dict[tuple[str, str], int] = field(default_factory=dict)
    tables: dict[int, tuple[str, str]] = field(default_factory=dict)


@dataclass
class KeptPlan:
    """What ``BACKUP_MODE`` means for tonight's restore (see :mod:`pgrepl.table_modes`); all OIDs are the source's.

    :param present: kept tables the warehouse has: none of their entries is restored.
    :param created: kept tables the warehouse lacks: the restore creates their structure (the dump has no rows of
        them), except their triggers (the incremental copy would fire them); the incremental step fills them.
    :param modes: ``oid -> "incremental" | "none"`` of every kept table.
    :param kept_objects: ``(classid, objid)`` of types, domain constraints and sequences the warehouse keeps with
        its kept tables (moved back by the swap): their entries are not restored.
    :param refresh_later: materialized views reading a kept table: their data entry is left out (refreshed after
        the incremental step).
    :param relations_by_name: ``(schema, name) -> oid`` for ``TABLE ATTACH`` lines, which carry no catalog id.
    :param partition_indexes: ``(schema, index name) -> (index oid, constraint oid)`` of partition indexes, for
        ``INDEX ATTACH`` lines.
    :param parents: ``partition -> parent table``.
    """

    present: set[int] = field(default_factory=set)
    created: set[int] = field(default_factory=set)
    modes: dict[int, str] = field(default_factory=dict)
    kept_objects: set[tuple[int, int]] = field(default_factory=set)
    refresh_later: set[int] = field(default_factory=set)
    relations_by_name: dict[tuple[str, str], int] = field(default_factory=dict)
    partition_indexes: dict[tuple[str, str], tuple[int, int | None]] = field(default_factory=dict)
    parents: dict[int, int] = field(default_factory=dict)


def _named(rest: str, names: dict[tuple[str, str], object]):
    """The value of ``names`` for the ``<schema> <name> [<owner>]`` printed by a line without catalog id (exact
    names; they may hold spaces, so each split is tried: one dictionary lookup each)."""
    candidates = [rest]
    if " " in rest:
        candidates.append(rest.rsplit(" ", 1)[0])  # without the owner
    for text in candidates:
        for i, char in enumerate(text):
            if char == " ":
                value = names.get((text[:i], text[i + 1:]))
                if value is not None:
                    return value
    return None


@dataclass
class RestoreList:
    """The filtered list plus why each dropped line was dropped."""

    kept: list[TocEntry]
    dropped: list[tuple[TocEntry, str]]

    def text(self) -> str:
        return "".join(entry.line + "\n" for entry in self.kept)

    def count(self, desc: str) -> int:
        return sum(1 for entry in self.kept if entry.desc == desc)


def parse_toc(text: str) -> list[TocEntry]:
    """Parse ``pg_restore -l`` output; comment lines (``;``) are skipped."""
    entries = []
    for raw in text.splitlines():
        line = raw.rstrip("\n")
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        head, sep, tail = line.partition("; ")
        if not sep:
            raise ValueError(f"unexpected restore-list line: {line!r}")
        parts = tail.split(" ", 2)
        if len(parts) < 3:
            raise ValueError(f"unexpected restore-list line: {line!r}")
        classid, objid, remainder = int(parts[0]), int(parts[1]), parts[2]
        first = remainder.split(" ", 1)[0]
        desc = next((d for d in _MULTI_WORD_BY_FIRST.get(first, ())
                     if remainder == d or remainder.startswith(d + " ")), first)
        rest = remainder[len(desc):].lstrip(" ")
        entries.append(TocEntry(line, int(head), classid, objid, desc, rest))
    return entries


def _named_sequence_owner(entry: TocEntry, catalog: SourceCatalog) -> int | None:
    """Owning table of the sequence named by a SEQUENCE SET / OWNED BY line (exact schema and name)."""
    return _named(entry.rest, catalog.sequences)


def _names_schema(rest: str, schema: str) -> bool:
    """A SCHEMA line prints ``- <name> <owner>``: exact name, owner optional."""
    prefix = f"- {schema}"
    return rest == prefix or (rest.startswith(prefix + " ") and " " not in rest[len(prefix) + 1:])


def _comment_reason(
    entry: TocEntry,
    by_id: Mapping[int, TocEntry],
    reasons: Mapping[int, str | None],
    restore_comments: bool,
    dependencies: Mapping[int, Sequence[int]] | None,
) -> str | None:
    """Why a COMMENT entry is left out (None: restored). It follows the object it describes.

    A COMMENT line carries no catalog id (``0 0``); its object is the entry it depends on in ``toc.dat``.
    """
    if not restore_comments:
        return "RESTORE_COMMENTS=false"
    if dependencies is None:
        return "comment's object unknown (the dump's dependencies were not read)"
    targets = [by_id[dep] for dep in dependencies.get(entry.dump_id, ()) if dep in by_id]
    if len(targets) != 1:
        # the public schema has no entry of its own in a pg_dump 15+ archive: its comment lands here
        return "comment on an object the dump does not create (such as schema public)"
    target = targets[0]
    if target.classid == PG_EXTENSION:
        return "comment on an extension (needs the extension's owner)"
    if target.desc == "SCHEMA" and _names_schema(target.rest, "public"):
        return "comment on schema public (needs the schema's owner)"
    target_reason = reasons.get(target.dump_id)
    if target_reason and not (target.desc == "SCHEMA" and target_reason == PRECREATED_SCHEMA):
        return f"its {target.desc} is not restored: {target_reason}"
    return None


def filter_restore_list(
    toc_text: str,
    catalog: SourceCatalog,
    excluded_tables: set[int],
    restore_fk_constraints: bool = True,
    precreated_schemas: set[str] | None = None,
    restore_comments: bool = True,
    dependencies: Mapping[int, Sequence[int]] | None = None,
    plan: KeptPlan | None = None,
) -> RestoreList:
    """Choose what ``pg_restore --use-list`` restores.

    Dropped: FK constraints when ``restore_fk_constraints`` is false; every object that belongs to a kept table
    the warehouse has (``excluded_tables``, the tables of ``BACKUP_MODE``); the triggers of a kept table the
    restore creates; types, functions and sequences the warehouse keeps with its kept tables; the data of
    materialized views that read a kept table (refreshed after the incremental step); FK constraints between a
    kept table and a replaced one, either way (the replaced side is the dump's snapshot, the kept side gets its
    rows after the restore, and a kept table's FK to a replaced one would go with the old table on the next
    night), and from a kept table to a ``none`` one (which never gets rows); ``SCHEMA`` entries of schemas the
    restore step creates itself.

    A COMMENT follows the object it describes (found through ``dependencies``, by dump id, then by that entry's
    catalog id): restored with it, left out with it. Always left out: every COMMENT when ``restore_comments`` is
    false or ``dependencies`` is unknown; comments on extensions (``pg_extension`` objects) and on schema
    ``public``, which a warehouse role that is not a superuser may not own; comments whose object the dump does
    not list.

    :param toc_text: output of ``pg_restore -l`` on the dump.
    :param catalog: ownership facts read from the source (:class:`SourceCatalog`).
    :param excluded_tables: OIDs (in the source) of the kept tables the warehouse has (left alone).
    :param restore_fk_constraints: the ``RESTORE_FK_CONSTRAINTS`` setting.
    :param precreated_schemas: schema names created before the restore.
    :param restore_comments: the ``RESTORE_COMMENTS`` setting.
    :param dependencies: ``{dump id: dump ids it depends on}`` from the dump's ``toc.dat``
        (:func:`pgrepl.toc.read_dependencies`); without it no COMMENT is restored.
    :param plan: the rest of ``BACKUP_MODE``'s consequences (:class:`KeptPlan`).
    """
    precreated = precreated_schemas or set()
    plan = plan or KeptPlan()
    present = set(excluded_tables) | plan.present
    kept_tables = present | plan.created
    # partition indexes and constraints that ATTACH PARTITION clones from the kept parent's own
    cloned: set[tuple[int, int]] = set()
    for index_oid, constraint_oid in plan.partition_indexes.values():
        cloned.add((1259, index_oid))
        if constraint_oid:
            cloned.add((2606, constraint_oid))

    def name_of(oid: int | None) -> str:
        schema, name = catalog.tables.get(oid, ("?", "?"))
        return f"{schema}.{name}"

    entries = parse_toc(toc_text)
    reasons: dict[int, str | None] = {}
    for entry in entries:
        reason = None
        if entry.desc == "COMMENT":
            continue  # decided below, once its object's fate is known
        elif entry.desc == "FK CONSTRAINT" and not restore_fk_constraints:
            reason = "RESTORE_FK_CONSTRAINTS=false"
        elif entry.desc == "SCHEMA" and any(_names_schema(entry.rest, schema) for schema in precreated):
            reason = PRECREATED_SCHEMA
        elif (entry.classid, entry.objid) in plan.kept_objects:
            reason = "kept in the warehouse with the tables of BACKUP_MODE that use it"
        elif entry.desc == "MATERIALIZED VIEW DATA" and entry.objid in plan.refresh_later:
            reason = "reads a kept table: refreshed after the incremental step"
        else:
            if entry.desc in SEQUENCE_NAMED and entry.objid == 0:
                owner = _named_sequence_owner(entry, catalog)
            elif entry.desc == "TABLE DATA":
                owner = catalog.owners.get((1259, entry.objid), entry.objid)
            elif entry.desc == "TABLE ATTACH" and entry.objid == 0:
                owner = _named(entry.rest, plan.relations_by_name)
            elif entry.desc == "INDEX ATTACH" and entry.objid == 0:
                found = _named(entry.rest, plan.partition_indexes)
                owner = catalog.owners.get((1259, found[0])) if found else None
            else:
                owner = catalog.owners.get((entry.classid, entry.objid))
            if owner is not None and owner in present:
                reason = f"belongs to kept table {name_of(owner)}"
            elif owner is not None and owner in plan.created:
                new_partition_of_kept = plan.parents.get(owner) in present
                if entry.desc == "TRIGGER":
                    reason = f"trigger of kept table {name_of(owner)}, created tonight: the incremental copy would fire it"
                elif new_partition_of_kept and (
                        entry.desc == "INDEX ATTACH" or (entry.classid, entry.objid) in cloned):
                    reason = f"ATTACH PARTITION of {name_of(owner)} to its kept parent builds it"
            if reason is None and entry.desc == "FK CONSTRAINT":
                referenced = catalog.references.get((entry.classid, entry.objid))
                referenced_table = catalog.owners.get((1259, referenced), referenced) if referenced else None
                if owner in kept_tables or referenced_table in kept_tables:
                    allowed = owner in plan.created and referenced_table in kept_tables and (
                        plan.modes.get(referenced_table) == "incremental" or plan.modes.get(owner) == "none")
                    if not allowed and owner not in kept_tables:
                        reason = (f"references kept table {name_of(referenced_table)} (its rows arrive after the "
                                  "restore, if ever)")
                    elif not allowed:
                        reason = (f"FK of kept table {name_of(owner)} to {name_of(referenced_table)}, copied in full "
                                  "or kept empty (their rows come at different times)")
        reasons[entry.dump_id] = reason
    by_id = {entry.dump_id: entry for entry in entries if entry.desc != "COMMENT"}
    kept: list[TocEntry] = []
    dropped: list[tuple[TocEntry, str]] = []
    for entry in entries:
        if entry.desc == "COMMENT":
            reason = _comment_reason(entry, by_id, reasons, restore_comments, dependencies)
        else:
            reason = reasons[entry.dump_id]
        if reason:
            dropped.append((entry, reason))
        else:
            kept.append(entry)
    return RestoreList(kept, dropped)
