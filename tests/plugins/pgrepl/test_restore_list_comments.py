"""Which COMMENT entries the restore list keeps: each follows the object it describes, found by dump id.

The TOC and its dependencies are those pg_dump 15 wrote for a source with a comment on every kind of object
(``pg_restore -l`` prints ``0 0`` for every COMMENT; the link to the object is only in ``toc.dat``).
"""

from __future__ import annotations

import pytest

from pgrepl.restore_list import SourceCatalog, filter_restore_list
from pgrepl.toc import TocFormatError, parse_dependencies

# oids: 16467 table t, 16474 its pkey, 16475 its index t_v_idx, 16480 mv, 16476 vw, 16490 sequence s,
#       16500 kept table "k", 16501 its index, 16502 its pkey; 16386 extension pg_trgm; 16491 schema other
TOC = """\
;
; Selected TOC Entries:
;
7; 2615 16491 SCHEMA - other srcowner
3416; 0 0 COMMENT - SCHEMA other srcowner
8; 2615 2200 SCHEMA - public pg_database_owner
3417; 0 0 COMMENT - SCHEMA public pg_database_owner
2; 3079 16386 EXTENSION - pg_trgm
3418; 0 0 COMMENT - EXTENSION pg_trgm
886; 1247 16487 TYPE public mood srcowner
3419; 0 0 COMMENT public TYPE mood srcowner
251; 1255 16489 FUNCTION public f() srcowner
3420; 0 0 COMMENT public FUNCTION f() srcowner
216; 1259 16467 TABLE public t srcowner
3421; 0 0 COMMENT public TABLE t srcowner
3422; 0 0 COMMENT public COLUMN t.v srcowner
3423; 0 0 COMMENT public CONSTRAINT v_chk ON t srcowner
218; 1259 16480 MATERIALIZED VIEW public mv srcowner
3424; 0 0 COMMENT public MATERIALIZED VIEW mv srcowner
219; 1259 16490 SEQUENCE public s srcowner
3425; 0 0 COMMENT public SEQUENCE s srcowner
217; 1259 16476 VIEW public vw srcowner
3426; 0 0 COMMENT public VIEW vw srcowner
3407; 0 16467 TABLE DATA public t srcowner
3261; 2606 16474 CONSTRAINT public t t_pkey srcowner
3428; 0 0 COMMENT public CONSTRAINT t_pkey ON t srcowner
3262; 1259 16475 INDEX public t_v_idx srcowner
3429; 0 0 COMMENT public INDEX t_v_idx srcowner
3263; 1259 16501 INDEX public k_v_idx srcowner
3430; 0 0 COMMENT public INDEX k_v_idx srcowner
3264; 2606 16503 FK CONSTRAINT public t t_k_fkey srcowner
3431; 0 0 COMMENT public FK CONSTRAINT t_k_fkey ON t srcowner
3432; 0 0 COMMENT public TABLE gone srcowner
"""

DEPENDENCIES = {
    3416: (7,), 3417: (5,), 3418: (2,), 3419: (886,), 3420: (251,), 3421: (216,), 3422: (216,), 3423: (216,),
    3424: (218,), 3425: (219,), 3426: (217,), 3428: (3261,), 3429: (3262,), 3430: (3263,), 3431: (3264,),
    3432: (9999,), 217: (216, 216), 218: (216, 216), 3261: (216,), 3262: (216,), 3263: (), 3264: (216,),
}

CATALOG = SourceCatalog(
    owners={(1259, 16467): 16467, (1259, 16480): 16480, (1259, 16476): 16476, (2606, 16474): 16467,
            (1259, 16475): 16467, (1259, 16490): 16490, (1259, 16500): 16500, (1259, 16501): 16500,
            (2606, 16502): 16500, (2606, 16503): 16467},
    references={(2606, 16503): 16500},
    tables={16467: ("public", "t"), 16480: ("public", "mv"), 16476: ("public", "vw"), 16500: ("public", "k")},
)

COMMENTS = {3416, 3417, 3418, 3419, 3420, 3421, 3422, 3423, 3424, 3425, 3426, 3428, 3429, 3430, 3431, 3432}


def run(**kwargs):
    args = {"excluded_tables": set(), "precreated_schemas": {"public"}, "dependencies": DEPENDENCIES}
    args.update(kwargs)
    result = filter_restore_list(TOC, CATALOG, **args)
    return {e.dump_id for e in result.kept}, {e.dump_id: reason for e, reason in result.dropped}


