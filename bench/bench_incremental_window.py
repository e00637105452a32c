"""Benchmark: one night of the incremental copy (1 M new rows) before and after the late-commit window and the
row-level reconciliation (issue 13), same run, same data, ratio printed.

*Before* is ``plugins/pgrepl/incremental.py`` (and its SQL) as of ``--baseline`` (default: the commit before issue
13's change), extracted with ``git show`` and imported beside the current code; *after* is the current
``copy_incremental``. Both copy the same night into the same target, reset between tries.

The 100 M-row class is simulated by **key scale**: the ``BASE`` rows already in the warehouse carry keys spread over
``1 .. --key-space`` (default 100 M, one key every ``key_space / BASE``), so every key-range computation (the late-commit
window, the buckets) works on a 100 M-wide key space, while the row volume stays what this 2-core machine can load
(``--base``, default 2 M). The previous nights are simulated too: the last ``--window`` base rows (default 2 M,
i.e. the two previous nights of 1 M rows the margin keeps) are what the bookkeeping says may still
receive late commits, so *after* re-checks that window, as it does on a real night. The night's new rows continue
the key space (dense keys above 100 M).

Methods (interleaved, order alternating each round):

* ``before``: the baseline's copy (count + max(id) of the source, rows above the target's max(id));
* ``after``: the current copy (count + sum + max of the source, the new rows, the late-commit window compared by
  ``(count, sum(key))`` on both sides, the whole-table totals compared arithmetically);
* ``after + 10 late``: the same with 10 rows of the window missing from the target before the night (late commits):
  the window's buckets are drilled into and the 10 rows copied;
* the same three with ``count_source=False`` (``--no-count`` adds them): no whole-table count on either side.

    PYTHONPATH=plugins .venv/bin/python bench/bench_incremental_window.py [--base 2000000] [--new 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT), str(ROOT / "bench")]

from bench_incremental import DDL, PASSWORD, timed  # noqa: E402
from devenv.cluster import Cluster  # noqa: E402
from pgrepl.incremental import copy_incremental, ensure_state  # noqa: E402
from pgrepl.settings import TableName  # noqa: E402

TABLE = TableName.parse("answers")
BASELINE = "0f6d7c5"  # main before issue 13: ids only, no window, no reconciliation
ROWS = """
INSERT INTO answers (id, value, result, "assessmentId", "challengeId", "createdAt", timeout, "elapsedTime", "resultDetails")
SELECT k, 'answer ' || md5(i::text), (ARRAY['ok', 'ko', 'skipped'])[1 + i %% 3], 1 + i %% 200000, 'rec' || (i %% 5000),
       timestamptz '2020-01-01' + i * interval '20 seconds', CASE WHEN i %% 7 = 0 THEN 60 END, i %% 300,
       'details: ' || repeat('x', i %% 40)
FROM (SELECT i, CASE WHEN i <= %(base)s THEN i::int8 * %(step)s ELSE %(space)s + (i - %(base)s) END AS k
      FROM generate_series(1, %(total)s) AS i) AS g
