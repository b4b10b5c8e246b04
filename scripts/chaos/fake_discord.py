"""A stand-in for Discord's REST API on 127.0.0.1 that the soak can flood with 429s.

The supervisor's notifier is pointed at it (``notify.api_url``). Every message is counted; while
``rate_limited_until`` lies ahead, every request gets ``429 {"retry_after": ..., "global": false}``
as Discord sends it. A thread with ``http.server``: it must keep answering whatever the soak's trio
loop is doing.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeDiscord:
    def __init__(self, retry_after: float = 0.5) -> None:
        self.retry_after = retry_after
        self.rate_limited_until = 0.0  # time.monotonic()
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-discord", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def flood(self, seconds: float) -> None:
        self.rate_limited_until = max(self.rate_limited_until, time.monotonic() + seconds)

    def _answer(self, path: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if time.monotonic() < self.rate_limited_until:
                self.counts["429"] += 1
                return 429, {"message": "You are being rate limited.", "retry_after": self.retry_after, "global": False}
            self.counts["delivered"] += 1
            return 200, {"id": str(self.counts["delivered"]), "channel_id": path.split("/")[-2]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status, body = fake._answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", str(fake.retry_after))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass  # quiet: the soak prints its own summary

        return Handler