def test_comments_follow_their_objects():
    kept, dropped = run()
    # table, column, check constraint, view, materialized view, type, function, sequence, constraint, index,
    # FK constraint, and a schema the dump creates
    assert {3416, 3419, 3420, 3421, 3422, 3423, 3424, 3425, 3426, 3428, 3429, 3431} <= kept
    assert dropped[3418] == "comment on an extension (needs the extension's owner)"
    assert dropped[3417] == "comment on an object the dump does not create (such as schema public)"
    assert dropped[3432] == "comment on an object the dump does not create (such as schema public)"


def test_public_schema_comment_is_left_out_when_the_dump_lists_the_schema():
    # dump id 8 is a SCHEMA public entry (older pg_dump versions list it)
    kept, dropped = run(dependencies={**DEPENDENCIES, 3417: (8,)})
    assert dropped[3417] == "comment on schema public (needs the schema's owner)"
    assert 8 not in kept


def test_comment_on_a_precreated_schema_other_than_public_is_restored():
    kept, dropped = run(precreated_schemas={"public", "other"})
    assert dropped[7] == "schema created by the restore step"
    assert 3416 in kept


def test_comments_of_a_kept_tables_objects_go_with_them():
    kept, dropped = run(excluded_tables={16500})
    assert dropped[3263] == "belongs to kept table public.k"
    assert dropped[3430] == "its INDEX is not restored: belongs to kept table public.k"
    # the FK pointing at the kept table goes, and its comment with it
    assert dropped[3431].startswith("its FK CONSTRAINT is not restored: references kept table public.k")
    assert {3421, 3422, 3429} <= kept


def test_fk_comments_follow_the_fk_switch():
    kept, dropped = run(restore_fk_constraints=False)
    assert dropped[3431] == "its FK CONSTRAINT is not restored: RESTORE_FK_CONSTRAINTS=false"
    assert 3428 in kept  # a primary key's comment stays


def test_setting_off_drops_every_comment():
    kept, dropped = run(restore_comments=False)
    assert kept.isdisjoint(COMMENTS)
    assert {dropped[c] for c in COMMENTS} == {"RESTORE_COMMENTS=false"}
    assert {216, 217, 218, 3261, 3262} <= kept


def test_unknown_dependencies_drop_every_comment_and_nothing_else():
    kept, dropped = run(dependencies=None)
    assert kept.isdisjoint(COMMENTS)
    assert set(dropped) == COMMENTS | {8}


def test_list_keeps_the_toc_order():
    result = filter_restore_list(TOC, CATALOG, set(), dependencies=DEPENDENCIES)
    order = [e.dump_id for e in result.kept]
    assert order.index(216) < order.index(3421) < order.index(3422) < order.index(218)


# -- toc.dat ---------------------------------------------------------------------------------------

def _int(value: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(4, "little")


def _str(value: str | None) -> bytes:
    if value is None:
        return _int(-1)
    data = value.encode()
    return _int(len(data)) + data


def toc_dat(version: tuple[int, int], entries: list[tuple[int, list[int]]]) -> bytes:
    """A directory-format ``toc.dat`` laid out as pg_dump writes it (``WriteHead`` + ``WriteToc``)."""
    out = b"PGDMP" + bytes([version[0], version[1], 0, 4, 8, 3])
    out += bytes([0]) if version >= (1, 15) else _int(-1)
    out += b"".join(_int(v) for v in (1, 2, 3, 4, 5, 126, 0))
    out += _str("src") + _str("15.18") + _str("15.18")
    out += _int(len(entries))
    for dump_id, deps in entries:
        out += _int(dump_id) + _int(1) + _str("1259") + _str("16467") + _str("t; é") + _str("COMMENT")
        out += _int(2) + _str("COMMENT ON TABLE t IS 'x\n-- y';\n") + _str("") + _str(None) + _str("public")
        out += _str("") + (_str("heap") if version >= (1, 14) else b"") + (_int(114) if version >= (1, 16) else b"")
        out += _str("srcowner") + _str("false") + b"".join(_str(str(d)) for d in deps) + _str(None)
        out += _str(f"{dump_id}.dat")
    return out


@pytest.mark.parametrize("version", [(1, 13), (1, 14), (1, 15), (1, 16)])
def test_toc_dat_dependencies(version):
    data = toc_dat(version, [(216, []), (3421, [216]), (217, [216, 216, 5])])
    assert parse_dependencies(data) == {216: (), 3421: (216,), 217: (216, 216, 5)}


def test_toc_dat_errors():
    with pytest.raises(TocFormatError, match="does not start with PGDMP"):
        parse_dependencies(b"-- SQL script")
    with pytest.raises(TocFormatError, match="version 1.17 is not supported"):
        parse_dependencies(toc_dat((1, 17), []))
    with pytest.raises(TocFormatError, match="ends early"):
        parse_dependencies(toc_dat((1, 14), [(216, [])])[:-3])
