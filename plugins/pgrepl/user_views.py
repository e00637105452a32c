"""Views and materialized views of the warehouse's own users: kept across the nightly swap.

Analysts create views over the replicated tables, in a replicated schema (``public``) or in their own
(``analytics``). The swap moves the replicated schemas aside and drops them once the restore succeeded, which
would take those views along (``DROP SCHEMA ... CASCADE``). So:

1. :func:`save` — inside ``prepare_swap``'s transaction, before anything moves: every view or materialized view
   that the swap would drop and that the dump does not create (:data:`PROJECT_VIEWS` left out: ``compat_views``
   recreates them) is written to ``_pgrepl.user_views`` — ``pg_get_viewdef`` under an empty ``search_path`` (every
   name qualified), owner, options, ``WITH [NO] DATA``, comments (columns' too), grants (``aclexplode``), a
   materialized view's indexes — in dependency order. Those of the replicated schemas stay aside (never moved
   back), so yesterday's warehouse keeps them whole until the end; a crash cannot lose them (same transaction).
2. :func:`on_rollback` — a failed night: nothing was dropped, the saved rows go (the views are as they were).
   :func:`on_finalize` — inside ``finalize_swap``'s transaction: the saved views outside the aside schemas are
   dropped first (so they are not reported as lost, and every saved view is recreated alike: a materialized view
   over a kept table then holds tonight's rows), the saved rows become ``dropped``, and the views the restore created
   are remembered as the source's (``_pgrepl.source_views``), so a view the source later drops is not taken for a
   user's.
3. :func:`recreate` — after the restore and incremental steps, holding the warehouse lock: each ``dropped`` (or
   earlier ``broken``) view is created again as the warehouse role, in saving order, what fails retried once the
   others exist. ``ALTER ... OWNER TO`` the saved owner where the role may (else reported, and the owner gets its
   privileges by grant), grants re-applied exactly, comments, indexes, then ``REFRESH`` if it held data. A view that
   no longer compiles is reported by name (log and run summary) and kept ``broken`` in ``_pgrepl.user_views`` — its
   definition is not lost, and it is tried again every night; it never fails the night.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from psycopg import sql
from psycopg.types.json import Jsonb

from pgrepl import sqlfiles

log = logging.getLogger(__name__)

#: views pg-replication itself creates after the restore (``include/sql/compat``): not users'
PROJECT_VIEWS = frozenset({("public", "schooling-registrations")})

_KIND = {"v": "VIEW", "m": "MATERIALIZED VIEW"}
_COLUMNS = ("schema_name", "view_name", "kind", "position", "definition", "owner", "options", "populated", "comment",
            "column_comments", "grants", "indexes")


def ensure_state(db) -> None:
    """Create the bookkeeping tables if needed (inside the caller's transaction)."""
    db.execute(sqlfiles.load("warehouse/user_views_state"))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def dependency_order(oids: list[int], reads: dict[int, Iterable[int]]) -> list[int]:
    """``oids`` with every view after the views it reads (``reads``: oid -> oids among ``oids``); stable otherwise."""
    placed: list[int] = []
    done: set[int] = set()
    visiting: set[int] = set()

    def visit(oid: int) -> None:
        if oid in done or oid in visiting:
            return
        visiting.add(oid)
        for needed in sorted(reads.get(oid, ())):
            if needed in oids_set:
                visit(needed)
        visiting.discard(oid)
        done.add(oid)
        placed.append(oid)

    oids_set = set(oids)
    for oid in oids:
        visit(oid)
    return placed


def _source_views(db) -> set[tuple[str, str]]:
    return {(s, n) for s, n in db.execute("SELECT schema_name, view_name FROM _pgrepl.source_views").fetchall()}


def _with_empty_search_path(db, fn):
    previous = db.execute("SELECT current_setting('search_path')").fetchone()[0]
    db.execute("SELECT pg_catalog.set_config('search_path', '', true)")
    try:
        return fn()
    finally:
        db.execute("SELECT pg_catalog.set_config('search_path', %s, true)", (previous,))


def save(db, run_id: str, replaced: dict[str, set[str]]) -> dict[str, set[str]]:
    """Save the users' views that the swap of ``replaced``'s schemas would drop (inside the caller's transaction).

    :param replaced: ``{schema: relation names the dump creates}`` (as given to ``prepare_swap``)
    :returns: ``{schema: names}`` of the saved views inside those schemas: they must stay aside (not moved back)
    """
    ensure_state(db)
    schemas = sorted(replaced)
    found = db.execute(sqlfiles.load("warehouse/user_views_found"), {"schemas": schemas}).fetchall()
    source = _source_views(db)
    oids = []
    for oid, schema, name, _kind, inside in found:
        if inside and (name in replaced.get(schema, set()) or (schema, name) in source):
            continue  # the source's: the dump creates it (tonight, or it did last time)
        if (schema, name) in PROJECT_VIEWS:
            continue
        oids.append(oid)
    leave_aside: dict[str, set[str]] = {}
    if not oids:
        return leave_aside
    rows = _with_empty_search_path(
        db, lambda: db.execute(sqlfiles.load("warehouse/user_views_definitions"), {"oids": oids}).fetchall())
    by_oid = {row[0]: row for row in rows}
    order = dependency_order([r[0] for r in found if r[0] in by_oid], {oid: row[-1] for oid, row in by_oid.items()})
    statement = sql.SQL(
        "INSERT INTO _pgrepl.user_views ({cols}, state, error, run_id, saved_at, broken_since) "
        "VALUES ({values}, 'saved', NULL, %s, now(), NULL) "
        "ON CONFLICT (schema_name, view_name) DO UPDATE SET {updates}"
    ).format(
        cols=sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)),
        values=sql.SQL(", ").join(sql.Placeholder() for _ in _COLUMNS),
        updates=sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
            for c in _COLUMNS + ("state", "error", "run_id", "saved_at", "broken_since")),
    )
    for position, oid in enumerate(order):
        (_oid, schema, name, kind, definition, owner, options, populated, comment, column_comments, grants, indexes,
         _reads) = by_oid[oid]
        db.execute(statement, (schema, name, kind, position, definition, owner, options, populated, comment,
                               Jsonb(column_comments), Jsonb(grants), Jsonb(indexes), run_id))
        if schema in replaced:
            leave_aside.setdefault(schema, set()).add(name)
    log.info("saved %s view(s) of the warehouse's users to recreate after the night: %s", len(order),
             ", ".join(f"{by_oid[o][1]}.{by_oid[o][2]}" for o in order))
    return leave_aside


