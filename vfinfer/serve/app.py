"""The HTTP API (FastAPI): one cell per ``POST /v1/cells``, several per ``/v1/cells:batch``,
one metaphase image per ``POST /v1/metaphase`` (segmented first, when the server has a
segmenter), health, model summary and Prometheus metrics. ``create_app(pipeline, ...)`` builds
it around an open ``Pipeline``; ``vfinfer.serve.server`` runs it under uvicorn.

Each request decodes and preprocesses its own images on a worker thread (nothing is written
to disk but the multipart parser's own spooled temporary files), then waits for the dynamic
batcher. Whatever goes wrong with one request is answered to that request alone, as one JSON
error (``vfinfer.serve.limits``).
"""

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vfinfer import __version__
from vfinfer.io.results import karyogram_png
from vfinfer.serve.batcher import Batcher, QueueFull
from vfinfer.serve.limits import ApiError, BodyTooLarge, Limits, bad_input, check_name, check_pixels
from vfinfer.serve.metrics import CountRequests, Metrics
from vfinfer.util.images import ImageReadError, decode_gray8

OPEN_PATHS = ("/v1/health/live", "/v1/health/ready", "/v2/health/live", "/v2/health/ready")
RETRY_AFTER_S = "1"


class BodyLimit:
    """Pure ASGI middleware: 413 for a declared Content-Length over the limit, and a body
    that grows past it (chunked uploads) fails the read with ``BodyTooLarge``."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _json_response(BodyTooLarge(self.max_bytes))(scope, receive, send)
        seen = [0]

        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


def _json_response(error):
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app(pipeline, limits=None, token=None, max_wait_ms=5.0, max_batch=8,
               segmenter=None):
    """The FastAPI app around an open pipeline (and ``segmenter``, a
    ``vfinfer.segment.segmenter.Segmenter`` for ``/v1/metaphase``); the batcher stops when
    the app shuts down (the caller closes the pipeline and the segmenter)."""
    limits = limits or Limits()
    state = ServerState(pipeline, limits, token, max_wait_ms, max_batch)
    state.segmenter = segmenter

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await run_in_threadpool(state.batcher.stop)  # queued cells finish first

    app = FastAPI(title="vfinfer", version=__version__, lifespan=lifespan,
                  description="Varifocal-Net chromosome classification, one cell per request")
    app.state.vfinfer = state
    _add_error_handlers(app, state)
    _add_routes(app, state)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(CountRequests, metrics=state.metrics)
    return app


class ServerState:
    def __init__(self, pipeline, limits, token, max_wait_ms, max_batch):
        self.pipeline, self.limits = pipeline, limits
        self.token = token.encode() if token else None
        self.batcher = Batcher(pipeline, max_wait_ms=max_wait_ms, max_batch=max_batch,
                               queue_size=limits.queue_size)
        self.metrics = Metrics(lambda: self.batcher.depth)
        self.batcher.on_batch = self.metrics.on_batch
        self.batching = {"max_wait_ms": max_wait_ms, "max_batch_cells": max_batch,
                         "engine_batch_chromosomes": pipeline.batch_size}

    def check_token(self, request):
        if self.token is None or request.url.path in OPEN_PATHS:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 self.token):
            raise ApiError(401, "unauthorized", "missing or wrong token (send "
                           "'Authorization: Bearer <token>')",
                           headers={"WWW-Authenticate": "Bearer"})

    def model_summary(self):
        manifest, backend = self.pipeline.manifest, self.pipeline.backend
        return {"name": manifest.model_dir.name, "model": manifest.summary(),
                "preset": self.pipeline.config.preset, "backend": backend.describe(),
                "dispatch": self.pipeline.dispatch_mode, "batching": self.batching,
                "limits": self.limits.describe(), "version": __version__}


def _add_error_handlers(app, state):
    @app.exception_handler(ApiError)
    async def api_error(_request, exc):
        state.metrics.errors.labels(exc.code).inc()
        return _json_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return await api_error(_request, ApiError(exc.status_code, code, exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(_request, exc):
        message = " ".join(str(exc).split()) or type(exc).__name__
        return await api_error(_request, ApiError(500, "internal", message))


def _add_routes(app, state):
    @app.get("/v1/health/live")
    @app.get("/v2/health/live", include_in_schema=False)
    async def live():
        return {"live": True}

    @app.get("/v1/health/ready")
    @app.get("/v2/health/ready", include_in_schema=False)
    async def ready():
        ok = state.batcher.alive and state.pipeline.backend is not None
        body = {"ready": ok, "model": state.pipeline.manifest.model_dir.name,
                "backend": state.pipeline.backend.name if ok else None}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(request: Request):
        state.check_token(request)
        return {"models": [state.model_summary()]}

    @app.get("/metrics")
    async def metrics(request: Request):
        state.check_token(request)
        data, content_type = state.metrics.exposition()
        return Response(data, media_type=content_type)

    @app.post("/v1/cells")
    async def cells(request: Request):
        """One cell: multipart/form-data (``images`` parts, optional ``name``) or JSON
        ``{"name", "images": [{"file", "data": base64}]}``; ``?karyogram=true`` adds the
        karyogram PNG (base64) as ``karyogram_png``."""
        started = time.perf_counter()
        state.check_token(request)
        name, parts, karyogram = await read_cell_request(request, state.limits)
        return await classify(state, name, parts, karyogram, started)

    @app.post("/v1/cells:batch")
    async def cells_batch(request: Request):
        """Several cells as JSON ``{"cells": [{"name", "images": [...]}, ...]}``; each entry
        of ``results`` is a result or ``{"case", "error"}`` for that cell alone."""
        started = time.perf_counter()
        state.check_token(request)
        cells, karyogram = await read_batch_request(request, state.limits)
        if state.batcher.depth + len(cells) > state.limits.queue_size:
            raise queue_full(f"{state.batcher.depth} cells are waiting")
        answers = await asyncio.gather(*(
            classify(state, name, parts, karyogram, started, raise_errors=False)
            for name, parts in cells))
        return {"results": answers}

    _add_metaphase_route(app, state)


def _add_metaphase_route(app, state):
    @app.post("/v1/metaphase")
    async def metaphase(request: Request):
        """One metaphase image, sent as one cell of ``/v1/cells`` with a single image: it is
        segmented, its chromosomes cut out and classified; the result carries each
        chromosome's ``segment`` and a ``segmentation`` section; ``?overlay=true`` adds the
        overlay PNG (base64) as ``overlay_png``."""
        started = time.perf_counter()
        state.check_token(request)
        if state.segmenter is None:
            raise ApiError(404, "no_segmenter", "this server has no segmentation model "
                           "(start it with --seg-model)")
        name, parts, karyogram = await read_cell_request(request, state.limits)
        if len(parts) != 1:
            raise bad_input(f"{name}: send exactly one metaphase image (got {len(parts)})")
        held = {}
        result = await classify(state, name, parts, karyogram, started,
                                decode=lambda *args: decode_metaphase(*args, held))
        from vfinfer.pipeline.metaphase import attach_segmentation, result_overlay

        attach_segmentation(result, held["segmented"], state.segmenter)
        if _flag(request.query_params.get("overlay", "false")):
            png = await run_in_threadpool(result_overlay, result, held["segmented"])
            result["overlay_png"] = base64.b64encode(png).decode("ascii")
        return result


def queue_full(detail):
    return ApiError(503, "queue_full", f"server busy: {detail}; retry later",
                    headers={"Retry-After": RETRY_AFTER_S})


async def classify(state, name, parts, karyogram, started, raise_errors=True,
                   decode=None):
    """One cell through decode (``decode_cell``, or ``decode``), the batcher and
    (optionally) the karyogram."""
    try:
        if isinstance(parts, ApiError):
            raise parts
        if state.batcher.depth >= state.limits.queue_size:  # before decoding anything
            raise queue_full(f"{state.batcher.depth} cells are waiting")
        prepared = await run_in_threadpool(decode or decode_cell, state, name, parts)
        try:
            future = state.batcher.submit(prepared)
        except QueueFull as exc:
            raise queue_full(str(exc)) from None
        remaining = state.limits.timeout_s - (time.perf_counter() - started)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), max(remaining, 0))
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"no answer within {state.limits.timeout_s} s "
                           "(the server is busy or the cell is large)") from None
        except Exception as exc:
            raise ApiError(500, "inference_failed", f"{name}: {exc}") from None
        if karyogram:
            png = await run_in_threadpool(karyogram_png, result, prepared.images)
            result["karyogram_png"] = base64.b64encode(png).decode("ascii")
        return result
    except ApiError as exc:
        if raise_errors:
            raise
        state.metrics.errors.labels(exc.code).inc()
        return {"case": name, **exc.body()}


def decode_cell(state, name, parts):
    """(file, bytes) parts -> a PreparedCase; ApiError 422/413 naming the file."""
    limits = state.limits
    if not parts:
        raise bad_input(f"{name}: no images (send one part per cut-out in the field 'images')")
    if len(parts) > limits.max_images:
        raise bad_input(f"{name}: {len(parts)} images, over the limit of {limits.max_images}")
    images, files = [], []
    for file, data in parts:
        check_pixels(data, file, limits)
        try:
            image = decode_gray8(data, file)
        except ImageReadError as exc:
            raise ApiError(422, "bad_image", str(exc), file) from None
        if image.size > limits.max_pixels:
            raise ApiError(413, "image_too_large", f"{file}: {image.shape[1]} x "
                           f"{image.shape[0]} pixels, over the limit of {limits.max_pixels}",
                           file)
        images.append(image)
        files.append(file)
    try:
        return state.pipeline.prepare(name, images, files)
    except ValueError as exc:
        raise bad_input(str(exc)) from None


def decode_metaphase(state, name, parts, held):
    """One metaphase part -> segmented (kept in ``held``) -> a PreparedCase of its cut-outs;
    ApiError 422/413 naming the file."""
    from vfinfer.pipeline.metaphase import NoChromosomesError, prepare_metaphase
    from vfinfer.segment.model import ImageTooLargeError

    file, data = parts[0]
    check_pixels(data, file, state.limits)
    try:
        image = decode_gray8(data, file)
    except ImageReadError as exc:
        raise ApiError(422, "bad_image", str(exc), file) from None
    try:
        held["segmented"], prepared = prepare_metaphase(state.pipeline, state.segmenter, image,
                                                        name)
    except ImageTooLargeError as exc:
        raise ApiError(413, "image_too_large", f"{file}: {exc}", file) from None
    except NoChromosomesError as exc:
        raise ApiError(422, "no_chromosomes", str(exc), file) from None
    return prepared


def _flag(value):
    return str(value).lower() in ("1", "true", "yes", "on")


async def read_cell_request(request, limits):
    """(name, [(file, bytes)], karyogram) from a multipart or JSON request."""
    karyogram = _flag(request.query_params.get("karyogram", "false"))
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=limits.max_images + 1, max_fields=16)
        except BodyTooLarge:
            raise
        except StarletteHTTPException as exc:  # the parser's own refusals (too many parts)
            raise bad_input(f"multipart body: {exc.detail}") from None
        name, parts = "cell", []
        try:
            for key, value in form.multi_items():
                if key == "images" and hasattr(value, "read"):
                    file = check_name(value.filename or f"image_{len(parts)}", "file name",
                                      limits)
                    parts.append((file, await value.read()))
                elif key == "name":
                    name = check_name(str(value), "name", limits)
                elif key == "karyogram":
                    karyogram = _flag(value)
        finally:
            await form.close()  # the spooled temporary files go
        return name, parts, karyogram
    body = await json_body(request)
    if not isinstance(body, dict):
        raise bad_input("the JSON body must be an object {\"name\", \"images\"}")
    name, parts = json_cell(body, limits, "cell")
    return name, parts, karyogram or bool(body.get("karyogram", False))


async def read_batch_request(request, limits):
    body = await json_body(request)
    cells = body.get("cells") if isinstance(body, dict) else None
    if not isinstance(cells, list) or not cells:
        raise bad_input("the JSON body must be {\"cells\": [{\"name\", \"images\"}, ...]}")
    if len(cells) > limits.max_cells:
        raise bad_input(f"{len(cells)} cells, over the limit of {limits.max_cells} per batch")
    parsed = []
    for i, cell in enumerate(cells):  # a malformed cell is that cell's error only
        try:
            parsed.append(json_cell(cell, limits, f"cell_{i}"))
        except ApiError as exc:
            name = cell.get("name") if isinstance(cell, dict) else None
            parsed.append((str(name or f"cell_{i}"), exc))
    karyogram = _flag(request.query_params.get("karyogram", "false")) or \
        bool(body.get("karyogram", False))
    return parsed, karyogram


async def json_body(request):
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/json"):
        raise ApiError(415, "unsupported_media_type", f"content type {content_type!r}: send "
                       "multipart/form-data (field 'images') or application/json")
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_input(f"the body is not valid JSON ({exc})") from None


def json_cell(cell, limits, default_name):
    """(name, [(file, bytes)]) of one JSON cell ``{"name", "images": [{"file", "data"}]}``."""
    if not isinstance(cell, dict) or not isinstance(cell.get("images"), list):
        raise bad_input(f"{default_name}: expected {{\"name\", \"images\": [{{\"file\", "
                        "\"data\": base64}}]}}")
    name = check_name(str(cell.get("name") or default_name), "name", limits)
    if len(cell["images"]) > limits.max_images:
        raise bad_input(f"{name}: {len(cell['images'])} images, over the limit of "
                        f"{limits.max_images}")
    parts = []
    for i, image in enumerate(cell["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("data"), str):
            raise bad_input(f"{name}: image {i} must be {{\"file\", \"data\": base64}}")
        file = check_name(str(image.get("file") or f"image_{i}"), "file name", limits)
        try:
            parts.append((file, base64.b64decode(image["data"], validate=True)))
        except (binascii.Error, ValueError):
            raise ApiError(422, "bad_image", f"{file}: data is not valid base64",
                           file) from None
    return name, parts
