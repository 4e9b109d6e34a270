"""What stands between a client and the pipeline: the body's size and reading deadlines, the
Host and Origin headers, and the server's budget of decoded image bytes.

* ``BodyGuard`` (ASGI): 413 for a body over ``max_body_bytes`` (declared or counted), 408 for
  a body that is not complete within ``body_timeout_s`` of the request's arrival or that
  arrives slower than ``min_body_rate`` bytes/s after ``rate_grace_s``; every refusal counted.
* ``Unexpected`` (ASGI): an error no handler knows is logged with a request id and answered
  500 with that id alone.
* ``InFlight`` (ASGI): 503 past ``max_requests`` requests in flight; health is never refused.
* ``HostGuard`` (ASGI): 400 unless the Host header names an allowed host (DNS rebinding), 403
  for a browser request from another origin (a page the user visits posting to the server).
* ``ImageBudget``: decoded bytes in flight across all requests; a request is admitted before
  anything is decoded, from the sizes its files' headers declare, or answered 503.
"""

import asyncio
import logging
import threading
import time
import uuid

from fastapi.responses import JSONResponse

from vfinfer.serve.limits import ApiError, BodyTooLarge

ARRIVED = "vfinfer.arrived"  # ASGI scope key: perf_counter() when the request came in
DECODE_BYTES_PER_PIXEL = 8  # the most a decoder allocates per pixel (16-bit RGBA)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
log = logging.getLogger("vfinfer.serve")


class Unexpected:
    """Pure ASGI middleware: an error no handler knows is logged with a request id and
    answered 500 with that id only (nothing of the server's internals)."""

    def __init__(self, app, count):
        self.app, self.count = app, count

    async def __call__(self, scope, receive, send):
        started = [False]

        async def tracked(message):
            started[0] |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            request_id = uuid.uuid4().hex[:12]
            log.exception("request %s (%s %s) failed", request_id, scope.get("method"),
                          scope.get("path"))
            if started[0]:
                return
            error = ApiError(500, "internal", f"unexpected server error (request id "
                             f"{request_id}: the server's log has the details)")
            self.count(error.code)
            body = {"error": {**error.body()["error"], "request_id": request_id}}
            await JSONResponse(body, status_code=500)(scope, receive, send)


class BodyTimeout(ApiError):
    def __init__(self, why):
        super().__init__(408, "request_timeout", f"request body too slow: {why}",
                         headers={"Connection": "close"})


class BodyGuard:
    """Pure ASGI middleware: the body's size limit and its reading deadlines (see module)."""

    def __init__(self, app, limits, count):
        self.app, self.limits, self.count = app, limits, count

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[ARRIVED] = started = time.perf_counter()  # the request's time limit counts here
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() \
                and int(declared) > self.limits.max_body_bytes:
            return await self._refuse(BodyTooLarge(self.limits.max_body_bytes), send)
        body = {"seen": 0, "done": False}

        async def guarded():
            if body["done"]:  # after the body, only the disconnect is left to wait for
                return await receive()
            message = await self._next(receive, started, body["seen"])
            if message["type"] == "http.request":
                body["seen"] += len(message.get("body", b""))
                body["done"] = not message.get("more_body", False)
                if body["seen"] > self.limits.max_body_bytes:
                    raise BodyTooLarge(self.limits.max_body_bytes)
            return message

        await self.app(scope, guarded, send)

    async def _next(self, receive, started, seen):
        """The next message, within the body's deadline and at its minimum rate."""
        limits = self.limits
        elapsed = time.perf_counter() - started
        if elapsed > limits.rate_grace_s and seen < limits.min_body_rate * elapsed:
            raise BodyTimeout(f"{seen} bytes in {elapsed:.1f} s, under "
                              f"{limits.min_body_rate} bytes/s")
        left = limits.body_timeout_s - elapsed
        try:
            return await asyncio.wait_for(receive(), max(left, 0.001))
        except asyncio.TimeoutError:
            raise BodyTimeout(f"not complete within {limits.body_timeout_s:g} s") from None

    async def _refuse(self, error, send):
        self.count(error.code)
        response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
        await response({"type": "http"}, None, send)


class HostGuard:
    """Pure ASGI middleware: the Host allow-list and no cross-origin browser requests."""

    def __init__(self, app, allowed_hosts, count):
        self.app, self.count = app, count
        self.allowed = {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = _hostname(headers.get(b"host", b"").decode("latin-1"))
        origin = headers.get(b"origin", b"").decode("latin-1")
        error = None
        if host not in self.allowed:
            error = ApiError(400, "bad_host", f"Host {host or '(none)'!r} is not one this "
                             "server answers to (vfinfer serve --allow-host)")
        elif origin and _hostname(origin.split("://", 1)[-1]) not in self.allowed:
            error = ApiError(403, "cross_origin", f"requests from {origin} are not served "
                             "(no cross-origin access)")
        if error is None:
            return await self.app(scope, receive, send)
        self.count(error.code)
        await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)


def _hostname(authority):
    """The host of ``host[:port]`` or ``[v6]:port``, lower case, without brackets."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:authority.find("]")] if "]" in authority else authority
    return authority.split(":", 1)[0].split("/", 1)[0]


def allowed_hosts(bound_host, extra=()):
    """The hosts a server answers to: the one it is bound to, the loopback names, ``extra``."""
    return tuple(dict.fromkeys([bound_host, *LOCAL_HOSTS, *extra]))


class InFlight:
    """Pure ASGI middleware: at most ``limit`` requests in flight, health probes apart (they
    are never refused, so a flood of requests cannot make the server look dead)."""

    def __init__(self, app, limit, open_paths, count):
        self.app, self.limit, self.open_paths, self.count = app, limit, open_paths, count
        self.now = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            return await self.app(scope, receive, send)
        if self.now >= self.limit:
            error = ApiError(503, "busy", f"{self.now} requests in flight, the server's limit",
                             headers={"Retry-After": "1"})
            self.count(error.code)
            return await JSONResponse(error.body(), status_code=503,
                                      headers=error.headers)(scope, receive, send)
        self.now += 1  # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.now -= 1


class ImageBudget:
    """Decoded image bytes in flight across requests, at most ``capacity``."""

    def __init__(self, capacity):
        self.capacity, self.used = int(capacity), 0
        self._lock = threading.Lock()

    def try_acquire(self, amount):
        with self._lock:
            if self.used + amount > self.capacity:
                return False
            self.used += amount
            return True

    def release(self, amount):
        with self._lock:
            self.used -= amount


def reservation(sizes):
    """Bytes a cell of images with these (width, height) may hold while it is decoded one
    image at a time: the largest image's decoder buffer, plus every image's 8-bit gray copy."""
    pixels = [w * h for w, h in sizes]
    return max(pixels, default=0) * DECODE_BYTES_PER_PIXEL + sum(pixels)
