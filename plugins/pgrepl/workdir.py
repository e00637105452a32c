"""The work folder (``REPLICATION_WORK_DIR``) between nights: which dump is stale, which to keep, is there room.

Layout: ``<work>/<run key>/dump`` (the dump, removed after a successful restore), ``<run key>/logs``,
``<run key>/restore.list``; this module adds two small records:

* ``<run key>/restore-failed`` — written when a restore attempt ran ``pg_restore`` on this dump and failed. The dump
  is then stale: the data that failed the restore (or the fix made since) is the source's, so the next restore
  attempt, whether a retry or a task cleared in the UI, takes a fresh dump first (:func:`fresh_dump_reason`).
* ``<work>/last-successful-dump.json`` — the size of the last dump a restore consumed successfully; ``preflight``
  checks the free space against it (:func:`check_free_space`).

Failed runs leave their dump for diagnosis: :func:`prune_failed_dumps` keeps the newest one and removes the others.
A consumed dump is renamed ``<run key>/dump.removing.<n>`` and deleted by a detached process
(:func:`remove_consumed_dump`): the night does not wait for the file system to free gigabytes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from pgrepl.errors import PgreplError

log = logging.getLogger(__name__)

FAILED_MARKER = "restore-failed"
#: name prefix of a consumed dump folder being deleted in the background
REMOVING_PREFIX = "dump.removing."
LAST_DUMP_RECORD = "last-successful-dump.json"


class WorkDirError(PgreplError):
    """The work folder cannot take tonight's dump; the message names both figures. No retry: space does not free
    itself (remove the kept dump, or grow the volume, then clear ``preflight``)."""

    retryable = False


def human(size: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


def folder_size(path: Path) -> int:
    """Bytes of every file under ``path`` (0 when missing)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


# -- a dump a failed restore already used ---------------------------------------------------------

def mark_restore_failed(run_root: Path, error: BaseException | str) -> None:
    """Record that a restore attempt ran ``pg_restore`` on this run's dump and failed."""
    try:
        run_root.mkdir(parents=True, exist_ok=True)
        (run_root / FAILED_MARKER).write_text(json.dumps({"at": time.time(), "error": str(error)[:500]}))
    except OSError as exc:  # the restore's own error matters more
        log.warning("cannot record the failed restore in %s: %s", run_root, exc)


def fresh_dump_reason(run_root: Path, dump_dir: Path) -> str | None:
    """Why the restore must dump again before restoring (``None``: the dump is fresh and there).

    A dump that a restore attempt already failed on is stale: restarting from it replays the failure even after the
    source's data was fixed. A missing dump (removed after a successful restore, or pruned) is taken again too.
    """
    marker = run_root / FAILED_MARKER
    if marker.exists() and dump_dir.is_dir():
        try:
            info = json.loads(marker.read_text())
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("at", 0)))
        except (OSError, ValueError):
            when = "an earlier attempt"
        return f"a restore attempt already failed on this dump ({when}): the source may have been fixed since"
    if not dump_dir.is_dir():
        return f"no dump at {dump_dir}"
    return None


def clear_restore_failed(run_root: Path) -> None:
    (run_root / FAILED_MARKER).unlink(missing_ok=True)


# -- space ------------------------------------------------------------------------------------------

def record_successful_dump(work_dir: str | Path, dump_dir: Path, run_key: str) -> int:
    """Remember the size of a dump a restore consumed successfully (before it is removed); return it."""
    size = folder_size(dump_dir)
    record = Path(work_dir) / LAST_DUMP_RECORD
    try:
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"bytes": size, "run": run_key, "at": time.time()}))
        tmp.replace(record)
    except OSError as exc:
        log.warning("cannot record the dump size in %s: %s", record, exc)
    return size


def last_successful_dump(work_dir: str | Path) -> dict | None:
    try:
        record = json.loads((Path(work_dir) / LAST_DUMP_RECORD).read_text())
        return record if isinstance(record.get("bytes"), int) else None
    except (OSError, ValueError, AttributeError):
        return None


