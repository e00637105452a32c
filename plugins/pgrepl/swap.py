"""The warehouse side of a night: the run lease, the advisory lock, and the schema swap that keeps yesterday's
data when a restore fails.

The swap (the seed dropped everything first, so a failed night left an empty warehouse):

1. ``prepare_swap`` — one transaction: each schema ``S`` of the dump is renamed ``_pgrepl_prev_S`` and a new empty
   ``S`` is created; what the restore does not replace (tables kept by ``BACKUP_MODE``, tables and views the source
   does not have, e.g. the learning-content tables, relocatable extensions) is moved back into ``S`` at once.
2. ``pg_restore`` fills the new ``S``.
3. ``finalize_swap`` — success: the aside schemas are dropped.
   ``rollback_swap`` — any failure: what was moved back goes aside again, the half-filled ``S`` is dropped and the
   aside schema takes its name back, in one transaction: yesterday's warehouse, as it was.

Window: between steps 1 and 3 a reader of ``S`` does not see the replaced tables (they are in ``_pgrepl_prev_S``);
steps 1 and 3 themselves are single transactions, so nobody ever sees a half-swapped schema. A crash anywhere leaves
the bookkeeping in ``_pgrepl.swap``; the next attempt (retry, clear, or the ``rollback`` task) puts the old set back
before anything else.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from psycopg import sql

from pgrepl import sqlfiles

log = logging.getLogger(__name__)

STATE_SCHEMA = "_pgrepl"
ASIDE_PREFIX = "_pgrepl_prev_"
#: key of the session advisory lock held while a task writes the warehouse (advisory locks are per database)
ADVISORY_KEY = 0x7067_7265_706C  # "pgrepl"
#: a lease older than this is considered abandoned (a worker died before the release task)
LEASE_TTL_HOURS = 20


class WarehouseBusy(RuntimeError):
    """Another run holds the warehouse."""


class SwapError(RuntimeError):
    """The swap cannot proceed safely; nothing was changed."""


def aside_name(schema: str) -> str:
    name = ASIDE_PREFIX + schema
    if len(name.encode()) <= 63:
        return name
    return ASIDE_PREFIX + hashlib.sha1(schema.encode()).hexdigest()[:16]


def ensure_state(db) -> None:
    """Create ``_pgrepl`` bookkeeping tables if needed (commits)."""
    db.execute(sqlfiles.load("warehouse/state"))
    db.commit()


# -- lease and lock ------------------------------------------------------------------------------

def acquire_lease(db, run_id: str) -> None:
    """Take (or confirm) the run lease; :class:`WarehouseBusy` if another live run holds it. Commits."""
    ensure_state(db)
    row = db.execute(
        """
        INSERT INTO _pgrepl.lease (id, run_id, acquired_at) VALUES (1, %(run)s, now())
        ON CONFLICT (id) DO UPDATE SET run_id = EXCLUDED.run_id, acquired_at = now()
         WHERE _pgrepl.lease.run_id = EXCLUDED.run_id
            OR _pgrepl.lease.acquired_at < now() - make_interval(hours => %(ttl)s)
        RETURNING run_id
        """,
        {"run": run_id, "ttl": LEASE_TTL_HOURS},
    ).fetchone()
    db.commit()
    if row is None:
        holder, since = db.execute("SELECT run_id, acquired_at FROM _pgrepl.lease").fetchone()
        db.rollback()
        raise WarehouseBusy(
            f"another run ({holder}, since {since:%Y-%m-%d %H:%M:%S %Z}) holds the warehouse; "
            f"this run does not touch it (wait for that run, or fail it in Airflow so its release task frees the lease)"
        )


def release_lease(db, run_id: str) -> bool:
    """Release the lease if this run holds it. Commits."""
    ensure_state(db)
    deleted = db.execute("DELETE FROM _pgrepl.lease WHERE run_id = %s", (run_id,)).rowcount
    db.commit()
    return bool(deleted)


def lock_warehouse(db, run_id: str) -> None:
    """Confirm the lease and take the session advisory lock (held until ``db`` closes)."""
    acquire_lease(db, run_id)
    got = db.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,)).fetchone()[0]
    db.commit()
    if not got:
        raise WarehouseBusy("another session is writing the warehouse right now (advisory lock held)")


# -- swap -----------------------------------------------------------------------------------------

@dataclass
class SwapPlan:
    """What ``prepare_swap`` did, for the log and XCom."""

    schemas: list[str]
    moved_back: dict[str, list[str]]
    extensions: dict[str, list[str]]


def swap_in_progress(db) -> list[str]:
    ensure_state(db)
    return [r[0] for r in db.execute("SELECT schema_name FROM _pgrepl.swap ORDER BY 1").fetchall()]


def _schema_exists(db, name: str) -> bool:
    return db.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone() is not None


_ALTER_BY_KIND = {"r": "TABLE", "p": "TABLE", "f": "FOREIGN TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}


def _move_relation(db, oid: int, to_schema: str) -> str:
    relname, kind, current = db.execute(
        "SELECT c.relname, c.relkind, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = %s",
        (oid,),
    ).fetchone()
    db.execute(
        sql.SQL("ALTER {} {} SET SCHEMA {}").format(
            sql.SQL(_ALTER_BY_KIND[kind]), sql.Identifier(current, relname), sql.Identifier(to_schema)
        )
    )
    return relname


def _copy_schema_acl(db, from_schema: str, to_schema: str) -> None:
    rows = db.execute(
        "SELECT a.grantee, a.privilege_type FROM pg_namespace n, aclexplode(n.nspacl) a "
        "WHERE n.nspname = %s AND a.grantee <> n.nspowner",
        (from_schema,),
    ).fetchall()
    for grantee, privilege in rows:
        role = sql.SQL("PUBLIC") if grantee == 0 else sql.Identifier(
            db.execute("SELECT rolname FROM pg_roles WHERE oid = %s", (grantee,)).fetchone()[0]
        )
        db.execute(sql.SQL("GRANT {} ON SCHEMA {} TO {}").format(sql.SQL(privilege), sql.Identifier(to_schema), role))


def stop_orphan_restores(db, app_name: str = "pgrepl-restore") -> int:
    """Terminate this role's other sessions named ``app_name`` (a pg_restore whose worker died); return how many."""
    stopped = db.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid() "
        "AND usename = current_user",
        (app_name,),
    ).fetchone()[0]
    db.commit()
    if stopped:
        log.warning("stopped %s pg_restore session(s) left running by an earlier attempt", stopped)
    return stopped


