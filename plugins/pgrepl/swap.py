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
import re
import time
from dataclasses import dataclass

from psycopg import sql

from pgrepl import sqlfiles, user_views
from pgrepl.errors import PgreplError

log = logging.getLogger(__name__)

ASIDE_PREFIX = "_pgrepl_prev_"
#: key of the session advisory lock held while a task writes the warehouse (advisory locks are per database)
ADVISORY_KEY = 0x7067_7265_706C  # "pgrepl"
#: a lease older than this is considered abandoned (a worker died before the release task)
LEASE_TTL_HOURS = 20
#: how long a task waits for the advisory lock of an earlier attempt of its run to go (its session is ended first)
ORPHAN_LOCK_WAIT_SECONDS = 30.0
#: application_name prefix of the sessions holding the advisory lock: ``pgrepl-lock:<hash of the run id>``
LOCK_APP_PREFIX = "pgrepl-lock:"


class WarehouseBusy(PgreplError, RuntimeError):
    """Another session or run holds the warehouse. Retryable (it is busy now) unless another run holds the lease:
    that run owns the warehouse until it ends, so this one fails at once."""


class SwapError(PgreplError, RuntimeError):
    """The swap cannot proceed safely; nothing was changed. A retry would meet the same objects."""

    retryable = False


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
            f"this run does not touch it (wait for that run, or fail it in Airflow so its release task frees the lease)",
            retryable=False,
        )


def release_lease(db, run_id: str) -> bool:
    """Release the lease if this run holds it. Commits."""
    ensure_state(db)
    deleted = db.execute("DELETE FROM _pgrepl.lease WHERE run_id = %s", (run_id,)).rowcount
    db.commit()
    return bool(deleted)


def lock_app_name(run_id: str) -> str:
    """``application_name`` of a session holding the advisory lock for ``run_id`` (at most 63 bytes)."""
    return LOCK_APP_PREFIX + hashlib.sha1(run_id.encode()).hexdigest()[:24]


def _try_lock(db) -> bool:
    got = db.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,)).fetchone()[0]
    db.commit()
    return got


def lock_warehouse(db, run_id: str, wait_seconds: float = ORPHAN_LOCK_WAIT_SECONDS) -> None:
    """Confirm the lease and take the session advisory lock (held until ``db`` closes).

    The session is named after the run (:func:`lock_app_name`). A session of the same run already holding the lock
    is an orphan of an earlier attempt (a worker that died, a client closed before the server noticed): it is ended
    and its lock waited for, at most ``wait_seconds``. A holder from elsewhere raises :class:`WarehouseBusy`
    (retryable: the warehouse is busy right now).
    """
    acquire_lease(db, run_id)
    app = lock_app_name(run_id)
    db.execute("SELECT pg_catalog.set_config('application_name', %s, false)", (app,))
    db.commit()
    if _try_lock(db):
        return
    holders = db.execute(sqlfiles.load("warehouse/advisory_lock_holders"), {"key": ADVISORY_KEY}).fetchall()
    db.commit()
    if not any(name == app for _pid, name in holders):
        raise WarehouseBusy("another session is writing the warehouse right now (advisory lock held)")
    stopped = stop_sessions(db, app)
    log.warning("ended %s session(s) of an earlier attempt of run %s that still held the warehouse lock", stopped, run_id)
    deadline = time.monotonic() + wait_seconds
    while not _try_lock(db):
        if time.monotonic() > deadline:
            raise WarehouseBusy(f"the warehouse lock of an earlier attempt of run {run_id} was not freed within "
                                f"{wait_seconds:.0f} s (advisory lock held)")
        time.sleep(0.05)


# -- swap -----------------------------------------------------------------------------------------

@dataclass
class SwapPlan:
    """What ``prepare_swap`` did, for the log and XCom."""

    schemas: list[str]
    moved_back: dict[str, list[str]]


def swap_in_progress(db) -> list[str]:
    ensure_state(db)
    return [r[0] for r in db.execute("SELECT schema_name FROM _pgrepl.swap ORDER BY 1").fetchall()]


