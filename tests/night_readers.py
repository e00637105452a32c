"""Warehouse readers for the tests of issue 14 (tests/test_readers_during_night.py, tests/test_switch_lock.py).

* :class:`Reader` — a warehouse user (its own role and session, autocommit) that runs ``select count(*)`` on a few
  relations every 50 ms and records every answer, error and how long each select took;
* :func:`reading_problems` — which answers were neither yesterday's nor tonight's, or came out of order;
* :class:`LongReader` — a session that opens a transaction, reads a table and keeps the transaction open (idle, or
  busy in a long statement) across a night;
* :func:`analyst_role` — a login role that reads the warehouse through default privileges, as the README says to
  give them;
* :func:`leftover_schemas` — the staging / previous schemas a night must not leave behind.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from psycopg import sql

from conftest import TEST_PASSWORD
from pgrepl.pgtools import PgConn

#: every select of the readers gives up after this: a reader stuck behind a lock shows as an error, not a hang
READER_STATEMENT_TIMEOUT_S = 120


@dataclass
class Sample:
    at: float  # time.monotonic() when the select ended
    relation: str
    count: int | None
    error: str | None
    seconds: float


class Reader(threading.Thread):
    """Counts the rows of ``relations`` (names in schema ``public``) every ``interval`` seconds on one autocommit
    session of its own, until :meth:`stop`. Never sleeps for anything but the interval between two rounds."""

    def __init__(self, conn: PgConn, relations: list[str], interval: float = 0.05,
                 app_name: str = "pgrepl-test-reader") -> None:
        super().__init__(name="warehouse-reader", daemon=True)
        self.conn, self.relations, self.interval, self.app_name = conn, relations, interval, app_name
        self.samples: list[Sample] = []
        self.halt = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with self.conn.connect(autocommit=True) as db:
                db.execute(sql.SQL("SET statement_timeout = {}").format(
                    sql.Literal(f"{READER_STATEMENT_TIMEOUT_S}s")))
                db.execute("SELECT pg_catalog.set_config('application_name', %s, false)", (self.app_name,))
                queries = {name: sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", name))
                           for name in self.relations}
                while not self.halt.is_set():
                    for name, query in queries.items():
                        started = time.monotonic()
                        try:
                            count, error = db.execute(query).fetchone()[0], None
                        except Exception as exc:  # noqa: BLE001 - what the reader saw is the result
                            count, error = None, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                        ended = time.monotonic()
                        self.samples.append(Sample(ended, name, count, error, ended - started))
                    self.halt.wait(self.interval)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.failure = exc

    def wait_for_rounds(self, rounds: int = 2, timeout: float = 60.0) -> None:
        """Poll until the reader has answered ``rounds`` full rounds (it is reading before the night starts)."""
        deadline = time.monotonic() + timeout
        while len(self.samples) < rounds * len(self.relations):
            if self.failure or not self.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the reader did not start reading: {self.failure!r}")
            time.sleep(0.01)

    def stop(self) -> list[Sample]:
        self.halt.set()
        self.join(timeout=READER_STATEMENT_TIMEOUT_S + 10)
        if self.failure:
            raise RuntimeError(f"the reader's session failed: {self.failure!r}") from self.failure
        return list(self.samples)


def reading_problems(samples: list[Sample], expected: dict[str, list[int]]) -> list[str]:
    """What a reader saw that it must not: an error, a count not in ``expected[relation]`` (yesterday's, then
    tonight's), or a count that went back to an earlier one of that list. Empty when all is well."""
    problems = []
    for relation, allowed in expected.items():
        seen = [s for s in samples if s.relation == relation]
        if not seen:
            problems.append(f"{relation}: never read")
            continue
        errors = [s for s in seen if s.error]
        if errors:
            problems.append(f"{relation}: {len(errors)} error(s) of {len(seen)} reads, first: {errors[0].error!r}")
        wrong = [s.count for s in seen if s.count is not None and s.count not in allowed]
        if wrong:
            problems.append(f"{relation}: counts {sorted(set(wrong))} are neither of {allowed} "
                            f"({len(wrong)} of {len(seen)} reads)")
        order = [allowed.index(s.count) for s in seen if s.count in allowed]
        back = [i for i in range(1, len(order)) if order[i] < order[i - 1]]
        if back:
            problems.append(f"{relation}: went back from {allowed[order[back[0] - 1]]} to {allowed[order[back[0]]]} "
                            f"({len(back)} time(s))")
    return problems


def longest(samples: list[Sample], relation: str | None = None) -> float:
    return max((s.seconds for s in samples if relation is None or s.relation == relation), default=0.0)


def describe(samples: list[Sample], relations: list[str]) -> str:
    """One line per relation: reads, errors, the counts seen in order (run-length), the longest select."""
    lines = []
    for relation in relations:
        seen = [s for s in samples if s.relation == relation]
        runs: list[list] = []
        for s in seen:
            value = s.count if s.error is None else "error"
            if runs and runs[-1][0] == value:
                runs[-1][1] += 1
            else:
                runs.append([value, 1])
        lines.append(f"  {relation}: {len(seen)} reads, longest {longest(seen):.3f} s, "
                     + " -> ".join(f"{v} x{n}" for v, n in runs))
    return "\n".join(lines)


# -- a reader that holds a table across the switch -----------------------------------------------------------

@dataclass
class LongReader:
    """``BEGIN; SELECT count(*) FROM public.<table>`` on a session of its own, the transaction left open.

    :meth:`start_long_statement` then makes it busy (a ``pg_sleep`` inside the same transaction) in a thread,
    whose outcome lands in :attr:`statement_error` / :attr:`statement_done`.
    """

    conn: PgConn
    table: str
    app_name: str = "analyst-dashboard"
    isolation: str = "READ COMMITTED"
    db: object = None
    pid: int | None = None
    first_count: int | None = None
    statement_error: BaseException | None = None
    statement_done: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def begin(self) -> "LongReader":
        self.db = self.conn.connect()
        self.db.execute("SELECT pg_catalog.set_config('application_name', %s, false)", (self.app_name,))
        self.db.commit()
        self.pid = self.db.info.backend_pid
        self.db.execute(sql.SQL("BEGIN ISOLATION LEVEL {}").format(sql.SQL(self.isolation)))
        self.first_count = self.count(self.table)
        return self

    def count(self, table: str) -> int:
        return self.db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))).fetchone()[0]

    def start_long_statement(self, seconds: int = 300) -> None:
        def busy() -> None:
            try:
                self.db.execute("SELECT pg_sleep(%s)", (seconds,))
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                self.statement_error = exc
            finally:
                self.statement_done.set()

        self._thread = threading.Thread(target=busy, name="long-reader", daemon=True)
        self._thread.start()

    def close(self, cluster) -> None:
        """End the session whatever its state (a statement still sleeping is cancelled first)."""
        if self._thread and self._thread.is_alive() and self.pid:
            cluster.execute("SELECT pg_cancel_backend(%s)", params=(self.pid,))
            self._thread.join(30)
        if self.db is not None:
            try:
                self.db.rollback()
            except Exception:  # noqa: BLE001 - the session may be gone already
                pass
            self.db.close()


