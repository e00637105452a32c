"""Tonight's copy is built beside the live warehouse, then switched in with one short transaction.

Readers keep yesterday's warehouse, complete, until the switch commits, and tonight's from then on:

1. **Staging DDL** (``build_staging_ddl``): the restore list's definitions (pre-data, sequence values, post-data on
   empty tables) are run by the warehouse in an uncommitted transaction where the live schema ``S`` is renamed
   ``_pgrepl_live_S`` for a moment and a new ``S`` takes its name; at its end the new ``S`` is renamed
   ``_pgrepl_stage_S`` and the live one gets its name back. ``pg_restore`` writes every statement (it cannot
   target another schema; the rename makes its names land in staging) and readers, who only see committed catalog
   rows, never notice. The types, functions and sequences kept with ``BACKUP_MODE`` tables visit the new ``S`` in
   that transaction so that tonight's tables can use them. Batches of :data:`DDL_BATCH` entries, one transaction
   each, keep the lock footprint bounded.
2. **Staging archive**: ``pg_dump`` of the staging schemas from the warehouse gives the same objects with staging
   names, in an archive ``pg_restore --jobs`` can run in parallel. The staging schemas are renamed
   ``_pgrepl_shadow_S`` (dropped later) and each table's data file in that archive is replaced by a link to the
   source dump's data file (same COPY column list, checked).
3. ``pg_restore --jobs`` of that archive: tables, rows, indexes as soon as their rows are in, constraints, foreign
   keys — into ``_pgrepl_stage_S``, nothing live touched.
4. **The switch** (:func:`switch`), one transaction with ``lock_timeout``: the relations the restore does not replace
   (kept tables, learning content, users' tables), kept types/functions and extensions move from ``S`` into
   ``_pgrepl_stage_S``; ``S`` is renamed ``_pgrepl_prev_S`` and ``_pgrepl_stage_S`` takes the name ``S``; the few
   definitions that read kept tables (views, new partitions) are created. Renames lock no table; moving a kept
   table waits for its readers (``SWITCH_LOCK_TIMEOUT``, ``SWITCH_RETRIES``, ``SWITCH_CANCEL_READERS``).
5. **Cleanup** (:func:`finish_cleanup`): yesterday's schemas and the shadows are dropped in batches of
   :data:`DROP_BATCH` relations, one transaction each, recorded in ``_pgrepl.cleanup`` so that an interrupted cleanup
   is finished by the next attempt. A failed night drops its staging schemas the same way; the live warehouse was
   never touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from pgrepl import sqlfiles, swap, user_views
from pgrepl.errors import PgreplError
from pgrepl.toc import TocEntry, read_entries, rewrite_entries

log = logging.getLogger(__name__)

STAGE_PREFIX = "_pgrepl_stage_"
SHADOW_PREFIX = "_pgrepl_shadow_"
LIVE_PREFIX = "_pgrepl_live_"
#: TOC entries per staging-DDL transaction (each CREATE locks its new relation, its TOAST table, its sequences)
DDL_BATCH = 400
#: relations dropped per cleanup transaction (each DROP locks the relation, its indexes, TOAST table, sequences)
DROP_BATCH = 200
#: kinds of TOC entries that carry rows: loaded by ``pg_restore`` of the staging archive, never in the DDL step
DATA_DESCS = ("TABLE DATA", "BLOBS", "BLOB", "LARGE OBJECT", "BLOB METADATA")


class SwitchBlocked(PgreplError, RuntimeError):
    """Readers held a lock the switch needs past every retry; nothing was switched. Retryable."""

    retryable = True


def _prefixed(prefix: str, schema: str) -> str:
    name = prefix + schema
    if len(name.encode()) <= 63:
        return name
    return prefix + hashlib.sha1(schema.encode()).hexdigest()[:16]


def stage_name(schema: str) -> str:
    return _prefixed(STAGE_PREFIX, schema)


def shadow_name(schema: str) -> str:
    return _prefixed(SHADOW_PREFIX, schema)


def live_name(schema: str) -> str:
    return _prefixed(LIVE_PREFIX, schema)


#: one definition of "this schema exists" for the staging and the swap
_exists = swap._schema_exists


def _rename(db, old: str, new: str) -> None:
    db.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


# -- cleanup --------------------------------------------------------------------------------------

def record_cleanup(db, schema: str, kind: str, run_id: str | None) -> None:
    """Remember (inside the caller's transaction) that ``schema`` is to be dropped: ``staging``, ``shadow`` or
    ``previous``."""
    db.execute(
        "INSERT INTO _pgrepl.cleanup (schema_name, kind, run_id) VALUES (%s, %s, %s) "
        "ON CONFLICT (schema_name) DO UPDATE SET kind = EXCLUDED.kind, run_id = EXCLUDED.run_id, recorded_at = now()",
        (schema, kind, run_id),
    )


def forget_cleanup(db, schema: str) -> None:
    db.execute("DELETE FROM _pgrepl.cleanup WHERE schema_name = %s", (schema,))


def pending_cleanup(db, kinds: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """``(schema, kind)`` recorded for dropping, oldest first."""
    swap.ensure_state(db)
    rows = db.execute("SELECT schema_name, kind FROM _pgrepl.cleanup ORDER BY recorded_at, schema_name").fetchall()
    db.commit()
    return [(s, k) for s, k in rows if kinds is None or k in kinds]


def _set_lock_timeout(db, seconds: float | None) -> None:
    if seconds:
        db.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(seconds * 1000)}ms")))


#: relations of a schema, leaves of partition trees first, then the others (owned sequences and indexes go with
#: their table)
_DROPPABLE = """
SELECT c.oid, c.relkind, c.relname
  FROM pg_class c
 WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s)
   AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                     AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> c.oid AND d.deptype IN ('a', 'i'))
 ORDER BY (c.relkind = 'r' AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid)) DESC,
          c.relkind IN ('v', 'm') DESC, c.oid
 LIMIT %(limit)s