def _schema_exists(db, name: str) -> bool:
    return db.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone() is not None


_ALTER_BY_KIND = {"r": "TABLE", "p": "TABLE", "f": "FOREIGN TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}


def _move_relation(db, oid: int, to_schema: str) -> str:
    relname, kind, current = db.execute(sqlfiles.load("warehouse/relation"), (oid,)).fetchone()
    db.execute(
        sql.SQL("ALTER {} {} SET SCHEMA {}").format(
            sql.SQL(_ALTER_BY_KIND[kind]), sql.Identifier(current, relname), sql.Identifier(to_schema)
        )
    )
    return relname


def _move_type(db, oid: int, to_schema: str) -> str:
    typname, typtype, current = db.execute(sqlfiles.load("warehouse/type"), (oid,)).fetchone()
    kind = "DOMAIN" if typtype == "d" else "TYPE"
    db.execute(sql.SQL("ALTER {} {} SET SCHEMA {}").format(
        sql.SQL(kind), sql.Identifier(current, typname), sql.Identifier(to_schema)))
    return typname


def _move_function(db, oid: int, to_schema: str) -> str:
    # regprocedure prints the schema-qualified, quoted signature from the catalog
    signature = db.execute("SELECT %s::oid::regprocedure::text", (oid,)).fetchone()[0]
    db.execute(sql.SQL("ALTER ROUTINE {} SET SCHEMA {}").format(sql.SQL(signature), sql.Identifier(to_schema)))
    return signature


def _copy_schema_acl(db, from_schema: str, to_schema: str) -> None:
    rows = db.execute(sqlfiles.load("warehouse/schema_grants"), (from_schema,)).fetchall()
    for grantee, privilege in rows:
        role = sql.SQL("PUBLIC") if grantee == 0 else sql.Identifier(
            db.execute("SELECT rolname FROM pg_roles WHERE oid = %s", (grantee,)).fetchone()[0]
        )
        db.execute(sql.SQL("GRANT {} ON SCHEMA {} TO {}").format(sql.SQL(privilege), sql.Identifier(to_schema), role))


def stop_sessions(db, app_name: str) -> int:
    """Terminate this role's other sessions named ``app_name`` in this database; return how many. Commits."""
    stopped = db.execute(sqlfiles.load("warehouse/stop_sessions"), {"app": app_name}).fetchone()[0]
    db.commit()
    return stopped


def stop_orphan_restores(db, app_name: str = "pgrepl-restore") -> int:
    """Terminate this role's other sessions named ``app_name`` (a pg_restore whose worker died); return how many."""
    stopped = stop_sessions(db, app_name)
    if stopped:
        log.warning("stopped %s pg_restore session(s) left running by an earlier attempt", stopped)
    return stopped


def _move_aside(db, schema: str, aside: str) -> None:
    """Rename ``schema`` to ``aside`` and create an empty ``schema`` with the same grants."""
    db.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(schema), sql.Identifier(aside)))
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    _copy_schema_acl(db, aside, schema)


def staying_relations(db, schema: str, replaced: set[str], kept: set[str]) -> list[tuple[int, str]]:
    """``(oid, name)`` of the relations of ``schema`` the restore does not replace (``replaced`` minus ``kept``); a
    partition goes where its parent goes (a kept parent takes all its partitions along)."""
    candidates = db.execute(sqlfiles.load("warehouse/movable_relations"), (schema,)).fetchall()
    replaced_names = replaced - kept
    parent_of = {oid: parent for oid, _relname, parent in candidates}
    partitions = {oid for oid, _relname, parent in candidates if parent in parent_of}
    staying = {oid for oid, relname, _parent in candidates if oid not in partitions and relname not in replaced_names}

    def root_stays(oid: int) -> bool:
        while oid in partitions:
            oid = parent_of[oid]
        return oid in staying

    return [(oid, relname) for oid, relname, _parent in candidates if root_stays(oid)]


