"""LcmsHook against a real HTTP server on loopback (pytest-httpserver)."""

from __future__ import annotations

import logging
import threading

import pytest
from werkzeug import Response

from devenv.lcms_server import load_sample_payload
from pgrepl.hooks.lcms import LcmsFetchError, LcmsHook
from pgrepl.redact import redact
from pgrepl.settings import LcmsSettings

KEY = "lcms-Key-7c2e91"
PATH = "/api/databases/airtable"


def make_hook(httpserver, key: str = KEY, app: str = "pix-db-replication", **kwargs) -> LcmsHook:
    options = {"timeout": 5.0, "retries": 2, "retry_wait": 0.01}
    options.update(kwargs)
    return LcmsHook(LcmsSettings(httpserver.url_for("/api"), key, app), **options)


def test_fetch_sends_bearer_key_and_client_header(httpserver):
    payload = load_sample_payload()
    httpserver.expect_request(PATH, method="GET").respond_with_json(payload)
    assert make_hook(httpserver).fetch() == payload
    (request, _response), = httpserver.log
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["client"] == "pix-db-replication"
    assert request.path == PATH


def test_client_header_follows_app_setting(httpserver):
    httpserver.expect_request(PATH, headers={"client": "pix-db-replication-review"}).respond_with_json({})
    assert make_hook(httpserver, app="pix-db-replication-review", retries=0).fetch() == {}


def test_url_with_trailing_path_and_custom_endpoint(httpserver):
    httpserver.expect_request("/api/v2/databases/airtable").respond_with_json({"ok": 1})
    hook = LcmsHook(LcmsSettings(httpserver.url_for("/api/v2"), KEY), retries=0)
    assert hook.fetch() == {"ok": 1}
    httpserver.expect_request("/api/other").respond_with_json([1])
    assert make_hook(httpserver).fetch("other") == [1]


@pytest.mark.parametrize(
    "status, words",
    [(401, ["HTTP 401", "LCMS_API_KEY"]), (403, ["HTTP 403"]), (404, ["HTTP 404", "LCMS_API_URL"])],
)
def test_client_errors_fail_at_once_naming_url_and_status(httpserver, status, words):
    httpserver.expect_request(PATH).respond_with_json({"error": "no"}, status=status)
    with pytest.raises(LcmsFetchError) as info:
        make_hook(httpserver).fetch()
    assert not info.value.retryable
    assert httpserver.url_for(PATH) in str(info.value)
    for word in words:
        assert word in str(info.value)
    assert len(httpserver.log) == 1  # no retry on 4xx


def test_server_errors_are_retried_then_succeed(httpserver):
    httpserver.expect_oneshot_request(PATH).respond_with_data("boom", status=500)
    httpserver.expect_oneshot_request(PATH).respond_with_data("busy", status=503)
    httpserver.expect_request(PATH).respond_with_json({"areas": []})
    assert make_hook(httpserver, retries=2).fetch() == {"areas": []}
    assert [response.status_code for _request, response in httpserver.log] == [500, 503, 200]


def test_server_errors_exhaust_retries(httpserver):
    httpserver.expect_request(PATH).respond_with_data("boom", status=500)
    with pytest.raises(LcmsFetchError) as info:
        make_hook(httpserver, retries=2).fetch()
    assert info.value.retryable
    assert "HTTP 500" in str(info.value) and "3 attempt(s)" in str(info.value)
    assert httpserver.url_for(PATH) in str(info.value)
    assert len(httpserver.log) == 3


def test_timeout_is_retried_and_reported(httpserver):
    release = threading.Event()

    def slow(_request):
        release.wait(10)
        return Response("{}", content_type="application/json")

    httpserver.expect_request(PATH).respond_with_handler(slow)
    try:
        with pytest.raises(LcmsFetchError) as info:
            make_hook(httpserver, timeout=0.3, retries=0).fetch()
    finally:
        release.set()
    assert info.value.retryable
    assert "timed out" in str(info.value) and httpserver.url_for(PATH) in str(info.value)


def test_refused_connection_is_transient():
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hook = LcmsHook(LcmsSettings(f"http://127.0.0.1:{port}/api", KEY), retries=1, retry_wait=0.01)
    with pytest.raises(LcmsFetchError, match="connection failed") as info:
        hook.fetch()
    assert info.value.retryable


def test_body_that_is_not_json(httpserver):
    httpserver.expect_request(PATH).respond_with_data("<html>maintenance</html>", content_type="text/html")
    with pytest.raises(LcmsFetchError, match="body is not JSON") as info:
        make_hook(httpserver).fetch()
    assert "text/html" in str(info.value)
    assert not info.value.retryable


def test_key_never_in_logs_or_errors(httpserver, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    httpserver.expect_oneshot_request(PATH).respond_with_data("boom", status=502)
    httpserver.expect_request(PATH).respond_with_json({"error": "denied"}, status=401)
    with pytest.raises(LcmsFetchError) as info:
        make_hook(httpserver).fetch()
    out, err = capfd.readouterr()
    assert KEY not in str(info.value)
    assert KEY not in caplog.text and KEY not in out and KEY not in err
    assert "learning content: GET" in caplog.text + out + err  # the log really was captured


def test_redact_hides_password_and_query_values():
    assert redact("https://user:pw@lcms.example.org:8443/api/x?token=abc&b=2") == \
        "https://user:***@lcms.example.org:8443/api/x?token=***&b=***"
    assert redact("no scheme u:p@ss@h/db") == "no scheme u:***@h/db"  # a malformed URL too
    assert redact("https://h:1/a") == "https://h:1/a"
