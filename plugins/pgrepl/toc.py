"""Dependencies of a dump's TOC entries, read from the ``toc.dat`` of a directory-format dump.

``pg_restore -l`` prints each entry's dump id and catalog id but not what it depends on. A ``COMMENT`` entry
carries no catalog id at all (``0 0``): the only link to the object it describes is its dependency on that
object's entry, which only ``toc.dat`` holds. This module reads that link (the archive format of
``pg_backup_archiver.c``, versions 1.12 to 1.16: pg_dump 9.6 to 17) so the restore list can decide a comment's
fate from its object's catalog identity, never from the comment's text.

Pure Python over bytes; no PostgreSQL needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MAGIC = b"PGDMP"
#: archive versions whose TOC layout this reader knows (major, minor)
SUPPORTED = ((1, 12), (1, 13), (1, 14), (1, 15), (1, 16))


class TocFormatError(ValueError):
    """``toc.dat`` is not an archive this reader understands."""


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.int_size = 4

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise TocFormatError("toc.dat ends early")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise TocFormatError("toc.dat ends early")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        """pg_dump's integer: a sign byte, then ``int_size`` bytes, least significant first."""
        negative = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        return -value if negative else value

    def str(self) -> str | None:
        length = self.int()
        if length < 0:
            return None
        return self.take(length).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class TocEntry:
    """One entry of ``toc.dat``: what the staging restore needs besides ``pg_restore -l``."""

    dump_id: int
    desc: str
    tag: str
    namespace: str | None
    copy_stmt: str | None  # ``COPY schema.table (columns) FROM stdin;`` of a TABLE DATA entry
    filename: str | None  # directory format: the entry's data file (``1234.dat``), None without data
    deps: tuple[int, ...]
    catalog_oid: int | None = None  # the object's oid in the dumped database (``pg_constraint`` for a CONSTRAINT)
    defn: str | None = None  # the SQL pg_restore runs for the entry


def parse_entries(data: bytes) -> list[TocEntry]:
    """Every entry of a directory-format ``toc.dat``, in archive order.

    :raises TocFormatError: not a pg_dump archive, or a version this reader does not know.
    """
    return _parse(data)[0]


#: the fields of an entry :func:`rewrite_entries` may replace
REWRITABLE = ("desc", "defn", "copy_stmt")


def _parse(data: bytes) -> tuple[list[TocEntry], int, list[dict[str, tuple[int, int]]]]:
    """The entries, the archive's integer size, and where each entry's :data:`REWRITABLE` fields lie (``(start,
    end)`` byte offsets of the whole length-prefixed string)."""
    r = _Reader(data)
    if r.take(len(MAGIC)) != MAGIC:
        raise TocFormatError("toc.dat does not start with PGDMP")
    version = (r.byte(), r.byte())
    r.byte()  # revision
    if version not in SUPPORTED:
        raise TocFormatError(f"archive version {version[0]}.{version[1]} is not supported by this reader")
    r.int_size = r.byte()
    r.byte()  # offset size
    r.byte()  # format
    if version >= (1, 15):
        r.byte()  # compression algorithm
    else:
        r.int()  # compression level
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        r.int()
    r.str()  # database name
    r.str()  # server version
    r.str()  # pg_dump version
    count = r.int()
    entries: list[TocEntry] = []
    spans: list[dict[str, tuple[int, int]]] = []
    def field(where: dict[str, tuple[int, int]], name: str) -> str | None:
        start = r.pos
        value = r.str()
        where[name] = (start, r.pos)
        return value

    for _ in range(count):
        where: dict[str, tuple[int, int]] = {}
        dump_id = r.int()
        r.int()  # had dumper
        r.str()  # table oid
        oid = r.str()
        tag = r.str()
        desc = field(where, "desc")
        r.int()  # section
        defn = field(where, "defn")
        r.str()  # drop statement
        copy_stmt = field(where, "copy_stmt")
        spans.append(where)
        namespace = r.str()
        r.str()  # tablespace
        if version >= (1, 14):
            r.str()  # table access method
        if version >= (1, 16):
            r.int()  # relkind
        r.str()  # owner
        r.str()  # "false" (was WITH OIDS)
        deps = []
        while (dep := r.str()) is not None:
            deps.append(int(dep))
        filename = r.str()  # directory format: the entry's data file name
        entries.append(TocEntry(dump_id, desc or "", tag or "", namespace or None, copy_stmt or None,
                                filename or None, tuple(deps), int(oid) if oid and oid.isdigit() else None,
                                defn or None))
    return entries, r.int_size, spans


def _encode_str(value: str, int_size: int) -> bytes:
    raw = value.encode("utf-8")
    return b"\x00" + len(raw).to_bytes(int_size, "little") + raw


def rewrite_entries(data: bytes, rewrite) -> tuple[bytes, int]:
    """``toc.dat`` with fields of entries replaced: ``rewrite(entry)`` returns ``{field: new text}`` for fields of
    :data:`REWRITABLE` (or ``None``: the entry stays as is); every other byte is unchanged. Returns the new bytes
    and how many entries changed."""
    entries, int_size, spans = _parse(data)
    edits, changed = [], 0
    for entry, where in zip(entries, spans):
        new = rewrite(entry) or {}
        unknown = set(new) - set(REWRITABLE)
        if unknown:
            raise ValueError(f"toc.dat fields that cannot be rewritten: {sorted(unknown)}")
        mine = [(where[name], value) for name, value in new.items() if value != getattr(entry, name)]
        edits += mine
        changed += bool(mine)
    parts, last = [], 0
    for (start, end), value in sorted(edits):
        parts += [data[last:start], _encode_str(value, int_size)]
        last = end
    parts.append(data[last:])
    return b"".join(parts), changed


def parse_dependencies(data: bytes) -> dict[int, tuple[int, ...]]:
    """``{dump id: dump ids it depends on}`` for every entry of a directory-format ``toc.dat``.

    :raises TocFormatError: not a pg_dump archive, or a version this reader does not know.
    """
    return {e.dump_id: e.deps for e in parse_entries(data)}


def read_entries(dump_dir: str | Path) -> list[TocEntry]:
    """:func:`parse_entries` of ``<dump_dir>/toc.dat``."""
    return parse_entries((Path(dump_dir) / "toc.dat").read_bytes())


def read_dependencies(dump_dir: str | Path) -> dict[int, tuple[int, ...]]:
    """:func:`parse_dependencies` of ``<dump_dir>/toc.dat``."""
    return parse_dependencies((Path(dump_dir) / "toc.dat").read_bytes())
