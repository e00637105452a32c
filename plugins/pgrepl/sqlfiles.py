"""The one place that finds, loads and renders the SQL of ``include/sql/``.

Folders are named after where the SQL runs: ``source/`` (catalog queries on the production database),
``warehouse/`` (bookkeeping and swap queries on the warehouse), ``both/`` (catalog queries run on either side),
and the warehouse's SQL steps ``compat/`` and ``enrichment/`` (Jinja templates, ``macros/`` importable);
``sample/`` is the demo's source data.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

#: ``include/sql`` of the checkout (the DAG's ``template_searchpath``)
SQL_ROOT = Path(__file__).resolve().parents[2] / "include" / "sql"


@lru_cache(maxsize=None)
def load(name: str) -> str:
    """Text of ``include/sql/<name>.sql``, e.g. ``load("source/relations")``."""
    return (SQL_ROOT / f"{name}.sql").read_text()


def files(folder: str) -> list[Path]:
    """Every ``*.sql`` of ``include/sql/<folder>``, in name order."""
    return sorted((SQL_ROOT / folder).glob("*.sql"))


def template_names(folder: str) -> list[str]:
    """``folder/<name>.sql`` of every file of :func:`files`, relative to :data:`SQL_ROOT` (for a DAG's templates)."""
    return [f"{folder}/{path.name}" for path in files(folder)]


def render(path: Path | str) -> str:
    """Render one SQL template of ``include/sql`` (macros importable) as the DAG's Jinja environment does."""
    import jinja2

    path = Path(path)
    relative = path.relative_to(SQL_ROOT) if path.is_absolute() else path
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(SQL_ROOT)))
    return env.get_template(relative.as_posix()).render()


def rendered(folder: str) -> list[tuple[str, str]]:
    """``[(file name, rendered SQL)]`` of every file of ``include/sql/<folder>``, in name order."""
    return [(path.name, render(path)) for path in files(folder)]