def on_rollback(db) -> None:
    """The swap was undone: the saved views were never dropped (inside the caller's transaction)."""
    ensure_state(db)
    db.execute("DELETE FROM _pgrepl.user_views WHERE state = 'saved'")


def on_finalize(db) -> list[str]:
    """Before the aside schemas are dropped (inside ``finalize_swap``'s transaction): drop the saved views outside
    them (all are recreated after the night, so a materialized view over a kept table sees tonight's rows too), mark
    the saved views ``dropped``, remember the restore's views as the source's.

    :returns: the views dropped here (``schema.name``)
    """
    ensure_state(db)
    swaps = db.execute("SELECT schema_name, aside_name, moved_back::int8[] FROM _pgrepl.swap").fetchall()
    saved = db.execute("SELECT schema_name, view_name, kind FROM _pgrepl.user_views WHERE state = 'saved' "
                       "ORDER BY position DESC").fetchall()
    dropped = []
    for schema, name, kind in saved:
        if not _exists(db, schema, name):
            continue  # in an aside schema: it goes with it
        try:
            with db.transaction():  # dependents first (reverse saving order); a stray one keeps it (no CASCADE)
                db.execute(sql.SQL("DROP {} {}").format(sql.SQL(_KIND[kind]), sql.Identifier(schema, name)))
            dropped.append(f"{schema}.{name}")
        except Exception as exc:  # noqa: BLE001 - left to the aside schema's drop, which reports what it takes
            log.warning("user view %s kept in place (%s)", f"{schema}.{name}", _first_line(exc))
    for schema, _aside, moved_back in swaps:
        names = [r[0] for r in db.execute(
            """
            SELECT c.relname FROM pg_class c
             WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s)
               AND c.relkind IN ('v', 'm')
               AND (c.oid <> ALL(%(moved)s::oid[])
                    OR c.relname IN (SELECT view_name FROM _pgrepl.source_views WHERE schema_name = %(schema)s))
            """,
            {"schema": schema, "moved": list(moved_back)},
        ).fetchall()]
        db.execute("DELETE FROM _pgrepl.source_views WHERE schema_name = %s", (schema,))
        db.execute("INSERT INTO _pgrepl.source_views SELECT %s, unnest(%s::text[])", (schema, names))
    db.execute("UPDATE _pgrepl.user_views SET state = 'dropped' WHERE state = 'saved'")
    return dropped


# -- recreate -------------------------------------------------------------------------------------

