"""Facts read from the source catalog: relations, what belongs to which table, row counts."""

from __future__ import annotations

from dataclasses import dataclass
from psycopg import sql

from pgrepl import sqlfiles
from pgrepl.restore_list import SourceCatalog
from pgrepl.settings import TableName

@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # pg_class.relkind
    owner_table: int | None  # for sequences: the table owning it

    @property
    def is_table(self) -> bool:
        return self.kind in ("r", "p")


def read_relations(db) -> list[Relation]:
    """Every user relation of the database behind ``db`` (a psycopg connection)."""
    return [Relation(*row) for row in db.execute(sqlfiles.load("source/relations")).fetchall()]


def read_source_catalog(db, relations: list[Relation] | None = None) -> SourceCatalog:
    """The :class:`SourceCatalog` of the database behind ``db``."""
    relations = read_relations(db) if relations is None else relations
    owners = {(classid, objid): table for classid, objid, table in db.execute(sqlfiles.load("source/object_owners")).fetchall()}
    references = {
        (classid, objid): table
        for classid, objid, table in db.execute(sqlfiles.load("source/object_references")).fetchall()
    }
    return SourceCatalog(
        owners=owners,
        references=references,
        sequences={(r.schema, r.name): r.owner_table for r in relations if r.kind == "S" and r.owner_table},
        tables={r.oid: (r.schema, r.name) for r in relations if r.kind in ("r", "p", "f", "m", "v")},
    )


def resolve_tables(relations: list[Relation], names: list[TableName]) -> tuple[dict[TableName, int], list[TableName]]:
    """Match ``BACKUP_MODE`` names to source tables: ``({name: oid}, [names the source lacks])``."""
    by_name = {(r.schema, r.name): r.oid for r in relations if r.is_table}
    found, missing = {}, []
    for name in names:
        oid = by_name.get((name.schema, name.name))
        if oid is None:
            missing.append(name)
        else:
            found[name] = oid
    return found, missing


def dumped_schemas(relations: list[Relation]) -> list[str]:
    """Schemas holding at least one relation of the source (the ones the restore swaps)."""
    return sorted({r.schema for r in relations})


def count_rows(db, tables: list[tuple[str, str]]) -> dict[str, int]:
    """Exact ``count(*)`` of each table, keyed ``schema.table`` (in the caller's transaction/snapshot)."""
    counts = {}
    for schema, name in tables:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
        counts[f"{schema}.{name}"] = db.execute(query).fetchone()[0]
    return counts
