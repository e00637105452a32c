"""Benchmark: incremental copy of >= 1 M new rows, this project's streaming COPY vs the seed's psql pipe.

The seed (pix-db-replication) ran, per incremental table::

    psql SOURCE -c "\\copy (select * from t where id > N) to stdout" | psql TARGET -c "\\copy t from stdin"

after reading ``N = max(id)`` on the target. Here both run in the same process against the same two throwaway
clusters (source and target), on an ``answers``-shaped table: ``BASE`` rows already in the target, ``NEW`` rows
to copy. Before each try the target goes back to ``BASE`` rows (delete + vacuum); methods alternate order each
round. Prints the median rows/s of ``ROUNDS`` tries per method and the ratio to the seed (target >= 1.0).

    PYTHONPATH=plugins .venv/bin/python bench/bench_incremental.py [--new 1000000] [--base 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "plugins"), str(Path(__file__).resolve().parents[1])]

from devenv.cluster import Cluster  # noqa: E402
from pgrepl.incremental import copy_incremental  # noqa: E402
from pgrepl.pgtools import client_env, tool, write_passfile  # noqa: E402
from pgrepl.settings import TableName  # noqa: E402

PASSWORD = "bench-Pw-1"
TABLE = TableName.parse("answers")
DDL = """
CREATE TABLE answers (
    id serial PRIMARY KEY, value text, result varchar(255), "assessmentId" integer, "challengeId" varchar(255) NOT NULL,
    "createdAt" timestamptz NOT NULL DEFAULT now(), "updatedAt" timestamptz NOT NULL DEFAULT now(),
    timeout integer, "elapsedTime" integer, "resultDetails" text);
CREATE INDEX answers_assessmentid_index ON answers ("assessmentId");
"""
ROWS = """
INSERT INTO answers (value, result, "assessmentId", "challengeId", "createdAt", timeout, "elapsedTime", "resultDetails")
SELECT 'answer ' || md5(i::text), (ARRAY['ok', 'ko', 'skipped'])[1 + i %% 3], 1 + i %% 200000, 'rec' || (i %% 5000),
       timestamptz '2020-01-01' + i * interval '20 seconds', CASE WHEN i %% 7 = 0 THEN 60 END, i %% 300,
       'details: ' || repeat('x', i %% 40)
FROM generate_series(%s::int, %s::int) AS i
"""


def reset_target(target, base: int) -> None:
    with target.connect(autocommit=True) as db:
        db.execute("DELETE FROM answers WHERE id > %s", (base,))
        db.execute("VACUUM answers")


def seed_method(source, target, passfile: str) -> int:
    """The seed's two psql processes joined by a pipe, after reading the target's max(id)."""
    psql = tool("psql")
    env = client_env(passfile)
    max_id = subprocess.run([psql, "-X", "-Atq", "-d", target.safe_url(), "-c", "SELECT coalesce(max(id), 0) FROM answers"],
                            env=env, check=True, capture_output=True, text=True).stdout.strip()
    copy_out = "\\copy (select * from answers where id > %d) to stdout" % int(max_id)
    copy_in = "\\copy answers from stdin"
    pipeline = " ".join([
        shlex.quote(psql), "-X -q -d", shlex.quote(source.safe_url()), "-c", shlex.quote(copy_out), "|",
        shlex.quote(psql), "-X -q -v ON_ERROR_STOP=1 -d", shlex.quote(target.safe_url()), "-c", shlex.quote(copy_in),
    ])
    subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], env=env, check=True, capture_output=True)
    return int(max_id)


def _server_cpu(cluster: Cluster) -> float:
    """CPU seconds of a cluster's postmaster and its reaped children (the backends of closed connections)."""
    pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def _children(cluster: Cluster) -> set[int]:
    pid = (cluster.data / "postmaster.pid").read_text().split()[0]
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == pid:
                found.add(int(stat.parent.name))
        except (OSError, IndexError):
            pass
    return found


