"""A recording HTTP proxy: what an upstream receives, byte for byte, in front of a real one.

It listens on a free loopback port, keeps each request's method, path, headers
and body, forwards the request to the upstream (llm-katan in the tests) and
relays the answer as it arrives (streams included, chunk by chunk). Tests read
:attr:`Recorder.requests` to see exactly what modelbus sent upstream.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from tests.fakes.loopback import LoopbackServer, QuietHandler

_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Recorder(LoopbackServer):
    """Start with ``with Recorder(upstream_base_url) as rec:``; ``rec.base_url`` is the proxy's."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with recorder._lock:
                    recorder.requests.append(Recorded("POST", self.path, headers, body))
                conn = http.client.HTTPConnection(recorder._host, recorder._port, timeout=30)
                try:
                    forward = {k: v for k, v in headers.items() if k not in _HOP}
                    conn.request("POST", self.path, body=body, headers=forward)
                    answer = conn.getresponse()
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in _HOP:
                            self.send_header(key, value)
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    while True:
                        data = answer.read1(65536)
                        if not data:
                            break
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                finally:
                    conn.close()

        super().__init__(Handler)
        self.base_url = self.origin

    def bodies(self, path_suffix: str) -> list[bytes]:
        """Bodies of the requests whose path ends with ``path_suffix``, oldest first."""
        with self._lock:
            return [r.body for r in self.requests if r.path.split("?")[0].endswith(path_suffix)]
