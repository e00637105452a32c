"""The restore-list filter, on a TOC shaped like pg_restore 15's and a catalog like the sample's."""

from __future__ import annotations

from pgrepl.restore_list import SourceCatalog, filter_restore_list, parse_toc

# oids: 100 answers, 101 answers-archive, 102 knowledge-elements, 103 "Mixed Case", 104 x"; drop table users; --
TOC = """\
;
; Archive created at 2026-11-29 19:09:04 UTC
;     Format: DIRECTORY
;
; Selected TOC Entries:
;
3444; 0 0 COMMENT - SCHEMA public pg_database_owner
5; 2615 2200 SCHEMA - public pg_database_owner
215; 1259 100 TABLE public answers src_owner
3446; 0 0 COMMENT public COLUMN answers.value src_owner
216; 1259 200 SEQUENCE public answers_id_seq src_owner
3447; 0 0 SEQUENCE OWNED BY public answers_id_seq src_owner
220; 1259 101 TABLE public answers-archive src_owner
221; 1259 201 SEQUENCE public answers-archive_id_seq src_owner
222; 1259 202 SEQUENCE public knowledge-elements_id_seq src_owner
223; 1259 102 TABLE public knowledge-elements src_owner
224; 1259 103 TABLE public Mixed Case src_owner
225; 1259 104 TABLE public x"; drop table users; -- src_owner
226; 1259 105 VIEW public active-users src_owner
3242; 2604 300 DEFAULT public answers id src_owner
3243; 2604 302 DEFAULT public knowledge-elements id src_owner
3244; 2604 303 DEFAULT public answers-archive legacy_id src_owner
3429; 0 100 TABLE DATA public answers src_owner
3430; 0 101 TABLE DATA public answers-archive src_owner
3431; 0 102 TABLE DATA public knowledge-elements src_owner
3432; 0 103 TABLE DATA public Mixed Case src_owner
3433; 0 104 TABLE DATA public x"; drop table users; -- src_owner
3453; 0 0 SEQUENCE SET public answers_id_seq src_owner
3454; 0 0 SEQUENCE SET public answers-archive_id_seq src_owner
3456; 0 0 SEQUENCE SET public knowledge-elements_id_seq src_owner
3263; 2606 400 CONSTRAINT public answers answers_pkey src_owner
3266; 2606 401 CONSTRAINT public answers-archive answers-archive_pkey src_owner
3267; 2606 402 CONSTRAINT public knowledge-elements knowledge-elements_pkey src_owner
3268; 2606 404 CONSTRAINT public x"; drop table users; -- x"; drop table users; --_pkey src_owner
3261; 1259 500 INDEX public answers_assessmentid_index src_owner
3264; 1259 501 INDEX public answers-archive_challengeid_index src_owner
3265; 1259 502 INDEX public knowledge_elements_userid_index src_owner
3269; 1259 503 INDEX public Mixed Case_idx src_owner
3270; 2620 600 TRIGGER public knowledge-elements ke_audit src_owner
3279; 2606 410 FK CONSTRAINT public answers answers_assessmentId_fkey src_owner
3280; 2606 412 FK CONSTRAINT public knowledge-elements knowledge_elements_answerid_foreign src_owner
3282; 2606 411 FK CONSTRAINT public answers-archive answers-archive_fk src_owner
"""

CATALOG = SourceCatalog(
    owners={
        (1259, 100): 100, (1259, 101): 101, (1259, 102): 102, (1259, 103): 103, (1259, 104): 104, (1259, 105): 105,
        (1259, 200): 100, (1259, 201): 101, (1259, 202): 102,
        (2604, 300): 100, (2604, 302): 102, (2604, 303): 101,
        (2606, 400): 100, (2606, 401): 101, (2606, 402): 102, (2606, 404): 104,
        (2606, 410): 100, (2606, 411): 101, (2606, 412): 102,
        (1259, 500): 100, (1259, 501): 101, (1259, 502): 102, (1259, 503): 103,
        (2620, 600): 102,
    },
    references={(2606, 410): 999, (2606, 411): 100, (2606, 412): 100, (2604, 303): 200},
    sequences={("public", "answers_id_seq"): 100, ("public", "answers-archive_id_seq"): 101,
               ("public", "knowledge-elements_id_seq"): 102},
    tables={100: ("public", "answers"), 101: ("public", "answers-archive"), 102: ("public", "knowledge-elements"),
            103: ("public", "Mixed Case"), 104: ("public", 'x"; drop table users; --'), 105: ("public", "active-users")},
)