def prepare_swap(db, run_id: str, replaced: dict[str, set[str]], kept: dict[str, set[str]]) -> SwapPlan:
    """Move the live schemas aside and bring back what the restore will not replace; one transaction.

    :param replaced: ``{schema: {relation names the dump creates}}`` — every schema of the dump is a key.
    :param kept: ``{schema: {table names kept by BACKUP_MODE}}`` (moved back even if the dump had them).
    """
    ensure_state(db)
    stop_orphan_restores(db)
    if swap_in_progress(db):
        log.warning("a previous attempt left a swap in progress: putting yesterday's warehouse back first")
        rollback_swap(db)
    plan = SwapPlan(schemas=sorted(replaced), moved_back={}, extensions={})
    try:
        for schema in plan.schemas:
            aside = aside_name(schema)
            if _schema_exists(db, aside):
                raise SwapError(f"schema {aside} exists but no swap is recorded in _pgrepl.swap: "
                                f"rename or drop it by hand (it may hold an older warehouse)")
            existed = _schema_exists(db, schema)
            moved_oids: list[int] = []
            extensions: list[str] = []
            if existed:
                db.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(schema), sql.Identifier(aside)))
                db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                _copy_schema_acl(db, aside, schema)
                candidates = db.execute(
                    """
                    SELECT c.oid, c.relname, c.relkind FROM pg_class c
                     WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s)
                       AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
                       AND NOT c.relispartition
                       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                         AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
                                         AND d.deptype IN ('a', 'i'))
                     ORDER BY c.relkind, c.relname
                    """,
                    (aside,),
                ).fetchall()
                keep_names = kept.get(schema, set())
                replaced_names = replaced.get(schema, set()) - keep_names
                moved = [(oid, relname) for oid, relname, _kind in candidates if relname not in replaced_names]
                moved_oids = [oid for oid, _ in moved]
                # dependencies follow OIDs, so the order of these moves does not matter
                for oid in moved_oids:
                    _move_relation(db, oid, schema)
                plan.moved_back[schema] = [relname for _, relname in moved]
                if moved_oids:
                    problems = db.execute(sqlfiles.load("warehouse/kept_dependencies"), {"kept": moved_oids, "aside": aside}).fetchall()
                    if problems:
                        detail = "; ".join(f"{kept_rel} needs {needs}" for kept_rel, needs in problems)
                        raise SwapError(f"tables kept in schema {schema} depend on objects the restore replaces: {detail}")
                for (ext, relocatable) in db.execute(
                    "SELECT extname, extrelocatable FROM pg_extension WHERE extnamespace = "
                    "(SELECT oid FROM pg_namespace WHERE nspname = %s)", (aside,)
                ).fetchall():
                    if relocatable:
                        db.execute(sql.SQL("ALTER EXTENSION {} SET SCHEMA {}").format(sql.Identifier(ext), sql.Identifier(schema)))
                        extensions.append(ext)
                    else:
                        log.warning("extension %s is not relocatable: it stays in %s during the restore", ext, aside)
            else:
                db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            db.execute(
                "INSERT INTO _pgrepl.swap (schema_name, aside_name, existed, moved_back, extensions, run_id) "
                "VALUES (%s, %s, %s, %s::oid[], %s, %s)",
                (schema, aside, existed, moved_oids, extensions, run_id),
            )
            plan.moved_back.setdefault(schema, [])
            plan.extensions[schema] = extensions
        db.commit()
    except Exception:
        db.rollback()
        raise
    return plan


