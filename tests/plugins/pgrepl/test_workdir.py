"""The work folder: stale dumps, the failed dump kept for diagnosis, free space against the last dump's size."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from airflow.sdk.exceptions import AirflowFailException

from pgrepl import fullcopy, workdir


def make_dump(root, key: str, size: int, age: float) -> None:
    dump = root / key / "dump"
    dump.mkdir(parents=True)
    (dump / "toc.dat").write_bytes(b"x" * size)
    stamp = time.time() - age
    os.utime(dump, (stamp, stamp))


def test_prune_keeps_the_newest_failed_dump_only(tmp_path):
    make_dump(tmp_path, "night_1", 10, age=300)
    make_dump(tmp_path, "night_2", 10, age=200)
    make_dump(tmp_path, "night_3", 10, age=100)
    make_dump(tmp_path, "tonight", 10, age=0)  # the current run's own folder is never touched
    (tmp_path / "night_1" / "logs").mkdir()
    (tmp_path / "dump_to_s3").mkdir()  # another DAG's folder: no dump/ inside, left alone
    removed = workdir.prune_failed_dumps(tmp_path, "tonight")
    assert sorted(removed) == [str(tmp_path / "night_1" / "dump"), str(tmp_path / "night_2" / "dump")]
    assert (tmp_path / "night_3" / "dump").is_dir() and (tmp_path / "tonight" / "dump").is_dir()
    assert (tmp_path / "night_1" / "logs").is_dir() and (tmp_path / "dump_to_s3").is_dir()
    assert workdir.prune_failed_dumps(tmp_path, "tonight") == []


def test_free_space_against_the_last_successful_dump(tmp_path):
    assert workdir.check_free_space(tmp_path)["needed_bytes"] is None  # first night: nothing to compare with
    make_dump(tmp_path, "good", 3000, age=0)
    assert workdir.record_successful_dump(tmp_path, tmp_path / "good" / "dump", "good") == 3000
    assert workdir.check_free_space(tmp_path)["needed_bytes"] == 3000
    free = shutil.disk_usage(tmp_path).free
    (tmp_path / workdir.LAST_DUMP_RECORD).write_text(json.dumps({"bytes": free * 4, "run": "big_night"}))
    make_dump(tmp_path, "failed_night", 10, age=0)
    with pytest.raises(workdir.WorkDirError) as caught:
        workdir.check_free_space(tmp_path)
    message = str(caught.value)
    assert f"{workdir.human(free * 4)}" in message and "free but the last successful dump (big_night) took" in message
    assert str(tmp_path / "failed_night" / "dump") in message  # what can go


def test_human_sizes():
    assert workdir.human(512) == "512 B"
    assert workdir.human(1536) == "1.5 KiB"
    assert workdir.human(3 * 1024**3) == "3.0 GiB"


def test_preflight_names_both_figures(replication_env, tmp_path):
    from pgrepl.tasks import preflight

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / workdir.LAST_DUMP_RECORD).write_text(json.dumps({"bytes": 2**60, "run": "huge"}))
    with pytest.raises(AirflowFailException, match=r"REPLICATION_WORK_DIR .* free but the last successful dump \(huge\) took 1048576\.0 TiB"):
        preflight("manual__space")
    # the lease was given back: the next run is not blocked by this refusal
    from pgrepl.settings import load_replication

    with load_replication().target.connect() as db:
        assert db.execute("SELECT count(*) FROM _pgrepl.lease").fetchone()[0] == 0


def test_a_failed_restore_makes_its_dump_stale_and_a_success_records_the_size(source_db, target_db, tmp_path):
    from pgrepl.settings import ReplicationSettings

    settings = ReplicationSettings(source=source_db, target=target_db, work_dir=str(tmp_path / "work"), jobs=2)
    paths = fullcopy.run_paths(settings, "night")
    assert workdir.fresh_dump_reason(paths.root, paths.dump_dir).startswith("no dump at")
    fullcopy.dump(settings, "night")
    assert workdir.fresh_dump_reason(paths.root, paths.dump_dir) is None
    with source_db.connect() as db:  # a row the restored CHECK rejects: the dump fails every restore
        db.execute("CREATE FUNCTION ok(v int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true'")
        db.execute("CREATE TABLE checked (id int PRIMARY KEY, v int CHECK (ok(v)))")
        db.execute("INSERT INTO checked VALUES (1, -1)")
        db.execute("CREATE OR REPLACE FUNCTION ok(v int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT v >= 0'")
        db.commit()
    fullcopy.dump(settings, "night")
    with pytest.raises(RuntimeError, match="check constraint"):
        fullcopy.restore(settings, "night", "night")
    assert "a restore attempt already failed on this dump" in workdir.fresh_dump_reason(paths.root, paths.dump_dir)
    with source_db.connect() as db:
        db.execute("DELETE FROM checked")
        db.commit()
    fullcopy.dump(settings, "night")  # what the restore task does when the reason is given
    assert workdir.fresh_dump_reason(paths.root, paths.dump_dir) is None  # a new dump is fresh
    fullcopy.restore(settings, "night", "night")
    assert not paths.dump_dir.exists()
    assert workdir.last_successful_dump(settings.work_dir)["bytes"] > 0


def test_a_consumed_dump_is_renamed_at_once_and_deleted_in_the_background(tmp_path):
    make_dump(tmp_path, "night_1", 1 << 20, age=0)
    dump = tmp_path / "night_1" / "dump"
    trash = workdir.remove_consumed_dump(dump)
    assert not dump.exists() and trash.parent == dump.parent and trash.name.startswith(workdir.REMOVING_PREFIX)
    assert workdir.failed_dumps(tmp_path) == []  # no longer taken for a dump
    deadline = time.monotonic() + 30
    while trash.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not trash.exists()
    assert workdir.remove_consumed_dump(dump) is None  # nothing left to remove


def test_prune_finishes_a_background_removal_cut_short(tmp_path):
    make_dump(tmp_path, "night_1", 10, age=0)
    left = tmp_path / "night_1" / f"{workdir.REMOVING_PREFIX}123"  # the worker died before rm -rf was done
    (tmp_path / "night_1" / "dump").rename(left)
    workdir.prune_failed_dumps(tmp_path, "night_2")
    assert not left.exists() and (tmp_path / "night_1").is_dir()
