"""pg_restore's parallel workers share one unbuffered stderr and write a line in pieces (``pg_restore:``, `` ``,
``error: ``, the message), so lines came out interleaved (a failure message read ``failed:  error: pg_restore:COPY
...``). ``pgrepl.tslog`` puts the pieces back: every line of the client log is whole."""

from __future__ import annotations

import re

from pgrepl import fullcopy
from pgrepl.settings import ReplicationSettings
from pgrepl.tslog import LineMender

TABLES = 150
JOBS = 8


def test_parallel_restore_log_has_whole_lines(make_database, tmp_path):
    source, target = make_database("lines_src"), make_database("lines_dst")
    with source.connect() as db:
        for n in range(TABLES):
            db.execute(f"CREATE TABLE t{n} (id int PRIMARY KEY, v text)")
            db.execute(f"INSERT INTO t{n} SELECT g, md5(g::text) FROM generate_series(1, 20) g")
            db.execute(f"CREATE INDEX t{n}_v ON t{n} (v)")
        db.commit()
    settings = ReplicationSettings(source=source, target=target, work_dir=str(tmp_path / "work"), jobs=JOBS)
    fullcopy.dump(settings, "lines")
    log_file = fullcopy.run_paths(settings, "lines").log_dir / "pg_restore.log"
    fullcopy.restore(settings, "lines", "lines")
    lines = [line.split(" ", 1)[1] for line in log_file.read_text().splitlines()]
    assert len(lines) > 3 * TABLES  # --verbose: several lines per table, from 8 workers at once
    broken = [line for line in lines if not re.match(r"pg_restore: (?!.*pg_restore: )", line)]
    assert broken == [], broken[:10]


def mend(lines: list[str]) -> list[str]:
    mender = LineMender()
    return [mender.mend(line) for line in lines]


def test_whole_lines_are_left_alone():
    lines = ['pg_restore: creating TABLE "public.users"', 'pg_restore: error: COPY failed for table "scores": ERROR:  x',
             "Command was: COPY public.scores (id, v) FROM stdin;", "    CONSTRAINT x CHECK (v > 0)", "restore finished"]
    assert mend(lines) == lines


def test_interleaved_pieces_go_back_on_their_lines():
    # worker A wrote "pg_restore:", worker B its whole line, then A the rest of its own
    assert mend(['pg_restore:pg_restore: creating CONSTRAINT "public.t12 t12_pkey"',
                 " finished item 4400 TABLE DATA t16"]) == [
        'pg_restore: creating CONSTRAINT "public.t12 t12_pkey"', "pg_restore: finished item 4400 TABLE DATA t16"]
    # the failure of the issue: an error's pieces, then another worker's whole line, then the error's message
    assert mend(["pg_restore: error: pg_restore: finished item 12 TABLE DATA users",
                 'COPY failed for table "scores": ERROR:  new row violates check constraint']) == [
        "pg_restore: finished item 12 TABLE DATA users",
        'pg_restore: error: COPY failed for table "scores": ERROR:  new row violates check constraint']
    # two lines still to come, in order
    assert mend(["pg_restore:pg_restore: error: pg_restore: third", "first", "second"]) == [
        "pg_restore: third", "pg_restore: first", "pg_restore: error: second"]


def test_a_line_that_starts_with_the_space_of_an_earlier_prefix():
    # worker A wrote "pg_restore:" at the end of nothing yet, B its "pg_restore:" + " " + message; then A's " ",
    # C's "pg_restore:", A's message: the line starts with A's space (seen in CI: "pg_restore: pg_restore: ...")
    assert mend(["pg_restore:pg_restore: launching item 1 TABLE DATA t1",
                 " pg_restore: launching item 2 TABLE DATA t2",
                 "creating INDEX \"public.t3_v\""]) == [
        "pg_restore: launching item 1 TABLE DATA t1",
        "pg_restore: launching item 2 TABLE DATA t2",
        'pg_restore: creating INDEX "public.t3_v"']
    # a level piece before the line's first program piece belongs to a line still to come
    assert mend(["pg_restore:pg_restore: first", " error: pg_restore: second", "third"]) == [
        "pg_restore: first", "pg_restore: second", "pg_restore: error: third"]
