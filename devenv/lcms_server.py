"""A tiny learning-content API on loopback, for the demo.

``start_lcms_server(api_key)`` serves ``lcms_sample.json`` (or a given payload) at
``GET /api/databases/airtable`` to requests carrying ``Authorization: Bearer <api_key>``, answers
401 otherwise, and returns ``(base_url, stop)``: point ``LCMS_API_URL`` at ``base_url``
(``http://127.0.0.1:<port>/api``) and call ``stop()`` at the end.

Run alone: ``python -m devenv.lcms_server KEY`` prints the URL and serves until Ctrl-C.
"""

from __future__ import annotations

import hmac
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

SAMPLE_PATH = Path(__file__).with_name("lcms_sample.json")
ENDPOINT = "/api/databases/airtable"


def load_sample_payload() -> dict:
    """The demo payload (a few records per learning-content table)."""
    return json.loads(SAMPLE_PATH.read_text(encoding="utf-8"))


def _handler(api_key: str, body: bytes) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {api_key}".encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "pgrepl-lcms-demo"

        def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            given = (self.headers.get("Authorization") or "").encode()
            if not hmac.compare_digest(given, expected):
                self._send(401, b'{"error": "Unauthorized"}')
            elif self.path.split("?")[0] != ENDPOINT:
                self._send(404, b'{"error": "Not Found"}')
            else:
                self._send(200, body)

        def log_message(self, format: str, *args: Any) -> None:  # keep the demo's output quiet
            pass

    return Handler


def start_lcms_server(api_key: str, payload: Any | None = None, host: str = "127.0.0.1") -> tuple[str, Callable[[], None]]:
    """Serve ``payload`` (default: the sample) on a free loopback port; return ``(base_url, stop)``."""
    body = json.dumps(load_sample_payload() if payload is None else payload, ensure_ascii=False).encode()
    server = ThreadingHTTPServer((host, 0), _handler(api_key, body))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="lcms-demo-server", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return f"http://{host}:{server.server_address[1]}/api", stop


if __name__ == "__main__":  # pragma: no cover - manual use
    key = sys.argv[1] if len(sys.argv) > 1 else "demo-key"
    url, stop_server = start_lcms_server(key)
    print(f"LCMS_API_URL={url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        stop_server()