def ids(restore_list):
    return {entry.dump_id for entry in restore_list.kept}


def test_parse_multi_word_kinds():
    parsed = parse_toc(TOC)
    entries = {e.dump_id: e for e in parsed}
    assert len(entries) == len(parsed)
    assert entries[3429].desc == "TABLE DATA" and entries[3429].objid == 100
    assert entries[3447].desc == "SEQUENCE OWNED BY"
    assert entries[3279].desc == "FK CONSTRAINT"
    assert entries[225].rest == 'public x"; drop table users; -- src_owner'
    assert len(entries) == sum(1 for line in TOC.splitlines() if line and not line.startswith(";"))


def test_nothing_excluded_drops_only_comments_and_precreated_schema():
    # without the dump's dependencies no comment can be matched to its object: none is restored
    result = filter_restore_list(TOC, CATALOG, excluded_tables=set(), precreated_schemas={"public"})
    dropped = {e.dump_id: reason for e, reason in result.dropped}
    unknown = "comment's object unknown (the dump's dependencies were not read)"
    assert dropped == {3444: unknown, 3446: unknown, 5: "schema created by the restore step"}
    assert result.count("TABLE DATA") == 5


def test_excluding_knowledge_elements_follows_the_catalog_not_the_name():
    result = filter_restore_list(TOC, CATALOG, excluded_tables={102})
    kept = ids(result)
    # every object of knowledge-elements goes, whatever its name: _ vs - in knex's index name, sequence, its SET line,
    # default, constraint, trigger, FK
    for dump_id in (222, 223, 3243, 3431, 3456, 3267, 3265, 3270, 3280):
        assert dump_id not in kept, dump_id
    # and nothing else does
    for dump_id in (215, 216, 3447, 220, 3429, 3430, 3453, 3263, 3261, 3279):
        assert dump_id in kept, dump_id


def test_excluding_answers_keeps_answers_archive():
    result = filter_restore_list(TOC, CATALOG, excluded_tables={100})
    kept = ids(result)
    assert {215, 216, 3447, 3242, 3429, 3453, 3263, 3261, 3279}.isdisjoint(kept)
    assert {220, 221, 3430, 3454, 3266, 3264}.issubset(kept)
    reasons = {e.dump_id: r for e, r in result.dropped}
    assert reasons[3261] == "belongs to kept table public.answers"
    # FKs of replaced tables that point at the kept table go too: its new rows arrive after the restore
    assert reasons[3282].startswith("references kept table public.answers")
    assert reasons[3280].startswith("references kept table public.answers")
    # a default of a replaced table that uses the kept table's sequence (answers_id_seq, oid 200) is restored: the
    # sequence is there, kept with its table (or created with it on the first night)
    assert 3244 in kept


def test_quoted_and_mixed_case_names():
    result = filter_restore_list(TOC, CATALOG, excluded_tables={103, 104})
    kept = ids(result)
    assert {224, 3432, 3269}.isdisjoint(kept)  # "Mixed Case": table, data, index
    assert {225, 3433, 3268}.isdisjoint(kept)
    assert 215 in kept


def test_fk_switch():
    with_fk = filter_restore_list(TOC, CATALOG, excluded_tables=set())
    without_fk = filter_restore_list(TOC, CATALOG, excluded_tables=set(), restore_fk_constraints=False)
    assert with_fk.count("FK CONSTRAINT") == 3
    assert without_fk.count("FK CONSTRAINT") == 0
    assert without_fk.count("CONSTRAINT") == with_fk.count("CONSTRAINT") == 4


def test_list_text_is_pg_restore_input():
    result = filter_restore_list(TOC, CATALOG, excluded_tables={102})
    lines = result.text().splitlines()
    assert lines[0].startswith("5; 2615 2200 SCHEMA")
    assert all(not line.startswith(";") for line in lines)
    assert len(lines) == len(result.kept)


# -- BACKUP_MODE on partitions, shared types, materialized views (pg_restore 15's TOC of the shop fixture) --------