"""

_DROP_KIND = {"r": "TABLE", "p": "TABLE", "f": "FOREIGN TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW",
              "S": "SEQUENCE"}


def drop_schema_in_batches(db, schema: str, batch_size: int = DROP_BATCH, lock_timeout: float | None = None,
                           on_batch=None) -> int:
    """Drop ``schema``: its relations ``batch_size`` at a time (one transaction each), then the schema with what is
    left (types, functions). Resumable: each committed batch stays done. Returns the relations dropped."""
    dropped = 0
    while _exists(db, schema):
        rows = db.execute(_DROPPABLE, {"schema": schema, "limit": batch_size}).fetchall()
        db.rollback()
        with db.transaction():
            _set_lock_timeout(db, lock_timeout)
            if rows:
                statements = [
                    sql.SQL("DROP {} IF EXISTS {} CASCADE").format(sql.SQL(_DROP_KIND[kind]),
                                                                   sql.Identifier(schema, name))
                    for _oid, kind, name in rows
                ]
                db.execute(sql.SQL("; ").join(statements))
            else:
                db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        dropped += len(rows)
        if on_batch is not None:
            on_batch(schema, dropped)
    return dropped


def finish_cleanup(db, batch_size: int = DROP_BATCH, on_batch=None, lock_timeout: float | None = None,
                   kinds: tuple[str, ...] | None = None, retries: int = 2) -> dict:
    """Drop every schema recorded in ``_pgrepl.cleanup`` (of ``kinds``), batch by batch. A batch that cannot get
    its locks within ``lock_timeout`` (a reader still holds one of yesterday's tables) is tried ``retries`` more
    times, then left for the next attempt with a warning. Returns ``{"dropped": {schema: relations},
    "pending": [schema], "lost": [objects outside those schemas that went with them]}``."""
    db.rollback()
    result: dict = {"dropped": {}, "pending": [], "lost": []}
    for schema, kind in pending_cleanup(db, kinds):
        if kind == "previous" and _exists(db, schema):
            result["lost"] += [r[0] for r in db.execute(sqlfiles.load("warehouse/lost_dependents"),
                                                        {"aside": schema}).fetchall()]
            db.rollback()
        for attempt in range(retries + 1):
            try:
                result["dropped"][schema] = drop_schema_in_batches(db, schema, batch_size, lock_timeout, on_batch)
                break
            except psycopg.errors.LockNotAvailable:
                db.rollback()
                if attempt == retries:
                    log.warning("schema %s is still in use (a reader holds one of its tables): it is dropped by the "
                                "next attempt", schema)
                    result["pending"].append(schema)
        else:
            continue
        forget_cleanup(db, schema)
        db.commit()
    return result


# -- disk -----------------------------------------------------------------------------------------

class WarehouseDiskFull(PgreplError, RuntimeError):
    """The warehouse's disk cannot take tonight's staging copy. No retry: space does not free itself."""

    retryable = False


def record_staging_size(db, schemas: list[str], run_id: str) -> int:
    """Remember the size of tonight's staging schemas (tables, indexes, TOAST), before the switch; commits."""
    size = db.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c "
        "WHERE c.relnamespace IN (SELECT oid FROM pg_namespace WHERE nspname = ANY(%s)) AND c.relkind IN ('r', 'm')",
        ([stage_name(s) for s in schemas],)).fetchone()[0]
    db.execute("INSERT INTO _pgrepl.staging_size (id, bytes, run_id) VALUES (1, %s, %s) ON CONFLICT (id) DO UPDATE "
               "SET bytes = EXCLUDED.bytes, run_id = EXCLUDED.run_id, recorded_at = now()", (size, run_id))
    db.commit()
    return size