def _exists(db, schema: str, name: str) -> bool:
    return db.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (schema, name)).fetchone() is not None


def _role_exists(db, name: str) -> bool:
    return db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def _grantee(name: str | None) -> sql.Composable:
    return sql.SQL("PUBLIC") if name is None else sql.Identifier(name)


def _options(options: list[str] | None) -> sql.Composable:
    if not options:
        return sql.SQL("")
    pairs = [option.split("=", 1) for option in options]
    return sql.SQL(" WITH ({})").format(sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(key), sql.Literal(value)) for key, value in pairs))


def _create(db, view: dict) -> str | None:
    """Create one saved view (inside a savepoint of the caller); return why its owner could not be set, or None."""
    ident = sql.Identifier(view["schema_name"], view["view_name"])
    kind = sql.SQL(_KIND[view["kind"]])
    definition = sql.SQL(view["definition"].strip().rstrip(";"))
    if view["kind"] == "m":
        db.execute(sql.SQL("CREATE MATERIALIZED VIEW {}{} AS {} WITH NO DATA").format(
            ident, _options(view["options"]), definition))
        for index in view["indexes"]:
            db.execute(sql.SQL(index))
    else:
        db.execute(sql.SQL("CREATE VIEW {}{} AS {}").format(ident, _options(view["options"]), definition))
    owner_problem = None
    me = db.execute("SELECT current_user").fetchone()[0]
    owner = me
    if view["owner"] != me:
        try:
            with db.transaction():
                db.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(kind, ident, sql.Identifier(view["owner"])))
            owner = view["owner"]
        except Exception as exc:  # noqa: BLE001 - reported; the view stays, owned by the warehouse role
            owner_problem = _first_line(exc)
    # grants exactly as saved: what default privileges added goes first
    current = db.execute(
        "SELECT DISTINCT x.grantee, pg_get_userbyid(x.grantee) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) x "
        "WHERE n.nspname = %s AND c.relname = %s AND x.grantee <> c.relowner",
        (view["schema_name"], view["view_name"])).fetchall()
    for grantee_oid, grantee in current:
        db.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(ident, _grantee(None if grantee_oid == 0 else grantee)))
    for grantee, privilege, grantable in view["grants"]:
        if grantee == owner or (grantee is not None and not _role_exists(db, grantee)):
            continue
        db.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(
            sql.SQL(privilege), ident, _grantee(grantee), sql.SQL(" WITH GRANT OPTION" if grantable else "")))
    if view["comment"] is not None:
        db.execute(sql.SQL("COMMENT ON {} {} IS {}").format(kind, ident, sql.Literal(view["comment"])))
    for column, comment in view["column_comments"]:
        db.execute(sql.SQL("COMMENT ON COLUMN {} IS {}").format(
            sql.Identifier(view["schema_name"], view["view_name"], column), sql.Literal(comment)))
    if view["kind"] == "m" and view["populated"]:
        db.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(ident))
    return owner_problem


def recreate_plain_views(db) -> list[str]:
    """Inside the switch's transaction, after :func:`on_finalize`: the saved plain views, created again at once so
    that readers never miss them. Materialized views wait for the ``user_views`` task (they need tonight's
    incremental rows), and so does a view that does not compile here (that task retries and reports it)."""
    columns = _COLUMNS + ("state", "broken_since")
    rows = db.execute(sql.SQL(
        "SELECT {} FROM _pgrepl.user_views WHERE state = 'dropped' AND kind = 'v' ORDER BY saved_at, position"
    ).format(sql.SQL(", ").join(map(sql.Identifier, columns)))).fetchall()
    if not rows:
        return []
    db.execute("SELECT pg_catalog.set_config('search_path', '', true)")  # definitions are fully qualified
    recreated = []
    for row in rows:
        view = dict(zip(columns, row))
        if _exists(db, view["schema_name"], view["view_name"]):
            continue  # the user_views task says so
        try:
            with db.transaction():
                owner_problem = _create(db, view)
        except Exception as exc:  # noqa: BLE001 - left to the user_views task, which reports it
            log.info("user view %s.%s not recreated at the switch (%s): the user_views task tries again",
                     view["schema_name"], view["view_name"], _first_line(exc))
            continue
        if owner_problem:
            log.warning("user view %s.%s recreated at the switch, owned by the warehouse role: its owner %s could not "
                        "be set back (%s)", view["schema_name"], view["view_name"], view["owner"], owner_problem)
        db.execute("UPDATE _pgrepl.user_views SET state = 'switched', error = %s "
                   "WHERE schema_name = %s AND view_name = %s", (owner_problem, view["schema_name"], view["view_name"]))
        recreated.append(f"{view['schema_name']}.{view['view_name']}")
    if recreated:
        log.info("users' views recreated with the switch: %s", ", ".join(recreated))
    return recreated


