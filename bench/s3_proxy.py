"""An HTTP proxy on 127.0.0.1 in front of moto's S3 server, for the loader benchmarks.

It counts what it serves (requests by method, response-body bytes), so that what a loader asks object storage
for is measured at the server's side. With `serve_ranges`, a ranged GET is answered from the whole object, fetched
from moto once and kept: a real object store serves a range at a cost that does not grow with the object, while
moto 5 reads and copies the whole object for every ranged GET (its FakeKey.value; measured here: a 30 KB range
costs 3.6 ms from a 1 MB object and 23 ms from a 32 MB one), which makes a loader that reads by member look
slower than one that reads whole samples, whatever a real store would do.
"""

from __future__ import annotations

import http.client
import http.server
import re
import threading

from tests.conftest import free_port

_RANGE = re.compile(r"bytes=(\d+)-(\d+)$")


class Counter:
    """Requests and response-body bytes the proxy passed, by method."""

    def __init__(self):
        self.lock, self.requests, self.bytes = threading.Lock(), {}, 0

    def add(self, method: str, size: int) -> None:
        with self.lock:
            self.requests[method] = self.requests.get(method, 0) + 1
            self.bytes += size

    def reset(self) -> None:
        with self.lock:
            self.requests, self.bytes = {}, 0


def s3_proxy(upstream_port: int, counter: Counter, serve_ranges: bool = False) -> tuple[http.server.ThreadingHTTPServer, int]:
    """A proxy on 127.0.0.1 that passes bodiless requests (GET, HEAD) to moto and counts what it serves; returns the
    server (stop it with .shutdown()) and its port."""
    objects: dict[str, bytes] = {}  # path -> the whole object, with `serve_ranges`
    lock = threading.Lock()

    def upstream(method: str, path: str, headers: dict) -> tuple[int, list, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", upstream_port)
        try:
            connection.request(method, path, headers={**headers, "Host": f"127.0.0.1:{upstream_port}"})
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK wait between them

        def _reply(self, status: int, headers: list, body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                if key.lower() not in ("transfer-encoding", "connection"):
                    self.send_header(key, value)  # a HEAD keeps the server's Content-Length
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            counter.add(self.command, len(body))

        def _forward(self) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            wanted = _RANGE.match(self.headers.get("Range", ""))
            if serve_ranges and self.command == "GET" and wanted:
                with lock:
                    whole = objects.get(self.path)
                if whole is None:
                    status, _, body = upstream("GET", self.path, {k: v for k, v in headers.items() if k.lower() != "range"})
                    if status != 200:
                        self._reply(*upstream("GET", self.path, headers))
                        return
                    with lock:
                        whole = objects.setdefault(self.path, body)
                start, end = int(wanted[1]), min(int(wanted[2]), len(whole) - 1)
                part = whole[start : end + 1]
                self._reply(206, [("Content-Range", f"bytes {start}-{end}/{len(whole)}"), ("Content-Length", str(len(part)))], part)
                return
            self._reply(*upstream(self.command, self.path, headers))

        do_GET = do_HEAD = _forward

        def log_message(self, *args):
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port