def check_warehouse_space(db) -> dict:
    """Before the night: the warehouse's disk must hold another copy of the replaced tables (the last night's
    staging size). Checked where the warehouse's data directory is visible from here (a warehouse on this machine,
    a role allowed to read ``data_directory``); otherwise the figure is logged for whoever watches the disk.
    Returns ``{"needed_bytes", "free_bytes"}`` (``None`` when unknown)."""
    import shutil

    swap.ensure_state(db)
    row = db.execute("SELECT bytes, run_id FROM _pgrepl.staging_size").fetchone()
    db.rollback()
    if row is None:
        return {"needed_bytes": None, "free_bytes": None}
    needed, last_run = row
    try:
        data_dir = db.execute("SELECT current_setting('data_directory')").fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        data_dir = None
    db.rollback()
    if not data_dir or not os.path.isdir(data_dir):
        log.info("the warehouse needs about %.1f GB free for tonight's staging copy (the size of %s's); its disk is "
                 "not visible from here", needed / 1e9, last_run)
        return {"needed_bytes": needed, "free_bytes": None}
    free = shutil.disk_usage(data_dir).free
    if free < needed:
        raise WarehouseDiskFull(
            f"the warehouse's disk ({data_dir}) has {free / 1e9:.1f} GB free but tonight's staging copy needs about "
            f"{needed / 1e9:.1f} GB (the size of {last_run}'s): free space there before the night (nothing changed)")
    return {"needed_bytes": needed, "free_bytes": free}


# -- staging DDL ----------------------------------------------------------------------------------

_RESTRICT = re.compile(r"^\\(un)?restrict \S+$")
#: session settings of pg_restore's script that would undo the caller's bounds
_SCRIPT_RESETS = {"SET lock_timeout = 0;", "SET statement_timeout = 0;", "SET idle_in_transaction_session_timeout = 0;"}


def restore_sql(pg_restore: str, dump_dir: Path, list_file: Path) -> str:
    """The SQL ``pg_restore`` writes for the entries of ``list_file`` (its psql-only lines removed)."""
    result = subprocess.run([pg_restore, "--no-owner", "--no-privileges", f"--use-list={list_file}", "--file=-",
                             str(dump_dir)], capture_output=True, text=True)
    if result.returncode != 0:
        raise PgreplError(f"pg_restore could not write the definitions of {list_file.name}: "
                          f"{result.stderr.strip()[-800:]}", retryable=False)
    return "\n".join(line for line in result.stdout.splitlines()
                     if not _RESTRICT.match(line) and line not in _SCRIPT_RESETS)


#: what pg_restore's script sets for the session; put back after running it (not ``RESET ALL``: the session's
#: application_name names the run holding the warehouse lock)
_SCRIPT_SETTINGS = ("search_path", "check_function_bodies", "xmloption", "client_min_messages", "row_security",
                    "default_tablespace", "default_table_access_method")


def reset_script_settings(db) -> None:
    """Undo the session settings of a ``pg_restore`` script run on ``db`` (commits)."""
    db.rollback()
    for name in _SCRIPT_SETTINGS:
        db.execute(sql.SQL("RESET {}").format(sql.Identifier(name)))
    db.commit()


def run_script_sql(db, statements: str) -> None:
    """Run a ``pg_restore`` script in one transaction of its own (commits), then undo its session settings."""
    db.rollback()
    try:
        with db.transaction():
            db.execute(statements)
    finally:
        reset_script_settings(db)


@dataclass
class KeptObjects:
    """What stays in the live schemas: visits the new schema during the staging DDL (types, functions, sequences),
    moves into it at the switch (with the kept tables)."""

    types: dict[str, dict[str, str]] = field(default_factory=dict)  # schema -> {type: typtype}
    functions: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # schema -> [(name, identity args)]
    sequences: dict[str, set[str]] = field(default_factory=dict)  # schema -> names of kept unowned sequences