def _bring_back(db, schema: str, aside: str, replaced: set[str], kept: set[str]) -> tuple[list[int], list[str]]:
    """Move back from ``aside`` into ``schema`` every relation the restore does not replace; ``(oids, names)``."""
    moved = staying_relations(db, aside, replaced, kept)
    # dependencies follow OIDs, so the order of these moves does not matter
    for oid, _ in moved:
        _move_relation(db, oid, schema)
    return [oid for oid, _ in moved], [relname for _, relname in moved]


def _bring_back_objects(db, schema: str, aside: str, types: dict[str, str],
                        functions: list[tuple[str, str]]) -> tuple[list[int], list[int], list[str]]:
    """Move back the types and functions the kept tables use; ``(type oids, function oids, names)``."""
    if not types and not functions:
        return [], [], []
    rows = db.execute(sqlfiles.load("warehouse/movable_objects"), {
        "schema": aside, "types": list(types), "functions": [name for name, _ in functions],
        "arguments": [args for _, args in functions]}).fetchall()
    type_oids, function_oids, names = [], [], []
    for kind, oid in rows:
        if kind == "t":
            names.append(_move_type(db, oid, schema))
            type_oids.append(oid)
        else:
            names.append(_move_function(db, oid, schema))
            function_oids.append(oid)
    return type_oids, function_oids, names


def _check_kept_dependencies(db, schema: str, aside: str, oids: list[int]) -> None:
    """:class:`SwapError` when a relation moved back depends on something the restore replaces."""
    if oids:
        problems = db.execute(sqlfiles.load("warehouse/kept_dependencies"), {"kept": oids, "aside": aside}).fetchall()
        if problems:
            detail = "; ".join(f"{kept_rel} needs {needs}" for kept_rel, needs in problems)
            raise SwapError(f"tables kept in schema {schema} depend on objects the restore replaces: {detail}")


def _move_extensions(db, from_schema: str, to_schema: str) -> list[str]:
    """Move the relocatable extensions of ``from_schema`` into ``to_schema``; return their names."""
    moved = []
    for ext, relocatable in db.execute(sqlfiles.load("warehouse/schema_extensions"), (from_schema,)).fetchall():
        if relocatable:
            db.execute(sql.SQL("ALTER EXTENSION {} SET SCHEMA {}").format(sql.Identifier(ext), sql.Identifier(to_schema)))
            moved.append(ext)
        else:
            log.warning("extension %s is not relocatable: it stays in %s during the restore", ext, from_schema)
    return moved


def _swap_schema(db, run_id: str, schema: str, replaced: set[str], kept: set[str],
                 kept_types: dict[str, str] | None = None, kept_functions: list[tuple[str, str]] | None = None
                 ) -> list[str]:
    """Swap one schema (inside the caller's transaction) and record it in ``_pgrepl.swap``; return what was kept."""
    aside = aside_name(schema)
    if _schema_exists(db, aside):
        raise SwapError(f"schema {aside} exists but no swap is recorded in _pgrepl.swap: "
                        f"rename or drop it by hand (it may hold an older warehouse)")
    existed = _schema_exists(db, schema)
    moved_oids: list[int] = []
    moved_names: list[str] = []
    moved_types: list[int] = []
    moved_functions: list[int] = []
    extensions: list[str] = []
    if existed:
        _move_aside(db, schema, aside)
        moved_oids, moved_names = _bring_back(db, schema, aside, replaced, kept)
        moved_types, moved_functions, object_names = _bring_back_objects(
            db, schema, aside, kept_types or {}, kept_functions or [])
        moved_names += object_names
        # extensions before the check: a kept table may use their types (citext ...)
        extensions = _move_extensions(db, aside, schema)
        _check_kept_dependencies(db, schema, aside, moved_oids)
    else:
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    db.execute(
        "INSERT INTO _pgrepl.swap (schema_name, aside_name, existed, moved_back, moved_types, moved_functions, "
        "extensions, run_id) VALUES (%s, %s, %s, %s::oid[], %s::oid[], %s::oid[], %s, %s)",
        (schema, aside, existed, moved_oids, moved_types, moved_functions, extensions, run_id),
    )
    return moved_names


