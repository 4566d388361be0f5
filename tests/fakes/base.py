"""A small threaded HTTP server that fakes one provider; subclasses implement :meth:`FakeProvider.handle`.

Faults are queued with :meth:`FakeProvider.fail_next` and consumed one per request:

- ``"timeout"``: hold the request for ``hang_s`` before answering (longer than the client's timeout);
- ``"500"``: answer HTTP 500;
- ``"429"``: answer HTTP 429 with ``Retry-After: 1``;
- anything else is handed to the subclass (``"rate_limit"``, ``"expire_token"`` ...).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True))


Answer = tuple[int, Any]  # (status, JSON-able body or bytes)


class FakeProvider:
    hang_s = 2.0

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.accepted: list[Request] = []  # requests the fake counted as delivered
        self.faults: deque[str] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=type(self).__name__, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, *faults: str) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _take_fault(self) -> str:
        with self._lock:
            return self.faults.popleft() if self.faults else ""

    def handle(self, req: Request, fault: str) -> Answer:
        raise NotImplementedError

    def fault_applies(self, req: Request, fault: str) -> bool:
        """Whether a queued fault hits this request (e.g. not a token fetch); default: every request."""
        return True

    def accepted_json(self) -> bytes:
        with self._lock:
            items = [{"at": r.at, "body": r.body.decode("utf-8", "replace")} for r in self.accepted]
        return json.dumps(items, ensure_ascii=False).encode()

    def accept(self, req: Request) -> None:
        with self._lock:
            self.accepted.append(req)

    def _dispatch(self, req: Request) -> tuple[int, bytes, dict[str, str]]:
        with self._lock:
            self.requests.append(req)
        fault = self._take_fault()
        if fault and not self.fault_applies(req, fault):
            with self._lock:
                self.faults.appendleft(fault)  # kept for the next request it applies to
            fault = ""
        if fault == "timeout":
            time.sleep(self.hang_s)
            return 504, b"{}", {}
        if fault == "500":
            return 500, b"internal error", {"Content-Type": "text/plain"}
        if fault == "429":
            return 429, b"slow down", {"Retry-After": "1"}
        status, body = self.handle(req, fault)
        raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        return status, raw, {"Content-Type": "application/json; charset=utf-8"}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # one buffered write per response, no Nagle: otherwise header and body leave as two segments
            # and delayed ACKs add ~40 ms to every request (a slow fake would distort the benchmarks)
            wbufsize = 65536
            disable_nagle_algorithm = True

            def _any(self) -> None:
                split = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request(
                    method=self.command,
                    path=split.path,
                    # keep_blank_values and no '+' decoding surprises: parse_qsl decodes %XX and '+'
                    query=dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True)),
                    headers={k: v for k, v in self.headers.items()},
                    body=body,
                )
                req.headers["_raw_query"] = split.query
                if split.path == "/_fake/accepted":  # for a fake in another process (the benchmarks)
                    status, raw, headers = 200, fake.accepted_json(), {"Content-Type": "application/json"}
                else:
                    status, raw, headers = fake._dispatch(req)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a "timeout" fault): nothing to answer

            do_GET = do_POST = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class MinuteWindow:
    """Counts calls per key in a sliding minute, as the providers' per-robot limits do."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._calls: dict[str, deque[float]] = {}

    def allow(self, key: str, now: float) -> bool:
        q = self._calls.setdefault(key, deque())
        while q and q[0] <= now - 60:
            q.popleft()
        if len(q) >= self.per_minute:
            return False
        q.append(now)
        return True