def rollback_swap(db) -> list[str]:
    """Put yesterday's warehouse back (one transaction); return the schemas restored. No-op without a swap."""
    ensure_state(db)
    stop_orphan_restores(db)
    rows = db.execute(
        "SELECT schema_name, aside_name, existed, moved_back::int8[], extensions FROM _pgrepl.swap ORDER BY 1"
    ).fetchall()
    try:
        for schema, aside, existed, moved_back, extensions in rows:
            if existed and _schema_exists(db, aside):
                for oid in moved_back:
                    if db.execute("SELECT 1 FROM pg_class WHERE oid = %s", (oid,)).fetchone():
                        _move_relation(db, oid, aside)
                for ext in extensions:
                    db.execute(sql.SQL("ALTER EXTENSION {} SET SCHEMA {}").format(sql.Identifier(ext), sql.Identifier(aside)))
                if _schema_exists(db, schema):
                    db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
                db.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(aside), sql.Identifier(schema)))
            elif not existed and _schema_exists(db, schema):
                db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            db.execute("DELETE FROM _pgrepl.swap WHERE schema_name = %s", (schema,))
        db.commit()
    except Exception:
        db.rollback()
        raise
    if rows:
        log.warning("restore rolled back: yesterday's %s put back in place", ", ".join(r[0] for r in rows))
    return [r[0] for r in rows]


def finalize_swap(db) -> list[str]:
    """Drop the aside schemas after a successful restore (one transaction); return what went with them."""
    ensure_state(db)
    rows = db.execute("SELECT schema_name, aside_name FROM _pgrepl.swap ORDER BY 1").fetchall()
    lost: list[str] = []
    try:
        for schema, aside in rows:
            if _schema_exists(db, aside):
                lost += [r[0] for r in db.execute(sqlfiles.load("warehouse/lost_dependents"), {"aside": aside}).fetchall()]
                db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(aside)))
            db.execute("DELETE FROM _pgrepl.swap WHERE schema_name = %s", (schema,))
        db.commit()
    except Exception:
        db.rollback()
        raise
    for item in lost:
        log.warning("dropped with yesterday's tables (it depended on them): %s", item)
    return lost