def _visiting_objects(db, schema: str, from_schema: str, kept: KeptObjects) -> list[tuple[str, int]]:
    types = kept.types.get(schema, {})
    functions = kept.functions.get(schema, [])
    rows: list[tuple[str, int]] = []
    if types or functions:
        rows += db.execute(sqlfiles.load("warehouse/movable_objects"), {
            "schema": from_schema, "types": list(types), "functions": [n for n, _ in functions],
            "arguments": [a for _, a in functions]}).fetchall()
    sequences = sorted(kept.sequences.get(schema, ()))
    if sequences:
        rows += [("s", oid) for (oid,) in db.execute(
            "SELECT c.oid FROM pg_class c WHERE c.relkind = 'S' AND c.relname = ANY(%s) AND c.relnamespace = "
            "(SELECT oid FROM pg_namespace WHERE nspname = %s)", (sequences, from_schema)).fetchall()]
    return rows


def _move_objects(db, rows: list[tuple[str, int]], to_schema: str) -> None:
    for kind, oid in rows:
        if kind == "t":
            swap._move_type(db, oid, to_schema)
        elif kind == "f":
            swap._move_function(db, oid, to_schema)
        else:
            swap._move_relation(db, oid, to_schema)


def _movable_extensions(db, schema: str) -> list[str]:
    return [ext for ext, relocatable in db.execute(sqlfiles.load("warehouse/schema_extensions"), (schema,)).fetchall()
            if relocatable]


def _move_extensions(db, names: list[str], to_schema: str) -> tuple[list[str], list[str]]:
    """Move each extension into ``to_schema`` where the role may (it must own every object of the extension, which
    a trusted extension's creator does not); ``(moved, refused)``."""
    moved, refused = [], []
    for ext in names:
        try:
            with db.transaction():
                db.execute(sql.SQL("ALTER EXTENSION {} SET SCHEMA {}").format(sql.Identifier(ext),
                                                                           sql.Identifier(to_schema)))
            moved.append(ext)
        except psycopg.errors.InsufficientPrivilege:
            refused.append(ext)
    return moved, refused


def _recreate_extensions(db, names: list[str], schema: str, to_schema: str) -> None:
    """Extensions the role cannot move (trusted ones it created: their objects belong to a superuser) are created
    again in ``to_schema`` when nothing else uses them; otherwise :class:`swap.SwapError` says what to do."""
    for ext in names:
        try:
            with db.transaction():
                version = db.execute("SELECT extversion FROM pg_extension WHERE extname = %s", (ext,)).fetchone()[0]
                db.execute(sql.SQL("DROP EXTENSION {} RESTRICT").format(sql.Identifier(ext)))
                db.execute(sql.SQL("CREATE EXTENSION {} WITH SCHEMA {} VERSION {}").format(
                    sql.Identifier(ext), sql.Identifier(to_schema), sql.Literal(version)))
        except psycopg.errors.DependentObjectsStillExist as exc:
            raise swap.SwapError(
                f"extension {ext} in schema {schema} cannot move with the schema (the warehouse role does not own its "
                f"objects) and is in use ({str(exc).splitlines()[0]}): as a superuser, move it out of the replicated "
                f"schema once, e.g. CREATE SCHEMA extensions; ALTER EXTENSION {ext} SET SCHEMA extensions"
            ) from None


def run_in_staging(db, schemas: list[str], kept: KeptObjects, statements: str, run_id: str, first: bool) -> None:
    """Run ``statements`` (written for the live schema names) so that they land in the staging schemas; one
    transaction, committed. Readers see none of the renames (they are never committed)."""
    db.rollback()
    try:
        _run_in_staging(db, schemas, kept, statements, run_id, first)
    finally:
        reset_script_settings(db)


def _run_in_staging(db, schemas: list[str], kept: KeptObjects, statements: str, run_id: str, first: bool) -> None:
    with db.transaction():
        visiting: dict[str, tuple[list, list]] = {}
        for schema in schemas:
            live, stage = live_name(schema), stage_name(schema)
            if _exists(db, schema):
                _rename(db, schema, live)
                visiting[schema] = ([], [])
            if first:
                db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                record_cleanup(db, stage, "staging", run_id)
            else:
                _rename(db, stage, schema)
            if schema in visiting:
                objects = _visiting_objects(db, schema, live, kept)
                _move_objects(db, objects, schema)
                extensions, _refused = _move_extensions(db, _movable_extensions(db, live), schema)
                visiting[schema] = (objects, extensions)
        if statements.strip():
            db.execute(statements)
        for schema in schemas:
            live, stage = live_name(schema), stage_name(schema)
            if schema in visiting:
                objects, extensions = visiting[schema]
                _move_objects(db, objects, live)
                _move_extensions(db, extensions, live)
            _rename(db, schema, stage)
            if schema in visiting:
                _rename(db, live, schema)


