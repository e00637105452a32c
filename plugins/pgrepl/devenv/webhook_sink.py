"""A webhook sink on loopback, for the demo: records every POST and prints what it received.

``start_webhook_sink()`` returns a :class:`WebhookSink`: point ``NOTIFICATIONS`` at ``sink.url("a")``
(e.g. ``[{"url": sink.url("a"), "token": "demo-token"}, {"url": sink.url("b")}]``), run the DAG, then
``print(sink.describe())`` and ``sink.stop()``. Tokens are never printed, only whether one was sent.

Run alone: ``python -m pgrepl.devenv.webhook_sink [PORT]`` prints each request as it arrives.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Received:
    path: str
    method: str
    content_type: str | None
    has_authorization: bool
    body: object

    def describe(self) -> str:
        auth = "Authorization: <token>" if self.has_authorization else "no Authorization"
        text = json.dumps(self.body, indent=2, sort_keys=True) if not isinstance(self.body, str) else self.body
        return f"{self.method} {self.path} ({self.content_type}, {auth})\n{text}"


@dataclass
class WebhookSink:
    base_url: str
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def url(self, name: str = "hook") -> str:
        return f"{self.base_url}/{name}"

    def describe(self) -> str:
        if not self.received:
            return "webhook sink: nothing received"
        return "\n".join(f"webhook sink received #{n}: {r.describe()}" for n, r in enumerate(self.received, 1))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _handler(record: Callable[[Received], None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pgrepl-webhook-sink"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body: object = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            record(Received(self.path, "POST", self.headers.get("Content-Type"),
                            self.headers.get("Authorization") is not None, body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args) -> None:  # quiet: the demo prints describe()
            pass

    return Handler


def start_webhook_sink(port: int = 0, on_request: Callable[[Received], None] | None = None) -> WebhookSink:
    """Serve on ``127.0.0.1:port`` (a free port by default) in a daemon thread."""
    lock = threading.Lock()
    sink = WebhookSink(base_url="")

    def record(item: Received) -> None:
        with lock:
            sink.received.append(item)
        if on_request:
            on_request(item)

    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(record))
    sink.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    sink._server = server
    threading.Thread(target=server.serve_forever, name="pgrepl-webhook-sink", daemon=True).start()
    return sink


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sink = start_webhook_sink(int(argv[0]) if argv else 0, on_request=lambda r: print(r.describe(), flush=True))
    print(f"webhook sink listening on {sink.base_url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