def check_free_space(work_dir: str | Path) -> dict:
    """Fail when the work folder has less free space than the last successful dump took.

    Returns ``{"free_bytes", "needed_bytes"}`` (``needed_bytes`` is ``None`` before the first successful night).
    """
    free = shutil.disk_usage(work_dir).free
    last = last_successful_dump(work_dir)
    if last is None:
        log.info("REPLICATION_WORK_DIR %s: %s free (no successful dump recorded yet)", work_dir, human(free))
        return {"free_bytes": free, "needed_bytes": None}
    needed = last["bytes"]
    if free < needed:
        kept = [str(p) for p in failed_dumps(work_dir)]
        hint = f"; the dump kept for diagnosis ({', '.join(kept)}) can be removed" if kept else ""
        raise WorkDirError(
            f"REPLICATION_WORK_DIR {work_dir} has {human(free)} free but the last successful dump "
            f"({last.get('run', '?')}) took {human(needed)}: free space there or point REPLICATION_WORK_DIR at a "
            f"bigger volume{hint}"
        )
    log.info("REPLICATION_WORK_DIR %s: %s free, the last successful dump took %s", work_dir, human(free), human(needed))
    return {"free_bytes": free, "needed_bytes": needed}


# -- pruning ----------------------------------------------------------------------------------------

def remove_consumed_dump(dump_dir: Path) -> Path | None:
    """Remove a dump the restore has consumed without waiting for it (unlinking 2 GB of files costs ~0.5 s).

    The folder is renamed at once beside itself (``dump.removing.<n>``: nothing takes it for a dump any more) and
    deleted by a detached ``rm -rf``; a deletion a crash interrupts is finished by :func:`prune_failed_dumps`.
    Returns the folder being deleted (``None`` when there was nothing to remove)."""
    trash = dump_dir.with_name(f"{REMOVING_PREFIX}{time.time_ns()}")
    try:
        dump_dir.rename(trash)
    except FileNotFoundError:
        return None
    except OSError as exc:  # cannot rename here: remove it in place
        log.warning("cannot rename %s before removing it (%s): removing it now", dump_dir, exc)
        shutil.rmtree(dump_dir, ignore_errors=True)
        return None
    try:
        subprocess.Popen(["rm", "-rf", "--", str(trash)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True,
                         env={"PATH": os.environ.get("PATH", os.defpath)})  # nothing of the task's environment
    except OSError as exc:
        log.warning("cannot start the removal of %s in the background (%s): removing it now", trash, exc)
        shutil.rmtree(trash, ignore_errors=True)
    return trash


def failed_dumps(work_dir: str | Path, exclude: str | None = None) -> list[Path]:
    """Dump folders left by runs (newest first), ``exclude`` (a run key) left out."""
    root = Path(work_dir)
    if not root.is_dir():
        return []
    found = [p / "dump" for p in root.iterdir() if p.is_dir() and p.name != exclude and (p / "dump").is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def prune_failed_dumps(work_dir: str | Path, current_key: str) -> list[str]:
    """Keep the newest dump another run left (the last failed night's, for diagnosis); remove the older ones.

    Call it while holding the run lease: no other run uses these folders then. Returns the removed folders.
    """
    root = Path(work_dir)
    for trash in (root.glob(f"*/{REMOVING_PREFIX}*") if root.is_dir() else []):  # a background removal cut short
        shutil.rmtree(trash, ignore_errors=True)
    dumps = failed_dumps(work_dir, exclude=current_key)
    if dumps:
        log.info("kept for diagnosis: %s (%s)", dumps[0], human(folder_size(dumps[0])))
    removed = []
    for old in dumps[1:]:
        shutil.rmtree(old, ignore_errors=True)
        log.info("removed an older failed run's dump: %s", old)
        removed.append(str(old))
    return removed