def recreate_saved(db) -> dict:
    """Recreate every ``dropped`` or ``broken`` saved view (one transaction, a savepoint each; commits).

    :returns: ``{"recreated": [names], "already_there": [names], "failed": [{"view", "error", "broken_since"}],
        "owner_not_restored": [{"view", "owner", "error"}]}``
    """
    ensure_state(db)
    columns = _COLUMNS + ("state", "broken_since")
    rows = db.execute(sql.SQL(
        "SELECT {} FROM _pgrepl.user_views WHERE state IN ('dropped', 'broken') ORDER BY saved_at, position"
    ).format(sql.SQL(", ").join(map(sql.Identifier, columns)))).fetchall()
    result: dict = {"recreated": [], "already_there": [], "failed": [], "owner_not_restored": []}
    for schema, name, owner, owner_problem in db.execute(  # recreated at the switch already
            "DELETE FROM _pgrepl.user_views WHERE state = 'switched' RETURNING schema_name, view_name, owner, error "
            "").fetchall():
        result["recreated"].append(f"{schema}.{name}")
        if owner_problem:
            result["owner_not_restored"].append({"view": f"{schema}.{name}", "owner": owner, "error": owner_problem})
    db.execute("SELECT pg_catalog.set_config('search_path', '', true)")  # definitions are fully qualified
    pending = []
    for row in rows:
        view = dict(zip(columns, row))
        name = f"{view['schema_name']}.{view['view_name']}"
        if _exists(db, view["schema_name"], view["view_name"]):
            log.info("user view %s is already in the warehouse: left as it is", name)
            result["already_there"].append(name)
            db.execute("DELETE FROM _pgrepl.user_views WHERE schema_name = %s AND view_name = %s",
                       (view["schema_name"], view["view_name"]))
        else:
            pending.append(view)
    errors: dict[str, str] = {}
    while pending:
        failed = []
        for view in pending:
            name = f"{view['schema_name']}.{view['view_name']}"
            try:
                with db.transaction():
                    owner_problem = _create(db, view)
            except Exception as exc:  # noqa: BLE001 - a view that no longer compiles never fails the night
                errors[name] = _first_line(exc)
                failed.append(view)
                continue
            errors.pop(name, None)
            db.execute("DELETE FROM _pgrepl.user_views WHERE schema_name = %s AND view_name = %s",
                       (view["schema_name"], view["view_name"]))
            result["recreated"].append(name)
            if owner_problem:
                result["owner_not_restored"].append({"view": name, "owner": view["owner"], "error": owner_problem})
                log.warning("user view %s recreated, owned by the warehouse role: its owner %s could not be set "
                            "back (%s); %s keeps its privileges by grant", name, view["owner"], owner_problem,
                            view["owner"])
        if len(failed) == len(pending):
            break  # no progress: what is left does not compile
        pending = failed
    for view in pending:
        name = f"{view['schema_name']}.{view['view_name']}"
        since = db.execute(
            "UPDATE _pgrepl.user_views SET state = 'broken', error = %s, broken_since = coalesce(broken_since, now()) "
            "WHERE schema_name = %s AND view_name = %s RETURNING broken_since",
            (errors[name], view["schema_name"], view["view_name"])).fetchone()[0]
        result["failed"].append({"view": name, "error": errors[name], "broken_since": since.isoformat()})
        log.warning("user view %s could not be recreated: %s — its definition is kept in _pgrepl.user_views "
                    "(tried again every night): %s", name, errors[name], view["definition"].strip())
    db.commit()
    log.info("users' views: %s recreated, %s could not be", len(result["recreated"]), len(result["failed"]))
    return result


def recreate(settings, run_id: str | None = None) -> dict:
    """Recreate the users' views saved before tonight's swap, holding the warehouse lock when ``run_id`` is given."""
    from pgrepl import swap

    with settings.target.connect() as db:
        if run_id:
            swap.lock_warehouse(db, run_id)
        return recreate_saved(db)


def recreate_task(run_id: str | None, context=None) -> dict:
    """The DAG's ``user_views`` task."""
    import psycopg

    from pgrepl.errors import airflow_errors
    from pgrepl.task_settings import replication_settings

    settings = replication_settings(context)
    with airflow_errors("users' views: ", catch=(psycopg.Error,)):
        return recreate(settings, run_id)
