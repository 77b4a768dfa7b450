"""Small ASGI middlewares: bearer-token authentication (401), a request-body size limit (413)
and request counters.

Written against raw ASGI rather than ``BaseHTTPMiddleware`` so they add microseconds, not a
task per request, on the lookup path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]


async def _send_json(send: Callable, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


def app_path(scope: Scope) -> str:
    """The route as the app sees it: Ray Serve's proxy (and any ASGI server mounted under a
    prefix) leaves ``root_path`` (the ``route_prefix``) at the front of ``path``."""
    path, root = scope.get("path", ""), scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


class BearerAuth:
    """Answer 401 to a request under ``prefix`` without ``Authorization: Bearer <token>``.

    Checked on the route as the app sees it (any ``route_prefix`` stripped) before anything else,
    so no body is read for a stranger. Both tokens are hashed before a constant-time comparison,
    so the answer's timing reveals neither how much of a guess was right nor the token's length.
    Paths outside ``prefix`` (``/healthz``, ``/readyz``, docs) stay open for probes.
    """

    def __init__(self, app: ASGIApp, token: str, prefix: str = "/v1"):
        if not token:
            raise ValueError("BearerAuth needs a non-empty token")
        self.app, self.prefix = app, prefix
        self.expected = hashlib.sha256(token.encode()).digest()

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not app_path(scope).startswith(self.prefix):
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, given = value.strip().partition(b" ")
                if scheme.lower() != b"bearer":
                    given = b""
                break
        if given.strip() and hmac.compare_digest(hashlib.sha256(given.strip()).digest(), self.expected):
            return await self.app(scope, receive, send)
        await _send_json(send, 401, {"detail": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                         [(b"www-authenticate", b'Bearer realm="semconv"')])


class BodySizeLimit:
    """Answer 413 to a request whose body is (or turns out to be) over ``max_bytes``.

    A declared ``content-length`` is checked up front; a body without one (chunked) is read here
    up to the limit and replayed to the app, so the app never sees an over-long body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = {"detail": f"request body over the limit of {self.max_bytes} bytes"}
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_json(send, 400, {"detail": "content-length is not an integer"})
        if declared is not None:
            if declared > self.max_bytes:
                return await _send_json(send, 413, too_large)
            return await self.app(scope, receive, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await _send_json(send, 413, too_large)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive() -> dict:
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)


def route_label(scope: Scope) -> str:
    """The matched route's template (bounded label cardinality), else ``other``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"


class RequestMetrics:
    """Call ``record(endpoint, method, status)`` once per HTTP request, after the response starts.

    ``make_recorder`` is called on the first request, inside the serving process, so a
    Prometheus counter is created where it is exported (a Serve replica) and never at import.
    """

    def __init__(self, app: ASGIApp, make_recorder: Callable[[], Callable[[str, str, int], None]]):
        self.app = app
        self.make_recorder = make_recorder
        self._record: Callable[[str, str, int], None] | None = None

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def status_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            if self._record is None:
                self._record = self.make_recorder()
            self._record(route_label(scope), scope.get("method", ""), status)


def serve_counter_recorder() -> Callable[[str, str, int], None]:
    """A recorder backed by ``ray.serve.metrics.Counter`` (``semconv_http_requests_total``)."""
    from ray.serve.metrics import Counter

    counter = Counter(
        "semconv_http_requests",
        description="HTTP requests answered by the semconv app, by endpoint, method and status.",
        tag_keys=("endpoint", "method", "status"),
    )

    def record(endpoint: str, method: str, status: int) -> None:
        counter.inc(tags={"endpoint": endpoint, "method": method, "status": str(status)})

    return record
