"""A Pix-like source database at a scale factor (scale 1 = 100 k users, 2 M answers, ...)."""

from __future__ import annotations

from pgrepl import sqlfiles
from pgrepl.pgtools import PgConn

#: rows per table at scale 1 (DESIGN.md, "Data shapes"; issue "Speed")
SCALE_1 = {
    "users": 100_000,
    "assessments": 200_000,
    "answers": 2_000_000,
    "knowledge_elements": 2_000_000,
    "snapshots": 100_000,
}


def sizes(scale: float) -> dict[str, int]:
    """Row counts for ``scale`` (at least 10 rows per table)."""
    return {name: max(10, int(rows * scale)) for name, rows in SCALE_1.items()}


def load_sample(conn: PgConn, scale: float = 0.002, with_schema: bool = True) -> dict[str, int]:
    """Create the sample schema in ``conn``'s database and fill it; return the sizes used."""
    counts = sizes(scale)
    with conn.connect() as db:
        if with_schema:
            db.execute(sqlfiles.load("sample/schema"))
        for name, rows in counts.items():
            db.execute(f"SET pgrepl.{name} = {int(rows)}")
        db.execute(sqlfiles.load("sample/data"))
        db.commit()
    return counts