def deferred_entries(list_ids: list[int], entries: list[TocEntry], kept_table_ids: set[int]) -> set[int]:
    """Dump ids of the listed entries that read a kept table the warehouse has, directly or through other entries
    (views, materialized views, new partitions of a kept parent): created at the switch, once the kept tables are in
    the new schema. Linear in the number of entries."""
    dependents: dict[int, list[int]] = {}
    for entry in entries:
        for dep in entry.deps:
            dependents.setdefault(dep, []).append(entry.dump_id)
    seen: set[int] = set()
    todo = list(kept_table_ids)
    while todo:
        for child in dependents.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    wanted = set(list_ids)
    return seen & wanted


_IDENT = r'(?:"(?:[^"]|"")*"|[^".\s(]+)'
_COPY = re.compile(rf"^COPY ({_IDENT})\.({_IDENT}) (.*)$", re.S)


def copy_columns(copy_stmt: str | None) -> str | None:
    """``(a, "B") FROM stdin;`` of ``COPY schema.table (a, "B") FROM stdin;`` (pg_dump's own quoting)."""
    match = _COPY.match(copy_stmt or "")
    return match.group(3).strip() if match else None


@dataclass
class LinkedData:
    linked: int = 0
    bytes: int = 0
    #: ``(staging schema, table, source data file, column list)`` loaded by COPY after pg_restore (column order
    #: differs, e.g. an inheritance child whose parent gained a column)
    by_copy: list[tuple[str, str, Path, str]] = field(default_factory=list)


def _data_file(dump_dir: Path, filename: str) -> Path | None:
    for candidate in (dump_dir / filename, dump_dir / (filename + ".gz")):
        if candidate.exists():
            return candidate
    return None


_FROM_STDIN = re.compile(r"FROM stdin;\s*$")

#: the primary keys and unique constraints of plain tables in the staging schemas, with their index's definition
_UNIQUE_CONSTRAINTS = """
SELECT c.oid, pg_get_indexdef(c.conindid), n.nspname, t.relname, c.conname, c.contype, c.condeferrable,
       c.condeferred
  FROM pg_constraint c
  JOIN pg_class t ON t.oid = c.conrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
 WHERE n.nspname = ANY(%s) AND c.contype IN ('p', 'u') AND c.conparentid = 0
   AND t.relkind = 'r' AND NOT t.relispartition
"""


def unique_constraint_builds(db, schemas: list[str]) -> dict[int, str]:
    """``{constraint oid: SQL}`` for each primary key and unique constraint of a plain table in the staging
    ``schemas``: its unique index built like any other index, then the constraint attached to it.

    ``ALTER TABLE ... ADD PRIMARY KEY`` takes an ACCESS EXCLUSIVE lock, so ``pg_restore`` runs it alone on its table,
    after or before the table's other indexes: on a big table that is one more step in a row. ``CREATE UNIQUE INDEX``
    takes the same SHARE lock as the other index builds and runs beside them; ``ADD CONSTRAINT ... USING INDEX``
    then only records the constraint (its own short transaction: ``COMMIT`` in between, so no session holds a lock
    while it waits for another, and two such entries of one table can never deadlock). Same index, same name, same
    constraint (deferrable attributes kept) as pg_dump's statement. Partitioned tables and partitions keep pg_dump's
    statement (their indexes are attached to the parent's)."""
    builds = {}
    for oid, indexdef, schema, table, name, kind, deferrable, deferred in db.execute(
            _UNIQUE_CONSTRAINTS, (schemas,)).fetchall():
        attach = sql.SQL("ALTER TABLE ONLY {} ADD CONSTRAINT {} {} USING INDEX {}{}").format(
            sql.Identifier(schema, table), sql.Identifier(name),
            sql.SQL("PRIMARY KEY" if kind == "p" else "UNIQUE"), sql.Identifier(name),
            sql.SQL(" DEFERRABLE" + (" INITIALLY DEFERRED" if deferred else "") if deferrable else ""))
        builds[oid] = f"{indexdef};\nCOMMIT;\n{attach.as_string(db)};\n"
    db.rollback()
    return builds


#: put before an FK CONSTRAINT entry's statement (see :func:`tune_archive`)
MERGE_FK_CHECK = "SET LOCAL enable_hashjoin = off;\n"