def prepare_swap(db, run_id: str, replaced: dict[str, set[str]], kept: dict[str, set[str]],
                 kept_types: dict[str, dict[str, str]] | None = None,
                 kept_functions: dict[str, list[tuple[str, str]]] | None = None) -> SwapPlan:
    """Move the live schemas aside and bring back what the restore will not replace; one transaction.

    :param replaced: ``{schema: {relation names the dump creates}}`` — every schema of the dump is a key.
    :param kept: ``{schema: {relation names kept by BACKUP_MODE}}`` (moved back even if the dump had them): kept
        tables, their partitions, the sequences they share with replaced tables.
    :param kept_types: ``{schema: {type name: typtype}}`` — enums, domains ... the kept tables use: moved back with
        them (the restore list leaves their dump entries out).
    :param kept_functions: ``{schema: [(function name, identity arguments)]}`` their defaults and checks call: the
        same.
    """
    kept_types = kept_types or {}
    kept_functions = kept_functions or {}
    ensure_state(db)
    stop_orphan_restores(db)
    if swap_in_progress(db):
        log.warning("a previous attempt left a swap in progress: putting yesterday's warehouse back first")
        rollback_swap(db)
    plan = SwapPlan(schemas=sorted(replaced), moved_back={})
    try:
        users = user_views.save(db, run_id, replaced)  # saved views of users stay aside; recreated after the night
        for schema in plan.schemas:
            plan.moved_back[schema] = _swap_schema(db, run_id, schema,
                                                   replaced.get(schema, set()) | users.get(schema, set()),
                                                   kept.get(schema, set()), kept_types.get(schema),
                                                   kept_functions.get(schema))
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
        "SELECT schema_name, aside_name, existed, moved_back::int8[], extensions, moved_types::int8[], "
        "moved_functions::int8[] FROM _pgrepl.swap ORDER BY 1"
    ).fetchall()
    try:
        for schema, aside, existed, moved_back, extensions, moved_types, moved_functions in rows:
            if existed and _schema_exists(db, aside):
                for oid in moved_back:
                    if db.execute("SELECT 1 FROM pg_class WHERE oid = %s", (oid,)).fetchone():
                        _move_relation(db, oid, aside)
                for oid in moved_types:
                    if db.execute("SELECT 1 FROM pg_type WHERE oid = %s", (oid,)).fetchone():
                        _move_type(db, oid, aside)
                for oid in moved_functions:
                    if db.execute("SELECT 1 FROM pg_proc WHERE oid = %s", (oid,)).fetchone():
                        _move_function(db, oid, aside)
                for ext in extensions:
                    db.execute(sql.SQL("ALTER EXTENSION {} SET SCHEMA {}").format(sql.Identifier(ext), sql.Identifier(aside)))
                if _schema_exists(db, schema):
                    db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
                db.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(aside), sql.Identifier(schema)))
            elif not existed and _schema_exists(db, schema):
                db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            db.execute("DELETE FROM _pgrepl.swap WHERE schema_name = %s", (schema,))
        user_views.on_rollback(db)
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
        user_views.on_finalize(db)  # users' views that go with the aside schemas: saved, recreated after the night
        for schema, aside in rows:
            if _schema_exists(db, aside):
                lost += [r[0] for r in db.execute(sqlfiles.load("warehouse/lost_dependents"), {"aside": aside}).fetchall()]
                db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(aside)))
            db.execute("DELETE FROM _pgrepl.swap WHERE schema_name = %s", (schema,))
        db.commit()
    except Exception:
        db.rollback()
        raise
    lost = [item for item in lost if not _recreated_by_compat(item)]
    for item in lost:
        log.warning("dropped with yesterday's tables (it depended on them): %s", item)
    return lost


#: views the ``compat_views`` step creates again right after the restore: their loss is not news
COMPAT_VIEWS = ("schooling-registrations",)


def _recreated_by_compat(item: str) -> bool:
    """``rule _RETURN on view "schooling-registrations"`` (as ``pg_describe_object`` names it) -> True."""
    return any(re.search(rf'\bview (?:public\.)?"?{re.escape(view)}"?$', item) for view in COMPAT_VIEWS)
