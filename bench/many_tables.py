"""Many tables (issue 19): the time of each step of a night at 500, 2,000 and 10,000 tables on PostgreSQL servers
with the default lock settings, and the ratio per step between sizes (a linear step shows ~×4 and ~×5).

    make bench-many                                      # 500, 2000, 10000 tables, nights 1 and 2
    make bench-many BENCH_ARGS="--sizes 500,2000"

For each size: a fresh source cluster and a fresh warehouse cluster (``max_locks_per_transaction`` 64,
``max_connections`` 100: PostgreSQL's defaults; durability off as in the tests), the source built by
``devenv.many_tables`` (tables with a primary key, an index, every tenth with an FK, views, a materialized view),
then:

* night 1: everything copied in full;
* night 2: 5 % of the tables ``incremental`` (rows added to them at the source first), the rest replaced.

Each night runs the DAG's own functions in order (``pgrepl.fullcopy.run_full_copy``: dump, restore, compat views,
enrichment, users' views; then the incremental copies and a verify-like count of every table in the warehouse).
The restore's sub-steps are timed by wrapping the functions the restore calls (restore list, the swap or the
staging switch, ``pg_restore``, cleanup), whatever the restore's design: every public function of
``pgrepl.swap`` / ``pgrepl.staging`` and of ``pgrepl.fullcopy.restore_step`` is timed (calls, seconds), and the
numbers ``restore()`` returns are kept. A step that fails (e.g. ``out of shared memory``) is recorded with its
error line and the night stops there. Results: a Markdown table on stdout and ``.bench/many_tables/<stamp>.json``.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import logging
import re
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]
from common import BENCH_DIR, ROOT, log, table, write_json  # noqa: E402

from devenv.cluster import Cluster  # noqa: E402
from devenv import many_tables  # noqa: E402

SIZES = (500, 2000, 10000)
PASSWORD = "bench-many-pw"
SHARED_MEMORY = "out of shared memory"
#: pg_dump locks every dumped table in one transaction: a default server (64 x 122 backends = ~7,800 lock slots)
#: cannot dump 10,000 tables whatever the project does; --source-locks raises the source's setting above this size
SOURCE_LOCKS_ABOVE = 5000


# -- timing the restore's inner functions --------------------------------------------------------------

class Timings:
    """``{name: [calls, seconds]}`` of wrapped functions (outermost calls only, per name)."""

    def __init__(self) -> None:
        self.items: dict[str, list] = {}
        self._depth: dict[str, int] = {}

    def wrap(self, module, attr: str, label: str, detail=None) -> None:
        """Time ``module.attr`` under ``label`` (plus ``detail(*args)`` when given: e.g. which schema)."""
        fn = getattr(module, attr)
        if getattr(fn, "_bench_wrapped", False) or inspect.isgeneratorfunction(fn):
            return

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            name = f"{label} {detail(*args, **kwargs)}" if detail else label
            depth = self._depth.get(label, 0)
            self._depth[label] = depth + 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[label] = depth
                if depth == 0:
                    item = self.items.setdefault(name, [0, 0.0])
                    item[0] += 1
                    item[1] += time.perf_counter() - t0

        timed._bench_wrapped = True
        setattr(module, attr, timed)

    def reset(self) -> None:
        self.items.clear()


#: what the last ``restore()`` returned (its own sub-step figures, whatever the design)
RESTORED: dict = {}


def _capture_restore() -> None:
    from pgrepl import fullcopy

    original = fullcopy.restore
    if getattr(original, "_bench_wrapped", False):
        return

    @functools.wraps(original)
    def restore(*args, **kwargs):
        returned = original(*args, **kwargs)
        RESTORED.update(returned or {})
        return returned

    restore._bench_wrapped = True
    fullcopy.restore = restore


#: private functions worth a line of their own (the switch's parts)
PRIVATE_TIMED = {"_check_kept_dependencies", "_switch_once", "_staying", "_move_relation"}


def _schema_kind(db, schema: str, *args, **kwargs) -> str:
    """``_pgrepl_prev_public`` -> ``(_pgrepl_prev_*)``: which kind of schema a batched drop was dropping."""
    return "(" + (re.sub(r"^(_pgrepl_[a-z]+_).*$", r"\1*", schema) if schema.startswith("_pgrepl_") else schema) + ")"


def instrument(timings: Timings) -> list[str]:
    """Wrap the public functions of the restore's modules (whichever exist); return the modules wrapped."""
    import importlib

    _capture_restore()
    wrapped = []
    for name in ("pgrepl.swap", "pgrepl.staging", "pgrepl.fullcopy.restore_step", "pgrepl.restore_list"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        wrapped.append(name)
        short = name.rsplit(".", 1)[-1]
        for attr, value in list(vars(module).items()):
            if (attr.startswith("_") and attr not in PRIVATE_TIMED) or not inspect.isfunction(value) or not value.__module__.startswith("pgrepl"):
                continue
            if attr in {"restore", "refresh_after_incremental", "restore_environment", "rollback"}:
                continue
            # a function imported from another module is timed under its home module's name
            home = value.__module__.rsplit(".", 1)[-1]
            timings.wrap(module, attr, f"{home if home != short else short}.{attr}",
                         _schema_kind if attr == "drop_schema_in_batches" else None)
    return wrapped


# -- one size ------------------------------------------------------------------------------------------

def new_cluster(name: str, locks: int = 0) -> Cluster:
    """A throwaway server with PostgreSQL's default lock settings (``locks``: another max_locks_per_transaction)."""
    cluster = Cluster(name, base_dir=str(BENCH_DIR), settings={"max_locks_per_transaction": locks} if locks else {})
    cluster.start()
    got, conns = cluster.execute("SELECT current_setting('max_locks_per_transaction'), "
                                 "current_setting('max_connections')")[0]
    if (got, conns) != (str(locks or 64), "100"):
        raise SystemExit(f"{name}: max_locks_per_transaction={got}, max_connections={conns}: not the settings asked")
    return cluster


def shared_memory_errors(*clusters: Cluster) -> int:
    return sum((c.root / "server.log").read_text(errors="replace").count(SHARED_MEMORY) for c in clusters)


def first_error_line(exc: BaseException, log_dir: Path | None = None) -> str:
    """The line of a failure that says what went wrong (``out of shared memory`` first), from the exception or
    the clients' logs (pg_dump's and pg_restore's output goes to ``log_dir``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if log_dir is not None and log_dir.is_dir():
        for path in sorted(log_dir.glob("*.log")):
            lines += [f"{path.stem}: {line.strip()}" for line in path.read_text(errors="replace").splitlines()
                      if "error" in line.lower()]
    for marker in (SHARED_MEMORY, "ERROR", "error:"):
        for line in lines:
            if marker in line:
                return re.sub(r"\s+", " ", line)[:200]
    return re.sub(r"\s+", " ", (lines or [type(exc).__name__])[0])[:200]


def run_night(settings, key: str, timings: Timings, clusters) -> dict:
    """One night: run_full_copy, the incremental copies, then a count of every warehouse table."""
    from pgrepl import fullcopy, incremental, verify

    result: dict = {"steps": {}, "error": None}
    steps = result["steps"]
    timings.reset()
    RESTORED.clear()
    errors_before = shared_memory_errors(*clusters)
    t_night = time.perf_counter()
    try:
        t0 = time.perf_counter()
        copied = fullcopy.run_full_copy(settings, key)
        steps["full copy (run_full_copy)"] = time.perf_counter() - t0
        for name in ("dump_seconds", "restore_seconds", "compat_seconds", "enrichment_seconds"):
            steps[name.replace("_seconds", "")] = copied[name]
        result["restore_returned"] = {k: v for k, v in RESTORED.items() if isinstance(v, (int, float))
                                      or (isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()))}
        t0 = time.perf_counter()
        tables = incremental.order_incremental_tables(settings.source, settings.incremental_tables)
        for table_name in tables:
            incremental.copy_incremental(settings.source, settings.target, table_name,
                                         incremental_tables=settings.incremental_tables)
        steps["incremental copies"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fullcopy.refresh_after_incremental(settings, copied["refresh_after_incremental"])
        steps["refresh views"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        expected = {**copied["source_counts"]}
        try:
            verify.verify_counts(settings.target, {k: v for k, v in expected.items()})
            steps["verify (verify_counts)"] = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - recorded: verify's own limit
            steps["verify (verify_counts)"] = None
            result["verify_error"] = first_error_line(exc)
        t0 = time.perf_counter()
        counted = count_in_batches(settings.target, list(expected))
        steps["count every table (batches of 500)"] = time.perf_counter() - t0
        wrong = {k: (v, counted.get(k)) for k, v in expected.items() if counted.get(k) != v}
        if wrong:
            result["count_mismatches"] = len(wrong)
    except Exception as exc:  # noqa: BLE001 - a failing step is a result ("before" figures)
        result["error"] = first_error_line(exc, Path(settings.work_dir) / key / "logs")
        log(f"  failed: {result['error']}")
    result["night_seconds"] = round(time.perf_counter() - t_night, 3)
    steps["whole night"] = None if result["error"] else result["night_seconds"]
    result["sub_steps"] = {name: {"calls": calls, "seconds": round(seconds, 3)}
                           for name, (calls, seconds) in sorted(timings.items.items(), key=lambda kv: -kv[1][1])}
    result["out_of_shared_memory_in_server_logs"] = shared_memory_errors(*clusters) - errors_before
    result["steps"] = {k: (None if v is None else round(v, 3)) for k, v in steps.items()}
    return result


def count_in_batches(target, keys: list[str], batch: int = 500) -> dict[str, int]:
    """Exact count of every table, one short transaction per ``batch`` tables (bounded locks)."""
    from psycopg import sql

    counts = {}
    with target.connect() as db:
        for i in range(0, len(keys), batch):
            for key in keys[i:i + batch]:
                schema, name = key.split(".", 1)
                counts[key] = db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]
            db.commit()
    return counts


def run_size(n: int, args, timings: Timings) -> dict:
    from pgrepl.settings import ReplicationSettings, TableMode, TableName

    log(f"{n} tables: starting clusters")
    source_locks = args.source_locks if n > SOURCE_LOCKS_ABOVE else 0
    if source_locks:
        log(f"{n} tables: the source gets max_locks_per_transaction={source_locks} (pg_dump's own need)")
    source_cluster = new_cluster(f"many-src-{n}", source_locks)
    target_cluster = new_cluster(f"many-wh-{n}")
    work = Path(BENCH_DIR) / "many_tables" / f"work-{n}"
    shutil.rmtree(work, ignore_errors=True)  # no log of an earlier invocation
    try:
        source = source_cluster.create_database("source", "many_source", PASSWORD)
        target = target_cluster.create_database("warehouse", "many_warehouse", PASSWORD)
        built = many_tables.build(source, n, rows=args.rows)
        log(f"{n} tables: source built in {built.seconds:.1f} s")
        result = {"tables": n, "build_seconds": built.seconds, "nights": {}, "source_locks": source_locks or 64}
        base = dict(source=source, target=target, work_dir=str(work), jobs=args.jobs)
        night1 = ReplicationSettings(**base)
        kept = many_tables.pick_incremental(n, args.share)
        night2 = ReplicationSettings(**base, backup_mode={TableName(s, t): TableMode.of("incremental") for s, t in kept})
        clusters = (source_cluster, target_cluster)
        log(f"{n} tables: night 1 (full)")
        result["nights"]["1"] = run_night(night1, "night1", timings, clusters)
        if result["nights"]["1"]["error"] is None:
            many_tables.add_rows(source, kept, 2)
            log(f"{n} tables: night 2 ({len(kept)} tables incremental)")
            result["nights"]["2"] = run_night(night2, "night2", timings, clusters)
        with target.connect() as db:
            result["schemas_left"] = [r[0] for r in db.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE '\\_pgrepl\\_%' AND nspname <> '_pgrepl' "
                "ORDER BY 1").fetchall()]
        return result
    finally:
        source_cluster.stop()
        target_cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


# -- report --------------------------------------------------------------------------------------------

def render(results: list[dict], min_seconds: float) -> str:
    out = []
    sizes = [r["tables"] for r in results]
    out.append(table(["tables", "source build (s)", "source max_locks_per_transaction", "warehouse"],
                     [[r["tables"], r["build_seconds"], r.get("source_locks", 64), 64] for r in results]))
    for night in ("1", "2"):
        rows_by_step: dict[str, dict[int, object]] = {}
        for r in results:
            got = r["nights"].get(night)
            if not got:
                continue
            for step, seconds in got["steps"].items():
                rows_by_step.setdefault(step, {})[r["tables"]] = seconds
            for name, value in (got.get("restore_returned") or {}).items():
                figures = value if isinstance(value, dict) else ({name: value} if name.endswith("_seconds") else {})
                for sub, seconds in figures.items():
                    rows_by_step.setdefault(f"  restore() {sub}", {})[r["tables"]] = seconds
            for step, item in got["sub_steps"].items():
                label = "  " + step
                rows_by_step.setdefault(label, {})[r["tables"]] = item["seconds"]
        rows_by_step = {k: v for k, v in rows_by_step.items() if v}
        headers = ["night " + night + " step"] + [f"{n} (s)" for n in sizes]
        headers += [f"×{b // a if b % a == 0 else round(b / a, 1)} ({a}→{b})" for a, b in zip(sizes, sizes[1:])]
        rows = []
        for step, by_size in rows_by_step.items():
            values = [by_size.get(n) for n in sizes]
            if step.startswith("  ") and all((v or 0) < min_seconds for v in values):
                continue
            ratios = []
            for a, b in zip(values, values[1:]):
                ratios.append(f"{b / a:.1f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0
                              else "-")
            rows.append([step] + ["FAILED" if v is None and n in by_size else ("-" if v is None else v)
                                  for v, n in zip(values, sizes)] + ratios)
        out.append("")
        out.append(table(headers, rows))
        for r in results:
            got = r["nights"].get(night)
            if got and (got["error"] or got.get("verify_error")):
                failed = f"FAILED after {got['night_seconds']} s: {got['error']}" if got["error"] else ""
                out.append(f"- {r['tables']} tables, night {night}: {failed} "
                           f"{('verify: ' + got['verify_error']) if got.get('verify_error') else ''}".rstrip())
            if got and got["out_of_shared_memory_in_server_logs"]:
                out.append(f"- {r['tables']} tables, night {night}: 'out of shared memory' "
                           f"{got['out_of_shared_memory_in_server_logs']}× in the servers' logs")
    for r in results:
        if r.get("schemas_left"):
            out.append(f"- {r['tables']} tables: schemas left in the warehouse: {', '.join(r['schemas_left'])}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="table counts (default 500,2000,10000)")
    parser.add_argument("--share", type=float, default=0.05, help="share of tables incremental on night 2")
    parser.add_argument("--rows", type=int, default=3, help="rows per table")
    parser.add_argument("--jobs", type=int, default=2, help="PG_RESTORE_JOBS")
    parser.add_argument("--source-locks", type=int, default=0,
                        help=f"max_locks_per_transaction of the SOURCE server above {SOURCE_LOCKS_ABOVE} tables "
                             "(default: PostgreSQL's 64; pg_dump alone locks every table in one transaction)")
    parser.add_argument("--min-seconds", type=float, default=0.05, help="hide sub-steps faster than this")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the throwaway clusters on a plain kill too
    sizes = [int(s) for s in args.sizes.split(",")]
    BENCH_DIR.mkdir(exist_ok=True)
    (BENCH_DIR / "many_tables").mkdir(exist_ok=True)
    timings = Timings()
    wrapped = instrument(timings)  # imports the project (and Airflow's logging set-up) before the handler below
    log_file = BENCH_DIR / "many_tables" / "pgrepl.log"
    handler = logging.FileHandler(log_file, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pgrepl_log = logging.getLogger("pgrepl")
    pgrepl_log.addHandler(handler)
    pgrepl_log.setLevel(logging.INFO)
    pgrepl_log.propagate = False
    log(f"the project's log lines: {log_file}")
    log(f"timing the functions of {', '.join(wrapped)}")
    results = []
    for n in sizes:
        results.append(run_size(n, args, timings))
        print(render(results, args.min_seconds), flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = BENCH_DIR / "many_tables" / f"{stamp}.json"
    write_json(path, {"args": vars(args), "modules": wrapped, "results": results,
                      "commit": _commit()})
    print()
    print(render(results, args.min_seconds))
    log(f"results: {path}")
    return 0


def _commit() -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


if __name__ == "__main__":
    raise SystemExit(main())