"""


def load_baseline(commit: str, folder: Path):
    """The incremental module of ``commit``, importable beside the current one, with its own SQL folder."""
    sql_dir = folder / "sql"
    sql_dir.mkdir()
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{commit}:include/sql/incremental"],
                           check=True, capture_output=True, text=True).stdout.split()
    for name in names:
        (sql_dir / name).write_text(subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:include/sql/incremental/{name}"],
                                                   check=True, capture_output=True, text=True).stdout)
    source = folder / "baseline_incremental.py"
    source.write_text(subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:plugins/pgrepl/incremental.py"],
                                     check=True, capture_output=True, text=True).stdout)
    spec = importlib.util.spec_from_file_location("baseline_incremental", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    module.SQL_DIR = sql_dir
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=2_000_000, help="rows already in the warehouse (default 2 M)")
    parser.add_argument("--new", type=int, default=1_000_000, help="new rows of the night (default 1 M)")
    parser.add_argument("--key-space", type=int, default=100_000_000, help="keys the base rows spread over (100 M)")
    parser.add_argument("--window", type=int, default=2_000_000,
                        help="base rows in the late-commit window: the two previous nights (default 2 M)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-count", action="store_true", help="also measure count_source=False")
    parser.add_argument("--baseline", default=BASELINE, help="git commit of the 'before' code")
    args = parser.parse_args()
    step = args.key_space // args.base
    base_max = args.base * step
    window_rows = min(args.base, args.window)
    recheck_from = base_max - window_rows * step

    with Cluster("benchw-src") as src_cluster, Cluster("benchw-tgt") as tgt_cluster, \
            tempfile.TemporaryDirectory() as tmp:
        baseline = load_baseline(args.baseline, Path(tmp))
        source = src_cluster.create_database("bench_source", "bench_source_owner", PASSWORD)
        target = tgt_cluster.create_database("bench_target", "bench_target_owner", PASSWORD)
        total = args.base + args.new
        print(f"loading {total:,} source rows (base keys {step:,} apart up to {base_max:,}) ...", flush=True)
        started = time.monotonic()
        with source.connect() as db:
            db.execute(DDL)
            db.execute(ROWS, {"base": args.base, "step": step, "space": args.key_space, "total": total})
            db.commit()
        with source.connect(autocommit=True) as db:
            db.execute("VACUUM ANALYZE answers")
        with target.connect() as db:
            db.execute(DDL)
            db.commit()
        with source.connect() as s, target.connect() as t:
            with s.cursor().copy(f"COPY (SELECT * FROM answers WHERE id <= {base_max}) TO STDOUT (FORMAT BINARY)") as out, \
                    t.cursor().copy("COPY answers FROM STDIN (FORMAT BINARY)") as into:
                for chunk in out:
                    into.write(chunk)
            t.commit()
        with target.connect(autocommit=True) as db:
            db.execute("VACUUM ANALYZE answers")
        print(f"  loaded in {time.monotonic() - started:.0f} s", flush=True)
        ensure_state(target)
        with source.connect(autocommit=True) as db:
            xmin, xmax = db.execute("SELECT pg_snapshot_xmin(s)::text::int8, pg_snapshot_xmax(s)::text::int8 "
                                    "FROM pg_current_snapshot() s").fetchone()
        # the bookkeeping two quiet nights would have left: the window starts two nights of keys below the watermark
        history = [{"w": recheck_from, "xmin": xmin - 2, "xmax": xmin - 2}, {"w": recheck_from + (base_max - recheck_from) // 2,
                   "xmin": xmin - 1, "xmax": xmin - 1}, {"w": base_max, "xmin": xmin, "xmax": xmax}]
        late_keys = [base_max - i * step for i in range(1, 11)]

        def reset(late: bool) -> None:
            with target.connect(autocommit=True) as db:
                db.execute("DELETE FROM answers WHERE id > %s", (base_max,))
                missing = [k for k in late_keys if not db.execute("SELECT 1 FROM answers WHERE id = %s", (k,)).fetchone()]
                if missing:  # put back the rows a previous "late" try removed
                    with source.connect() as s, db.cursor().copy("COPY answers FROM STDIN (FORMAT BINARY)") as into:
                        with s.cursor().copy("COPY (SELECT * FROM answers WHERE id = ANY(%s)) TO STDOUT (FORMAT BINARY)",
                                             (missing,)) as out:
                            for chunk in out:
                                into.write(chunk)
                if late:
                    db.execute("DELETE FROM answers WHERE id = ANY(%s)", (late_keys,))
                db.execute("VACUUM answers")
                db.execute("INSERT INTO _pgrepl.incremental_state (table_name, key_column, history, recheck_from) "
                           "VALUES ('answers', 'id', %s::jsonb, %s) ON CONFLICT (table_name) DO UPDATE SET "
                           "history = EXCLUDED.history, recheck_from = EXCLUDED.recheck_from, kept_deleted = 0, "
                           "kept_deleted_sum = 0", (json.dumps(history), recheck_from))

        def before(count: bool):
            result = baseline.copy_incremental(source, target, TABLE, count_source=count)
            assert result.copied == args.new, result

        def after(count: bool, late: bool):
            result = copy_incremental(source, target, TABLE, count_source=count)
            assert result.copied == args.new and result.late_copied == (10 if late else 0) and result.missing == 0, result
            assert result.window == [recheck_from, base_max], result.window

        methods = {"before": (lambda: before(True), False), "after": (lambda: after(True, False), False),
                   "after + 10 late": (lambda: after(True, True), True)}
        if args.no_count:
            methods.update({"before, no count": (lambda: before(False), False),
                            "after, no count": (lambda: after(False, False), False),
                            "after + 10 late, no count": (lambda: after(False, True), True)})
        times: dict[str, list[float]] = {name: [] for name in methods}
        cpus: dict[str, list[float]] = {name: [] for name in methods}
        order = list(methods)
        for round_no in range(args.rounds):
            for name in (order if round_no % 2 == 0 else order[::-1]):
                fn, late = methods[name]
                reset(late)
                wall, cpu = timed(fn, (src_cluster, tgt_cluster))
                times[name].append(wall)
                cpus[name].append(cpu)
                print(f"  round {round_no + 1}: {name:28s} {wall:6.2f} s wall, {cpu:6.2f} s CPU", flush=True)

    print(f"\none night of {args.new:,} new rows on {args.base:,} warehouse rows over a {args.key_space:,}-key space, "
          f"late-commit window {window_rows:,} rows; medians of {args.rounds} (load average now "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs):")
    for name in methods:
        ref = "before, no count" if "no count" in name else "before"
        median, cpu = statistics.median(times[name]), statistics.median(cpus[name])
        print(f"  {name:28s} {median:6.2f} s  CPU {cpu:6.2f} s   time ratio after/before "
              f"{median / statistics.median(times[ref]):4.2f}  CPU ratio {cpu / statistics.median(cpus[ref]):4.2f}")


if __name__ == "__main__":
    main()