def tune_archive(stage_dir: Path, unique_builds: dict[int, str], freeze: bool) -> dict[str, int]:
    """Rewrite the staging archive's ``toc.dat`` for a parallel ``pg_restore`` (``--jobs`` > 1); returns how many
    entries of each kind changed.

    - ``freeze``: every COPY becomes ``COPY ... FROM stdin WITH (FREEZE)``. A parallel ``pg_restore`` loads each
      table it created in the same run as ``BEGIN; TRUNCATE TABLE ONLY t; COPY ...; COMMIT``, exactly when
      PostgreSQL allows FREEZE: the rows are written frozen and their pages marked all-visible. Every later pass
      over tonight's tables (index builds, FK validations, the readers' queries) then skips per-row visibility
      checks and no longer rewrites each page to set hint bits, and autovacuum has nothing to freeze. Measured on
      the seed's data at scale 3: an FK check over 6 M rows 1.6 s -> 0.4 s. (A serial restore does not truncate
      first: FREEZE would be refused there.)
    - ``unique_builds`` (:func:`unique_constraint_builds`): each of those CONSTRAINT entries becomes an INDEX entry
      running that SQL, so ``pg_restore`` schedules it beside the table's other index builds (it keeps only ALTER
      TABLE entries of one table apart), while everything that depends on the constraint still waits for it.
    - every FK CONSTRAINT entry runs with ``SET LOCAL enable_hashjoin = off`` (its statement is one implicit
      transaction): the validation query (``fk LEFT JOIN pk ... WHERE pk IS NULL``) becomes a merge anti-join over
      two sorted inputs instead of a hash anti-join whose table of the referenced keys misses the CPU caches at
      every probe. Measured on the seed's data at scale 3 (6 M rows each side, same query, same work_mem):
      3.6–3.8 s → 1.3 s; 600 k referenced keys 1.6–1.7 s → 0.8 s; 300 k 1.1 s → 0.3 s. The setting reverts with
      the statement; nothing else pg_restore runs (materialized views' queries, say) is affected.
    """
    changed = {"frozen_copies": 0, "unique_indexes_beside": 0, "fk_checks_merged": 0}

    def rewrite(entry: TocEntry) -> dict | None:
        if freeze and entry.desc == "TABLE DATA" and entry.copy_stmt:
            changed["frozen_copies"] += 1
            return {"copy_stmt": _FROM_STDIN.sub("FROM stdin WITH (FREEZE);\n", entry.copy_stmt)}
        if entry.desc == "CONSTRAINT" and entry.catalog_oid in unique_builds:
            changed["unique_indexes_beside"] += 1
            return {"desc": "INDEX", "defn": unique_builds[entry.catalog_oid]}
        if entry.desc == "FK CONSTRAINT" and entry.defn:
            changed["fk_checks_merged"] += 1
            return {"defn": MERGE_FK_CHECK + entry.defn}
        return None

    toc = stage_dir / "toc.dat"
    toc.write_bytes(rewrite_entries(toc.read_bytes(), rewrite)[0])
    return changed


def _complete(path: Path) -> bool:
    """Whether a plain data file ends with the COPY end marker pg_dump writes last."""
    from pgrepl.fullcopy.row_counts import ends_with_marker  # pgrepl.fullcopy imports this module

    return ends_with_marker(path)


def link_data_files(source_dir: Path, source_entries: list[TocEntry], stage_dir: Path,
                    stage_entries: list[TocEntry], schemas: list[str]) -> LinkedData:
    """Point each table's data file of the staging archive at the source dump's file for the same table."""
    stage_to_live = {stage_name(s): s for s in schemas}
    source = {(e.namespace, e.tag): e for e in source_entries if e.desc == "TABLE DATA" and e.filename}
    result = LinkedData()
    for entry in stage_entries:
        if entry.desc != "TABLE DATA" or not entry.filename or entry.namespace not in stage_to_live:
            continue
        origin = source.get((stage_to_live[entry.namespace], entry.tag))
        if origin is None:
            continue  # a kept table created tonight: empty, filled by the incremental step
        src = _data_file(source_dir, origin.filename)
        if src is None:
            raise PgreplError(f"the dump has no data file {origin.filename} for {origin.namespace}.{origin.tag}: "
                              "clear the dump task too", retryable=False)
        if src.suffix != ".gz" and not _complete(src):
            raise PgreplError(f"dump data file {src} ({origin.namespace}.{origin.tag}) does not end with the COPY end "
                              "marker: the dump is incomplete (cut short, changed since, or its end lost in a machine "
                              "stop: pg_dump runs with --no-sync); the next attempt takes a fresh dump", retryable=True)
        target = stage_dir / entry.filename
        for stale in (target, stage_dir / (entry.filename + ".gz")):
            if stale.exists() or stale.is_symlink():
                stale.unlink()
        columns = copy_columns(origin.copy_stmt)
        if columns != copy_columns(entry.copy_stmt):
            target.write_bytes(b"\\.\n\n\n")  # pg_restore loads nothing; the rows come by COPY afterwards
            result.by_copy.append((entry.namespace, entry.tag, src, columns or ""))
            continue
        link = target if src.suffix != ".gz" else stage_dir / (entry.filename + ".gz")
        os.symlink(src, link)
        result.linked += 1
        result.bytes += src.stat().st_size
    return result