def _wait_reaped(clusters, before: list[set[int]]) -> None:
    """Wait until the backends of the connections just closed are gone (their CPU then counts in cutime)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(_children(c) <= b for c, b in zip(clusters, before)):
            return
        time.sleep(0.05)


def _client_cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, clusters) -> tuple[float, float]:
    """(wall seconds, CPU seconds of client processes + both servers' backends) of one call."""
    children = [_children(c) for c in clusters]
    cpu_before = _client_cpu() + sum(_server_cpu(c) for c in clusters)
    started = time.perf_counter()
    fn()
    wall = time.perf_counter() - started
    _wait_reaped(clusters, children)
    return wall, _client_cpu() + sum(_server_cpu(c) for c in clusters) - cpu_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=1_000_000, help="new rows to copy (default 1 M)")
    parser.add_argument("--base", type=int, default=100_000, help="rows already in the target (default 100 k)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with Cluster("bench-src") as src_cluster, Cluster("bench-tgt") as tgt_cluster, tempfile.TemporaryDirectory() as tmp:
        source = src_cluster.create_database("bench_source", "bench_source_owner", PASSWORD)
        target = tgt_cluster.create_database("bench_target", "bench_target_owner", PASSWORD)
        passfile = write_passfile(os.path.join(tmp, "pgpass"), [source, target])
        print(f"loading {args.base + args.new:,} source rows ...", flush=True)
        with source.connect() as db:
            db.execute(DDL)
            db.execute(ROWS, (1, args.base + args.new))
            db.commit()
        with source.connect(autocommit=True) as db:
            db.execute("VACUUM ANALYZE answers")
        with target.connect() as db:
            db.execute(DDL)
            db.commit()
        with source.connect() as s, target.connect() as t:  # the base rows the target already has
            with s.cursor().copy(f"COPY (SELECT * FROM answers WHERE id <= {args.base}) TO STDOUT (FORMAT BINARY)") as out, \
                    t.cursor().copy("COPY answers FROM STDIN (FORMAT BINARY)") as into:
                for chunk in out:
                    into.write(chunk)
            t.commit()

        def ours():
            result = copy_incremental(source, target, TABLE)
            assert result.copied == args.new and result.mode == "append", result

        def ours_no_count():
            result = copy_incremental(source, target, TABLE, count_source=False)
            assert result.copied == args.new, result

        def seed():
            seed_method(source, target, passfile)

        def check():
            with target.connect() as db:
                count = db.execute("SELECT count(*) FROM answers").fetchone()[0]
            if count != args.base + args.new:
                raise SystemExit(f"wrong row count after a copy: {count}")

        methods = {"seed psql | psql": seed, "ours (with source count)": ours, "ours (count_source=False)": ours_no_count}
        times: dict[str, list[float]] = {name: [] for name in methods}
        cpus: dict[str, list[float]] = {name: [] for name in methods}
        order = list(methods)
        for round_no in range(args.rounds):
            for name in (order if round_no % 2 == 0 else order[::-1]):
                reset_target(target, args.base)
                wall, cpu = timed(methods[name], (src_cluster, tgt_cluster))
                times[name].append(wall)
                cpus[name].append(cpu)
                check()
                print(f"  round {round_no + 1}: {name:28s} {wall:6.2f} s wall, {cpu:6.2f} s CPU", flush=True)

    print(f"\nincremental copy of {args.new:,} new rows ({args.base:,} already in the target), medians of {args.rounds}"
          f" (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs):")
    baseline = statistics.median(times["seed psql | psql"])
    cpu_baseline = statistics.median(cpus["seed psql | psql"])
    for name, values in times.items():
        median, cpu = statistics.median(values), statistics.median(cpus[name])
        print(f"  {name:28s} {median:6.2f} s  {args.new / median:10,.0f} rows/s  ratio vs seed {baseline / median:4.2f}"
              f"   | CPU {cpu:6.2f} s  ratio vs seed {cpu_baseline / cpu:4.2f}")
    print("ratio > 1: faster (wall) / cheaper (CPU of clients + backends) than the seed")


if __name__ == "__main__":
    main()
