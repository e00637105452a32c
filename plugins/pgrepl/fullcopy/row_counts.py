"""Row counts of the dumped tables, read from the dump itself (no source connection, no lock on the source).

A directory-format dump holds one data file per ``TABLE DATA`` entry of its ``toc.dat`` (:func:`pgrepl.toc.read_entries`):
``1234.dat``, or ``1234.dat.gz`` on disk when ``pg_dump --compress`` is above 0 (``toc.dat`` names the file without
the suffix either way). The file is ``COPY ... TO stdout`` text: one line per row (a newline inside a value is
written ``\\n``), then a line ``\\.`` and two empty lines. Counting its newlines therefore counts its rows.

The counts keep the shape of what ``count(*)`` in the dump's snapshot gave before: ``{"schema.table": rows}`` for
every dumped table, a partitioned (or inheritance) parent counting the rows of all its descendants, as
``SELECT count(*) FROM parent`` does. The dump's snapshot is the one these rows were read in, so the counts are
exactly what the restore loads.

While ``pg_dump`` still writes, :class:`EarlyCounter` counts the data files it has finished (those ending with
the end marker, unchanged between two looks), so that after it exits only the files still open at the end are read.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pgrepl.catalog import Relation
from pgrepl.errors import PgreplError
from pgrepl.toc import TocEntry, read_entries

#: bytes read at a time (bytes.count over large chunks: about 1 GB/s on one core)
CHUNK = 8 << 20
#: plain data files from this size on are counted by ``wc -l``
WC_MIN_BYTES = 4 << 20
#: how every data file of ``pg_dump --format=directory`` ends
TRAILER = b"\\.\n\n\n"


class DumpCountError(PgreplError, RuntimeError):
    """A data file of the dump is missing or not what pg_dump writes; a fresh dump is needed."""

    retryable = True


def _data_path(dump_dir: Path, filename: str, present: set[str] | None = None) -> Path:
    """The file on disk for a ``toc.dat`` file name: ``1234.dat`` or, compressed, ``1234.dat.gz``.

    :param present: the names in ``dump_dir`` (one directory listing for every entry), read here if not given.
    """
    present = set(os.listdir(dump_dir)) if present is None else present
    for name in (filename, filename + ".gz"):
        if name in present:
            return dump_dir / name
    others = sorted(name for name in present if name.startswith(filename + "."))
    if others:
        raise DumpCountError(f"dump data file {others[0]} in {dump_dir}: only uncompressed and gzip dumps "
                             "(PG_DUMP_COMPRESSION 0-9) can be counted")
    raise DumpCountError(f"dump data file {filename} is missing in {dump_dir}: take a fresh dump")


def _count_plain(path: Path) -> tuple[int, bytes]:
    """``(newlines, last bytes)`` of an uncompressed file: a big one by ``wc -l`` where there is one (coreutils counts
    newlines about three times as fast as Python, and on a core of its own), else :func:`_count_plain_python`
    (a small file costs less than starting a process)."""
    wc = shutil.which("wc") if path.stat().st_size >= WC_MIN_BYTES else None
    if wc is None:
        return _count_plain_python(path)
    with open(path, "rb") as handle:
        counted = subprocess.run([wc, "-l"], stdin=handle, capture_output=True, check=False)
    if counted.returncode != 0:
        raise OSError(f"wc -l failed: {counted.stderr.decode(errors='replace').strip()}")
    newlines = int(counted.stdout.split()[0])
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - len(TRAILER)))
        return newlines, handle.read()


def _count_plain_python(path: Path) -> tuple[int, bytes]:
    """``(newlines, last bytes)`` of an uncompressed file, read into one buffer sized for it (at most :data:`CHUNK`)."""
    newlines, tail = 0, b""
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(max(1, min(CHUNK, os.fstat(handle.fileno()).st_size)))
        while n := handle.readinto(buffer):
            newlines += buffer.count(b"\n", 0, n)
            tail = (tail + bytes(buffer[max(0, n - len(TRAILER)):n]))[-len(TRAILER):]
    return newlines, tail


def _count_gzip(path: Path) -> tuple[int, bytes]:
    newlines, tail = 0, b""
    with gzip.open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            newlines += chunk.count(b"\n")
            tail = (tail + chunk[-len(TRAILER):])[-len(TRAILER):]
    return newlines, tail


def count_data_file(path: str | Path) -> int:
    """Rows of one data file (plain or ``.gz``): its lines before the closing ``\\.``."""
    path = Path(path)
    try:
        newlines, tail = (_count_gzip if path.suffix == ".gz" else _count_plain)(path)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DumpCountError(f"cannot read dump data file {path}: {exc}") from exc
    if tail != TRAILER:
        raise DumpCountError(f"dump data file {path} does not end with the COPY end marker: the dump is incomplete, "
                             "take a fresh dump")
    return newlines - TRAILER.count(b"\n")


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def ends_with_marker(path: Path, size: int | None = None) -> bool:
    """Whether a plain data file (of ``size`` bytes, read if not given) ends with the COPY end marker: pg_dump
    writes it last, and a row can never be ``\\.`` (pg_dump escapes a lone backslash)."""
    size = path.stat().st_size if size is None else size
    if size < len(TRAILER):
        return False
    with open(path, "rb") as handle:
        handle.seek(size - len(TRAILER))
        return handle.read(len(TRAILER)) == TRAILER


class EarlyCounter:
    """Counts the plain data files of a dump folder that ``pg_dump`` has finished while it still writes the others.

    Use as a context manager around the dump, started on an empty (or absent) folder; :attr:`counted` is ``{file
    name: (identity, rows)}``, which :func:`count_entries` reuses for every file whose identity (inode, size,
    modification time) has not changed since."""

    def __init__(self, dump_dir: str | Path, interval: float = 0.05):
        self.dump_dir = Path(dump_dir)
        self.interval = interval
        self.counted: dict[str, tuple[tuple, int]] = {}
        self._seen: dict[str, tuple] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgrepl-early-count", daemon=True)

    def __enter__(self) -> "EarlyCounter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._look()
            except OSError:  # the folder is being created or replaced: look again
                continue

    def _look(self) -> None:
        if not self.dump_dir.is_dir():
            return
        for name in os.listdir(self.dump_dir):
            if self._stop.is_set():
                return
            if not name.endswith(".dat") or name in self.counted:
                continue
            path = self.dump_dir / name
            identity = _identity(path)
            previous, self._seen[name] = self._seen.get(name), identity
            if identity != previous or not ends_with_marker(path, identity[1]):
                continue  # still growing, or not looked at twice yet
            try:
                rows = count_data_file(path)
            except DumpCountError:
                continue
            if _identity(path) == identity:
                self.counted[name] = (identity, rows)


def count_entries(dump_dir: str | Path, entries: Iterable[TocEntry], jobs: int = 4,
                  counted: Mapping[str, tuple[tuple, int]] | None = None) -> dict[tuple[str, str], int]:
    """``{(schema, table): rows}`` of every ``TABLE DATA`` entry, ``jobs`` files at a time.

    :param counted: :attr:`EarlyCounter.counted`: rows of files counted while the dump ran, reused when the file
        still has the size it had then.
    """
    dump_dir = Path(dump_dir)
    data = [e for e in entries if e.desc == "TABLE DATA" and e.filename]
    present = set(os.listdir(dump_dir))
    paths = [_data_path(dump_dir, e.filename, present) for e in data]
    counted = counted or {}

    def rows_of(path: Path) -> int:
        early = counted.get(path.name)
        if early is not None and _identity(path) == early[0]:
            return early[1]
        return count_data_file(path)

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="pgrepl-count") as pool:
        counts = list(pool.map(rows_of, paths))
    result: dict[tuple[str, str], int] = {}
    for entry, rows in zip(data, counts):
        key = (entry.namespace or "", entry.tag)
        result[key] = result.get(key, 0) + rows
    return result


def table_counts(dump_dir: str | Path, tables: Iterable[Relation], parents: Mapping[int, int],
                 jobs: int = 4, counted: Mapping[str, tuple[tuple, int]] | None = None) -> dict[str, int]:
    """Rows per dumped table, keyed ``schema.table`` as the ``dump`` XCom's ``source_counts``.

    A partitioned table is counted with its partitions' rows; any other table with its own rows and those of its
    inheritance children, as ``count(*)`` does. A plain table the dump holds no data entry for (a table of an
    extension, which ``CREATE EXTENSION`` fills) is left out: the dump does not say what the warehouse gets.

    :param tables: the tables whose rows the dump holds (:class:`~pgrepl.catalog.Relation`, kinds ``r`` and ``p``).
    :param parents: ``child -> parent`` (``pg_inherits``).
    :param jobs: data files read at a time.
    :param counted: files counted while the dump ran (:class:`EarlyCounter`).
    """
    tables = list(tables)
    own = count_entries(dump_dir, read_entries(dump_dir), jobs, counted)
    counted = [r for r in tables if r.kind == "p" or (r.schema, r.name) in own]
    totals = {r.oid: own.get((r.schema, r.name), 0) for r in counted}
    for r in counted:
        rows = own.get((r.schema, r.name), 0)
        seen = {r.oid}
        parent = parents.get(r.oid)
        while rows and parent is not None and parent not in seen:  # each ancestor counts these rows too
            seen.add(parent)
            if parent in totals:
                totals[parent] += rows
            parent = parents.get(parent)
    return {f"{r.schema}.{r.name}": totals[r.oid] for r in counted}