def _copy_rows(path: Path):
    """The rows of a COPY text data file, without its ``\\.`` end marker."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        pending = b""
        while chunk := f.read(1 << 20):
            data = pending + chunk
            cut = data.rfind(b"\n") + 1
            yield from _rows_until_marker(data[:cut])
            pending = data[cut:]
        if pending:
            yield from _rows_until_marker(pending)


def _rows_until_marker(block: bytes):
    marker = block.find(b"\\.\n")
    if marker == 0 or (marker > 0 and block[marker - 1:marker] == b"\n"):
        yield block[:marker]
        return
    yield block


def copy_by_columns(db, items: list[tuple[str, str, Path, str]]) -> dict[str, int]:
    """Load the data files of :attr:`LinkedData.by_copy` with the source's column list; rows per table."""
    counts = {}
    for schema, table, path, columns in items:
        column_list = columns.rsplit(" FROM ", 1)[0]
        with db.transaction(), db.cursor() as cur:
            with cur.copy(sql.SQL("COPY {} {} FROM STDIN").format(sql.Identifier(schema, table),
                                                                  sql.SQL(column_list))) as copy:
                for block in _copy_rows(path):
                    if block:
                        copy.write(block)
            counts[f"{schema}.{table}"] = cur.rowcount
    return counts


# -- switch ---------------------------------------------------------------------------------------

@dataclass
class SwitchResult:
    seconds: float
    attempts: int
    moved: dict[str, list[str]]
    cancelled: list[int] = field(default_factory=list)


_BLOCKERS = """
SELECT DISTINCT a.pid, a.usename, a.application_name, a.state, a.xact_start, left(a.query, 200)
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.granted AND l.locktype = 'relation' AND l.database = (SELECT oid FROM pg_database
                                                               WHERE datname = current_database())
   AND l.relation = ANY(%s::oid[]) AND l.pid <> pg_backend_pid()
 ORDER BY a.pid
"""



def _switch_once(db, run_id: str, replaced: dict[str, set[str]], kept: dict[str, set[str]], objects: KeptObjects,
                 deferred_sql: str, lock_timeout: float, touched: list[int], started: list) -> dict[str, list[str]]:
    moved_names: dict[str, list[str]] = {}
    db.rollback()
    with db.transaction():
        started.append(db.execute("SELECT now()").fetchone()[0])
        _set_lock_timeout(db, lock_timeout)
        users = user_views.save(db, run_id, replaced)
        for schema in sorted(replaced):
            stage, prev = stage_name(schema), swap.aside_name(schema)
            if not _exists(db, stage):
                raise swap.SwapError(f"staging schema {stage} is missing: the switch cannot proceed", retryable=True)
            existed = _exists(db, schema)
            moved: list[tuple[int, str]] = []
            visiting: list[tuple[str, int]] = []
            extensions: list[str] = []
            if existed:
                if _exists(db, prev):  # yesterday's, still read when the cleanup ran: out of the way, dropped later
                    old = _prefixed("_pgrepl_old_", hashlib.sha1(f"{prev}{time.time()}".encode()).hexdigest()[:8]
                                    + "_" + schema)
                    _rename(db, prev, old)
                    record_cleanup(db, old, "previous", run_id)
                moved = swap.staying_relations(db, schema, replaced.get(schema, set()) | users.get(schema, set()),
                                 kept.get(schema, set()))
                touched.extend(oid for oid, _ in moved)
                for oid, _name in moved:
                    swap._move_relation(db, oid, stage)
                visiting = [(k, o) for k, o in _visiting_objects(db, schema, schema, objects) if k != "s"]
                _move_objects(db, visiting, stage)
                extensions, refused = _move_extensions(db, _movable_extensions(db, schema), stage)
                _recreate_extensions(db, refused, schema, stage)
                swap._check_kept_dependencies(db, schema, schema, [oid for oid, _ in moved])
                swap._copy_schema_acl(db, schema, stage)
                _rename(db, schema, prev)
                record_cleanup(db, prev, "previous", run_id)
            _rename(db, stage, schema)
            forget_cleanup(db, stage)
            moved_names[schema] = [name for _, name in moved]
            db.execute(
                "INSERT INTO _pgrepl.swap (schema_name, aside_name, existed, moved_back, moved_types, "
                "moved_functions, extensions, run_id) VALUES (%s, %s, %s, %s::oid[], %s::oid[], %s::oid[], %s, %s)",
                (schema, prev, existed, [oid for oid, _ in moved], [o for k, o in visiting if k == "t"],
                 [o for k, o in visiting if k == "f"], extensions, run_id),
            )
        if deferred_sql.strip():
            db.execute(deferred_sql)
            _set_lock_timeout(db, lock_timeout)
        user_views.on_finalize(db)
        user_views.recreate_plain_views(db)  # readers never miss them; materialized ones wait for tonight's rows
        db.execute("DELETE FROM _pgrepl.swap")
    return moved_names


