"""Fault injection for object-store tests: ``FaultyProxy``, an HTTP/1.1 reverse proxy in front of
the moto S3 server that answers with throttling errors or refuses connections on demand.

Modes, set from the test while clients are connected:

- pass (the default): every request goes to moto and its answer comes back unchanged;
- ``fail(n, status=503, after=0)``: after ``after`` more requests have passed, the next ``n``
  are answered by the proxy itself with ``status`` and an S3 XML error body (``SlowDown`` by
  default), Content-Length set and the request body read, so the client's keep-alive
  connection stays usable;
- ``refuse()`` / ``restore()``: close / reopen the listening socket on the same port and drop
  the open connections, so that clients get ECONNREFUSED until ``restore()``.

``requests`` counts the requests that reached the proxy (failed ones included), ``log`` holds
their ``(method, path)``. Every thread is a daemon; ``close()`` stops them all within about a
second.
"""

from __future__ import annotations

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: headers that belong to one hop (RFC 9110 7.6.1), never forwarded; Expect: the proxy itself
#: answers "100 Continue" (BaseHTTPRequestHandler), moto must not see it again
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "expect"}

SLOWDOWN = ("SlowDown", "Please reduce your request rate.")


def s3_error_body(code: str, message: str) -> bytes:
    """The XML body S3 sends with an error status."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>faulty-proxy</RequestId></Error>").encode()


class _Handler(BaseHTTPRequestHandler):
    """One client connection: forwards each request to moto over its own persistent connection."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.upstream: http.client.HTTPConnection | None = None
        self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, add=False)
            if self.upstream is not None:
                self.upstream.close()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        """Quiet: tests read ``FaultyProxy.log`` instead of stderr."""

    def _body(self) -> bytes:
        """The request's body (Content-Length or chunked), read whole."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes, length: int) -> None:
        self.send_response_only(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()

    def _forward(self, body: bytes) -> None:
        proxy = self.server.proxy
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        if chunked or "Content-Length" in self.headers:
            headers["Content-Length"] = str(len(body))
        try:
            self.upstream.request(self.command, self.path, body=body or None, headers=headers)
            resp = self.upstream.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.upstream.close()
            self.upstream = None
            msg = s3_error_body("BadGateway", f"faulty proxy: upstream failed: {exc}")
            self._answer(502, [("Content-Type", "application/xml")], msg, len(msg))
            return
        out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP | {"content-length"}]
        length = int(resp.getheader("Content-Length") or 0) if self.command == "HEAD" else len(data)
        self._answer(resp.status, out, data, length)

    def _handle(self) -> None:
        body = self._body()  # read it in every mode: the connection stays in step
        failure = self.server.proxy._next_failure(self.command, self.path)
        if failure is None:
            self._forward(body)
            return
        status, code, message = failure
        err = s3_error_body(code, message)
        self._answer(status, [("Content-Type", "application/xml")], err, len(err))

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler thread never holds up the interpreter or server_close
    allow_reuse_address = True  # restore() rebinds the same port at once
    proxy: FaultyProxy


class FaultyProxy:
    """A reverse proxy on 127.0.0.1 (a free port) in front of ``upstream`` (``http://host:port``).

    ``endpoint`` is the proxy's URL; point a client's endpoint_url at it. Thread-safe: the mode
    may change while requests are in flight.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self._lock = threading.Lock()
        self._failures: list[tuple[int, str, str] | None] = []  # per coming request; None: pass
        self._only: tuple[str | None, str | None] = (None, None)  # (method, path part) that counts
        self._connections: set[socket.socket] = set()
        self.requests = 0
        self.log: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str]] = []  # the requests answered with a failure
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._listen()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- modes
    def passthrough(self) -> None:
        """Forward every request (drops pending failures)."""
        with self._lock:
            self._failures.clear()

    def fail(self, n: int, status: int = 503, code: str = SLOWDOWN[0], message: str = SLOWDOWN[1],
             *, after: int = 0, method: str | None = None, match: str | None = None) -> None:
        """Let ``after`` requests pass, then answer ``n`` with ``status`` and an S3 error (``code``,
        ``message``); replaces any failures still pending. ``method`` / ``match``: only requests
        with that HTTP method / whose path contains ``match`` count (others pass untouched)."""
        with self._lock:
            self._failures = [None] * after + [(status, code, message)] * n
            self._only = (method, match)

    def refuse(self) -> None:
        """Close the listening socket and every open connection: new connections are refused."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()  # returns once serve_forever has stopped (it polls every 0.05 s)
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        with self._lock:
            conns = list(self._connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            self._listen()

    def close(self) -> None:
        """Stop serving (for good)."""
        self.refuse()

    @property
    def pending_failures(self) -> int:
        with self._lock:
            return sum(f is not None for f in self._failures)

    # ---- internals
    def _listen(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.proxy = self
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"faulty-proxy-{self.port}", daemon=True)
        thread.start()
        self._server, self._thread = server, thread

    def _next_failure(self, method: str, path: str) -> tuple[int, str, str] | None:
        with self._lock:
            self.requests += 1
            self.log.append((method, path))
            only_method, only_path = self._only
            if (only_method and method != only_method) or (only_path and only_path not in path):
                return None
            failure = self._failures.pop(0) if self._failures else None
            if failure is not None:
                self.failed.append((method, path))
            return failure

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