def wait_until(condition, timeout: float = 120.0, step: float = 0.02):
    """Poll ``condition`` until it returns something truthy; that value, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(step)


# -- roles and leftovers ---------------------------------------------------------------------------------

def analyst_role(pg_cluster, target: PgConn, name: str) -> PgConn:
    """A login role that only reads: default privileges of the warehouse role give it SELECT on every table the
    nights create (without ``IN SCHEMA``, as the README says), plus SELECT on what exists already."""
    owner, db = sql.Identifier(target.user), target.dbname
    role = sql.Identifier(name)
    if not pg_cluster.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(name,)):
        pg_cluster.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            role, sql.Literal(TEST_PASSWORD)).as_string())
    pg_cluster.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT SELECT ON TABLES TO {}").format(
        owner, role).as_string(), dbname=db)
    pg_cluster.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(role).as_string(), dbname=db)
    return PgConn(host=target.host, port=target.port, dbname=db, user=name, password=TEST_PASSWORD)


def leftover_schemas(target: PgConn) -> list[str]:
    """Schemas of a night's work left in the warehouse (staging, shadow, live-in-waiting, previous) and schemas the
    cleanup still has to drop: none once a night is over, failed or not."""
    with target.connect() as db:
        left = [r[0] for r in db.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE '\\_pgrepl\\_%' ORDER BY 1").fetchall()]
        if db.execute("SELECT to_regclass('_pgrepl.cleanup')").fetchone()[0]:
            left += [f"cleanup: {r[0]}" for r in db.execute("SELECT schema_name FROM _pgrepl.cleanup ORDER BY 1")]
    return left


def counts(conn: PgConn, relations: list[str]) -> dict[str, int]:
    with conn.connect() as db:
        return {name: db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", name))).fetchone()[0]
                for name in relations}