def _describe_blocker(pid, user, app, state, since, query) -> str:
    """One blocking session, as far as the warehouse role may see it (another role's session shows only its pid, role
    and application without ``pg_read_all_stats``)."""
    if state is None:
        return (f"pid {pid} ({user}, {app or 'no application_name'}; what it runs is hidden from the warehouse role: "
                "grant it pg_read_all_stats to see it)")
    return (f"pid {pid} ({user}, {app or 'no application_name'}, {state}"
            + (f", in a transaction since {since:%H:%M:%S}" if since else "") + f": {query!r})")


def _cancel(db, blockers) -> list[int]:
    """Cancel each blocking session's statement, or end the session when it is idle in its transaction (cancelling
    would not free its lock) or when what it does is hidden. :class:`SwitchBlocked` (no retry) when the role may not."""
    done = []
    for pid, user, _app, state, _since, _query in blockers:
        fn = "pg_cancel_backend" if state == "active" else "pg_terminate_backend"
        try:
            with db.transaction():
                db.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(fn)), (pid,))
        except psycopg.errors.InsufficientPrivilege:
            db.rollback()
            raise SwitchBlocked(
                f"SWITCH_CANCEL_READERS: the warehouse role may not cancel pid {pid} of role {user} that blocks the "
                f"switch: GRANT pg_signal_backend TO the warehouse role (or GRANT {user} TO it). Nothing was switched: "
                "the warehouse is yesterday's", retryable=False) from None
        done.append(pid)
    db.commit()
    return done


def switch(db, run_id: str, replaced: dict[str, set[str]], kept: dict[str, set[str]], objects: KeptObjects,
           deferred_sql: str, lock_timeout: float, retries: int, cancel_readers: bool) -> SwitchResult:
    """Switch tonight's staging schemas in (one transaction), waiting at most ``lock_timeout`` seconds per try for
    readers of the relations it moves; after ``retries`` more tries, cancel those readers (``cancel_readers``) and
    try once more, or raise :class:`SwitchBlocked` naming them."""
    started = time.monotonic()
    cancelled: list[int] = []
    attempt = 0
    while True:
        attempt += 1
        touched: list[int] = []
        attempt_started: list = []
        try:
            try:
                moved = _switch_once(db, run_id, replaced, kept, objects, deferred_sql, lock_timeout, touched,
                                     attempt_started)
            finally:
                if deferred_sql.strip():
                    reset_script_settings(db)
            return SwitchResult(round(time.monotonic() - started, 3), attempt, moved, cancelled)
        except psycopg.errors.LockNotAvailable:
            db.rollback()
            blockers = db.execute(_BLOCKERS, (touched,)).fetchall() if touched else []
            db.rollback()
            # the readers that queued behind the waiting switch hold the lock now too: only the sessions already in a
            # transaction when the attempt began blocked it (a hidden one, whose start is unknown, is kept)
            if attempt_started:
                blockers = [b for b in blockers if b[4] is None or b[4] < attempt_started[0]]
            described = "; ".join(_describe_blocker(*row) for row in blockers) or \
                "sessions that had ended by the time they were looked for"
            log.warning("switch attempt %s waited %s s for readers: %s", attempt, lock_timeout, described)
            if attempt <= retries:
                continue
            if cancel_readers and blockers and not cancelled:
                cancelled = _cancel(db, blockers)
                log.warning("SWITCH_CANCEL_READERS: cancelled the sessions blocking the switch: %s", described)
                continue
            raise SwitchBlocked(
                f"the switch waited {attempt} × {lock_timeout:g} s (SWITCH_LOCK_TIMEOUT, SWITCH_RETRIES) for readers "
                f"of the tables it moves and gave up: {described}. Nothing was switched: the warehouse is yesterday's. "
                "Retry when they end, or set SWITCH_CANCEL_READERS=true"
            ) from None