SHOP_TOC = """\
855; 1247 16387 TYPE public order_status o
214; 1259 16396 SEQUENCE public shared_number_seq o
218; 1259 16408 TABLE public orders o
223; 1259 16451 TABLE public events o
224; 1259 16457 TABLE public events_2024_01 o
229; 1259 16494 MATERIALIZED VIEW public daily_events o
3260; 0 0 TABLE ATTACH public events_2024_01 o
3293; 2606 16462 CONSTRAINT public events_2024_01 events_2024_01_pkey o
3290; 1259 16482 INDEX public events_2024_01_kind_idx o
3291; 1259 16485 INDEX public events_2024_01_order_idx o
3300; 0 0 INDEX ATTACH public events_2024_01_kind_idx o
3301; 0 0 INDEX ATTACH public events_2024_01_pkey o
3270; 2620 16600 TRIGGER public orders orders_audit o
3306; 2606 16421 FK CONSTRAINT public orders orders_customer_id_fkey o
3307; 2606 16436 FK CONSTRAINT public order_lines order_lines_order_id_fkey o
3308; 2606 16437 FK CONSTRAINT public events events_order_fkey o
3480; 0 0 SEQUENCE SET public shared_number_seq o
3463; 0 16494 MATERIALIZED VIEW DATA public daily_events o
"""
SHOP = SourceCatalog(
    owners={(1259, 16408): 16408, (1259, 16451): 16451, (1259, 16457): 16457, (1259, 16494): 16494,
            (2606, 16462): 16457, (1259, 16482): 16457, (1259, 16485): 16457, (1259, 16486): 16457,
            (2620, 16600): 16408, (2606, 16421): 16408, (2606, 16436): 16428, (2606, 16437): 16451},
    references={(2606, 16421): 16398, (2606, 16436): 16408, (2606, 16437): 16408},
    tables={16408: ("public", "orders"), 16451: ("public", "events"), 16457: ("public", "events_2024_01"),
            16398: ("public", "customers"), 16428: ("public", "order_lines")},
)
PARTITION_INDEXES = {("public", "events_2024_01_kind_idx"): (16482, None), ("public", "events_2024_01_pkey"): (16486, 16462)}


def shop_plan(**kwargs):
    from pgrepl.restore_list import KeptPlan

    base = dict(modes={16408: "incremental", 16451: "incremental", 16457: "incremental"},
                relations_by_name={("public", "events_2024_01"): 16457}, partition_indexes=PARTITION_INDEXES,
                parents={16457: 16451})
    return KeptPlan(**{**base, **kwargs})


def test_first_night_restores_kept_structure_without_triggers_and_cross_fks():
    plan = shop_plan(created={16408, 16451, 16457}, refresh_later={16494})
    result = filter_restore_list(SHOP_TOC, SHOP, set(), plan=plan)
    kept, reasons = ids(result), {e.dump_id: r for e, r in result.dropped}
    # tables, partition, ATTACH lines, partition indexes: created tonight
    assert {218, 223, 224, 3260, 3293, 3290, 3291, 3300, 3301, 855, 214, 3480, 229} <= kept
    assert reasons[3270].startswith("trigger of kept table public.orders")
    assert reasons[3306].startswith("FK of kept table public.orders to public.customers")
    assert reasons[3307].startswith("references kept table public.orders")
    assert 3308 in kept  # events -> orders: both kept, the referenced one incremental (copied first)
    assert reasons[3463] == "reads a kept table: refreshed after the incremental step"
    # to a "none" table the FK cannot hold (it never gets rows)
    none_plan = shop_plan(created={16408, 16451, 16457}, modes={16408: "none", 16451: "incremental", 16457: "incremental"})
    assert 3308 not in ids(filter_restore_list(SHOP_TOC, SHOP, set(), plan=none_plan))


def test_later_nights_keep_tables_types_and_sequences_of_the_warehouse():
    plan = shop_plan(present={16408, 16451, 16457}, kept_objects={(1247, 16387), (1259, 16396)})
    result = filter_restore_list(SHOP_TOC, SHOP, set(), plan=plan)
    kept = ids(result)
    assert kept == {229, 3480, 3463}  # the view, the shared sequence's value, the view's rows


def test_new_partition_of_a_kept_parent_leaves_cloned_indexes_to_attach_partition():
    plan = shop_plan(present={16408, 16451}, created={16457})
    kept = ids(filter_restore_list(SHOP_TOC, SHOP, set(), plan=plan))
    assert {224, 3260, 3291} <= kept  # the partition, its ATTACH, its own index
    assert {3293, 3290, 3300, 3301}.isdisjoint(kept)  # what ATTACH PARTITION clones from the parent
