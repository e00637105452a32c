"""The demo's loopback learning-content API."""

from __future__ import annotations

import requests

from devenv.lcms_server import load_sample_payload, start_lcms_server
from pgrepl.hooks.lcms import LcmsFetchError, LcmsHook
from pgrepl.learning_content.mapping import TABLE_NAMES, map_payload
from pgrepl.settings import LcmsSettings, load_lcms


def test_serves_the_sample_to_the_hook_and_rejects_a_wrong_key():
    url, stop = start_lcms_server("demo-key")
    try:
        settings = load_lcms({"LCMS_API_URL": url, "LCMS_API_KEY": "demo-key"})
        payload = LcmsHook(settings, retries=0).fetch()
        assert payload == load_sample_payload()
        assert set(map_payload(payload)) == set(TABLE_NAMES)
        try:
            LcmsHook(LcmsSettings(url, "wrong-key"), retries=0).fetch()
        except LcmsFetchError as exc:
            assert "HTTP 401" in str(exc)
        else:
            raise AssertionError("a wrong key was accepted")
        assert requests.get(f"{url}/nothing", headers={"Authorization": "Bearer demo-key"}, timeout=5).status_code == 404
    finally:
        stop()


def test_serves_a_given_payload():
    url, stop = start_lcms_server("k", payload={"areas": []})
    try:
        response = requests.get(f"{url}/databases/airtable", headers={"Authorization": "Bearer k"}, timeout=5)
        assert response.json() == {"areas": []}
    finally:
        stop()
