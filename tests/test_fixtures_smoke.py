"""The shared fixtures themselves: a sample source and an empty, non-superuser warehouse."""


def test_source_has_sample_and_target_is_empty(source_db, target_db, fingerprint):
    source = fingerprint(source_db)
    assert source["answers"][0] > 0
    assert "knowledge-elements" in source
    assert fingerprint(target_db) == {}
    with target_db.connect() as db:
        assert db.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
