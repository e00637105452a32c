"""The learning-content mapping: pure functions, no Airflow, no database."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from devenv.lcms_server import load_sample_payload
from pgrepl.learning_content.mapping import (
    TABLE_NAMES,
    TABLES,
    Field,
    LearningContentError,
    Table,
    check_declarations,
    map_payload,
    to_row,
)

BY_NAME = {t.name: t for t in TABLES}


def row_dict(table: str, record: dict) -> dict:
    t = BY_NAME[table]
    return dict(zip(t.columns, to_row(t, record)))


def test_the_eight_tables_of_design_md_in_order():
    assert TABLE_NAMES == ("areas", "attachments", "competences", "tubes", "skills", "challenges", "courses", "tutorials")
    check_declarations()


@pytest.mark.parametrize(
    "table, indexes",
    [("areas", ()), ("attachments", ()), ("competences", ("areaId",)), ("tubes", ("competenceId",)),
     ("skills", ("tubeId",)), ("challenges", ("firstSkillId",)), ("courses", ()), ("tutorials", ("title",))],
)
def test_indexes_per_table(table, indexes):
    assert BY_NAME[table].indexes == indexes
    assert [BY_NAME[table].index_name(f) for f in indexes] == [f"{table}_{f}_idx" for f in indexes]


def test_column_types_follow_design_md():
    types = {t.name: {f.name: f.type for f in t.fields} for t in TABLES}
    assert types["areas"] == {"name": "text"}
    assert types["attachments"] == {"type": "text", "challengeId": "text", "alt": "text", "url": "text", "size": "numeric"}
    assert list(types["competences"]) == ["name", "code", "title", "origin", "areaId"]
    assert types["skills"]["pixValue"] == "numeric(6,5)" and types["skills"]["level"] == "smallint"
    assert types["skills"]["tutorialIds"] == types["skills"]["learningMoreTutorialIds"] == "text[]"
    challenges = types["challenges"]
    assert len(challenges) == 44
    assert [name for name, t in challenges.items() if t == "boolean"] == [
        "autoReply", "hasEmbedUrl", "hasAlternativeInstruction", "focus", "requireGafamWebsiteAccess",
        "isIncompatibleIpadCertif", "toRephrase", "isAwarenessChallenge", "shuffled"]
    assert [name for name, t in challenges.items() if t == "text[]"] == [
        "skillIds", "languages", "contextualizedFields", "urlsToConsult"]
    assert [name for name, t in challenges.items() if t == "timestamptz"] == [
        "createdAt", "validatedAt", "archivedAt", "madeObsoleteAt"]
    assert [name for name, t in challenges.items() if t == "smallint"] == [
        "timer", "skillCount", "version", "alternativeVersion"]
    assert types["courses"] == {"name": "text"}
    assert types["tutorials"] == {"title": "text", "link": "text", "tutorialForSkills": "text[]",
                                  "furtherInformation": "text[]", "locale": "text"}


def test_areas_and_courses_keep_their_name_and_ignore_other_keys():
    assert row_dict("areas", {"id": "recA", "name": "1. Info", "color": "jaffa"}) == {"id": "recA", "name": "1. Info"}
    assert row_dict("courses", {"id": "recC", "name": "Démo", "challenges": ["x"]}) == {"id": "recC", "name": "Démo"}


def test_attachments_size_numeric_and_list_to_first_element():
    row = row_dict("attachments", {"id": "a", "type": "illustration", "challengeId": ["recChal1", "recChal2"], "size": 10240.5})
    assert row == {"id": "a", "type": "illustration", "challengeId": "recChal1", "alt": None, "url": None,
                   "size": Decimal("10240.5")}


def test_competences_i18n_and_index():
    row = row_dict("competences", {"id": "c", "name_i18n": {"fr": "Gérer", "en": "Manage"}, "index": "1.2",
                                   "origin": "Pix", "areaId": ["recArea1"]})
    assert row == {"id": "c", "name": "Gérer", "code": "1.2", "title": "Gérer", "origin": "Pix", "areaId": "recArea1"}
    # a missing i18n object (or language) gives null, not an error
    assert row_dict("competences", {"id": "c"})["name"] is None
    assert row_dict("competences", {"id": "c", "name_i18n": {"en": "x"}})["title"] is None


def test_tubes_practical_fields_in_french():
    row = row_dict("tubes", {"id": "t", "name": "@t", "practicalTitle_i18n": {"fr": "Titre", "en": "Title"},
                             "practicalDescription_i18n": {"fr": "Desc"}, "competenceId": ["recComp1"], "title": "ignored"})
    assert row == {"id": "t", "name": "@t", "practicalTitle": "Titre", "practicalDescription": "Desc", "competenceId": "recComp1"}


def test_skills_arrays_numeric_rounding_and_hint():
    row = row_dict("skills", {"id": "s", "level": 3, "pixValue": 2.6666666667, "hint_i18n": {"fr": "Indice"},
                              "tutorialIds": ["t1", "t2"], "learningMoreTutorialIds": "t3", "tubeId": ["recTube1"]})
    assert row["level"] == 3
    assert row["pixValue"] == Decimal("2.66667")
    assert row["hint"] == "Indice"
    assert row["tutorialIds"] == ["t1", "t2"]
    assert row["learningMoreTutorialIds"] == ["t3"]  # a scalar reaching an array field: one-element array
    assert row["tubeId"] == "recTube1"
    assert row_dict("skills", {"id": "s"})["tutorialIds"] is None
    assert row_dict("skills", {"id": "s", "tutorialIds": []})["tutorialIds"] == []


def test_challenges_derived_fields():
    record = {"id": "ch", "skillId": ["recSkill9", "recSkill8"], "locales": ["fr", "en"], "embedUrl": "https://e",
              "alternativeInstruction": "", "focusable": True, "solutionToDisplay": "Réponse", "shuffled": 1,
              "createdAt": "2021-03-04T10:00:00.000Z", "archivedAt": "2023-06-01T12:00:00+02:00",
              "timer": 60, "delta": "0.5", "alpha": 1}
    row = row_dict("challenges", record)
    assert row["skillId"] == "recSkill9"
    assert row["skillIds"] == ["recSkill9"]
    assert row["skillCount"] == 1
    assert row["firstSkillId"] == "recSkill9"
    assert row["secondSkillId"] is None and row["thirdSkillId"] is None
    assert row["languages"] == ["fr", "en"]
    assert row["hasEmbedUrl"] is True
    assert row["hasAlternativeInstruction"] is False
    assert row["focus"] is True
    assert row["shuffled"] is True
    assert row["explicativeResponse"] == "Réponse"
    assert row["createdAt"] == datetime(2021, 3, 4, 10, 0, tzinfo=timezone.utc)
    assert row["archivedAt"] == datetime(2023, 6, 1, 10, 0, tzinfo=timezone.utc)
    assert row["archivedAt"].utcoffset() == timedelta(hours=2)
    assert (row["delta"], row["alpha"], row["timer"]) == (Decimal("0.5"), Decimal("1"), 60)


def test_challenges_booleans_never_null():
    row = row_dict("challenges", {"id": "ch"})
    booleans = [f.name for f in BY_NAME["challenges"].fields if f.type == "boolean"]
    assert {name: row[name] for name in booleans} == {name: False for name in booleans}
    assert row["skillIds"] == [] and row["skillCount"] == 1 and row["languages"] is None


def test_tutorials_lists_stay_lists():
    row = row_dict("tutorials", {"id": "tu", "title": "T", "link": "https://l", "tutorialForSkills": ["s1", "s2"],
                                 "furtherInformation": [], "locale": ["fr-fr", "en"]})
    assert row == {"id": "tu", "title": "T", "link": "https://l", "tutorialForSkills": ["s1", "s2"],
                   "furtherInformation": [], "locale": "fr-fr"}


def test_text_accepts_numbers_as_their_json_text():
    assert row_dict("competences", {"id": "c", "index": 1.1})["code"] == "1.1"
    assert row_dict("areas", {"id": 7, "name": 3})["id"] == "7"


@pytest.mark.parametrize(
    "table, record, words",
    [
        ("areas", {"name": "no id"}, ["table areas", "record #0", "no id"]),
        ("areas", {"id": "", "name": "empty id"}, ["table areas", "record #0"]),
        ("skills", {"id": "s1", "level": "high"}, ["table skills", "record s1", "field level", "smallint"]),
        ("skills", {"id": "s1", "level": 40000}, ["table skills", "record s1", "field level", "range"]),
        ("skills", {"id": "s1", "pixValue": 12.5}, ["table skills", "record s1", "field pixValue", "numeric(6,5)"]),
        ("challenges", {"id": "c1", "autoReply": "yes"}, ["table challenges", "record c1", "field autoReply"]),
        ("challenges", {"id": "c1", "createdAt": "yesterday"}, ["record c1", "field createdAt", "ISO 8601"]),
        ("challenges", {"id": "c1", "instruction": {"fr": "x"}}, ["record c1", "field instruction", "text"]),
        ("challenges", {"id": "c1", "urlsToConsult": [["nested"]]}, ["record c1", "field urlsToConsult"]),
        ("attachments", {"id": "a1", "size": "big"}, ["table attachments", "record a1", "field size"]),
        ("tubes", {"id": "t1", "name": "nul\x00char"}, ["table tubes", "record t1", "field name", "NUL"]),
        ("courses", ["not", "an", "object"], ["table courses", "record #0", "not a JSON object"]),
    ],
)
def test_bad_records_fail_naming_table_record_and_field(table, record, words):
    with pytest.raises(LearningContentError) as info:
        map_payload({**{t: [] for t in TABLE_NAMES}, table: [record]})
    for word in words:
        assert word in str(info.value)


def test_sample_payload_maps_every_table():
    rows = map_payload(load_sample_payload())
    assert set(rows) == set(TABLE_NAMES)
    assert all(rows[name] for name in TABLE_NAMES)
    for table in TABLES:
        assert all(len(row) == len(table.columns) for row in rows[table.name])


def test_payload_shape_errors():
    good = load_sample_payload()
    with pytest.raises(LearningContentError, match="expected an object of tables"):
        map_payload([good])
    broken = copy.deepcopy(good)
    del broken["tutorials"]
    with pytest.raises(LearningContentError, match="table tutorials: missing"):
        map_payload(broken)
    broken = copy.deepcopy(good)
    broken["skills"] = {"recSkill1": {}}
    with pytest.raises(LearningContentError, match="table skills: expected a list"):
        map_payload(broken)
    broken = copy.deepcopy(good)
    broken["areas"].append(dict(broken["areas"][0]))
    with pytest.raises(LearningContentError, match="table areas: record recArea1 appears twice"):
        map_payload(broken)


def test_declaration_checks_catch_mistakes():
    with pytest.raises(LearningContentError, match="unsupported type"):
        check_declarations([Table("x", (Field("a", "jsonb"),))])
    with pytest.raises(LearningContentError, match="unknown field"):
        check_declarations([Table("x", (Field("a", "text"),), indexes=("b",))])
    with pytest.raises(LearningContentError, match="unsupported source"):
        check_declarations([Table("x", (Field("a", "text", "a + b"),))])
