"""The HTTP API (FastAPI): one cell per ``POST /v1/cells``, several per ``/v1/cells:batch``,
one metaphase image per ``POST /v1/metaphase`` (segmented first, when the server has a
segmenter), health, model summary and Prometheus metrics; the Open Inference Protocol's
``/v2`` routes (``vfinfer.serve.oip``) and, with a cases directory, the review page and its
routes (``vfinfer.serve.review``). ``create_app(pipeline, ...)`` builds it around an open
``Pipeline``; ``vfinfer.serve.server`` runs it under uvicorn. Admission, decoding and the
batcher, shared by all of them, are in ``vfinfer.serve.admission``.

The JSON bodies are the pydantic models of ``vfinfer.serve.schemas`` (published on ``/docs``
and ``/openapi.json``); a body that does not validate is a 422 in the project's error shape.
When the server has a token, every route but health depends on ``require_token`` (HTTP
bearer; a 401 otherwise, and before any complaint about the body).

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
import logging
from typing import Annotated, Optional

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from vfinfer import __version__
from vfinfer.io.results import karyogram_png
from vfinfer.io.review import ReviewStore, image_files
from vfinfer.serve.admission import (
    arrival,
    classify,
    decode_cell,
    decode_metaphase,
    public_model,
    queue_full,
)
from vfinfer.serve.batcher import Batcher
from vfinfer.serve.guards import (
    BodyGuard,
    BodyTimeout,
    HostGuard,
    ImageBudget,
    InFlight,
    Unexpected,
    allowed_hosts,
)
from vfinfer.serve.limits import (
    ApiError,
    BodyTooLarge,
    Limits,
    bad_input,
    check_name,
    media_type,
    require_json,
)
from vfinfer.serve.metrics import CountRequests, Metrics
from vfinfer.serve.oip import OipErrors, add_oip_routes
from vfinfer.serve.review import add_review_routes
from vfinfer.serve.schemas import (
    ERROR_RESPONSES,
    REQUEST_MODELS,
    BatchRequest,
    Cell,
    CellProblem,
    CellRequest,
    describe,
)

OPEN_PATHS = ("/v1/health/live", "/v1/health/ready", "/v2/health/live", "/v2/health/ready")
CLIENT_GONE = 499  # the status recorded for a request whose client hung up (nginx's)
log = logging.getLogger("vfinfer.serve")
bearer = HTTPBearer(auto_error=False, description="the server's token (vfinfer serve "
                    "--token-file); health routes need none")
Flag = Annotated[str, Query(description="1, true, yes or on to ask for it")]


def _json_response(error):
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app(pipeline, limits=None, token=None, max_wait_ms=5.0, max_batch=8,
               segmenter=None, hosts=None, cases_dir=None):
    """The FastAPI app around an open pipeline (and ``segmenter``, a
    ``vfinfer.segment.segmenter.Segmenter`` for ``/v1/metaphase``); the batcher stops when
    the app shuts down (the caller closes the pipeline and the segmenter). ``token``: one
    token, or ``{name: token}``; ``hosts``: the Host names it answers to (default: the
    loopback names); ``cases_dir``: the cases the review page opens and keeps (None: no
    review, ``vfinfer.serve.review``)."""
    limits = limits or Limits()
    state = ServerState(pipeline, limits, token, max_wait_ms, max_batch)
    state.segmenter = segmenter
    state.review_store = None if cases_dir is None else ReviewStore(cases_dir)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await run_in_threadpool(state.batcher.stop)  # queued cells finish first

    docs = {} if token is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="vfinfer", version=__version__, lifespan=lifespan,
                  description="Varifocal-Net chromosome classification, one cell per request",
                  **docs)
    app.state.vfinfer = state
    _add_error_handlers(app, state)
    _add_routes(app, state)
    _publish_request_models(app)
    count = state.count_error
    app.add_middleware(Unexpected, count=count)  # inside: sees what the handlers do not
    app.add_middleware(BodyGuard, limits=limits, count=count)
    app.add_middleware(InFlight, limit=limits.max_requests, open_paths=OPEN_PATHS, count=count)
    app.add_middleware(HostGuard, allowed_hosts=hosts or allowed_hosts("127.0.0.1"),
                       count=count)
    app.add_middleware(OipErrors)  # outside the guards: their refusals in the v2 shape too
    app.add_middleware(CountRequests, metrics=state.metrics)
    return app


class ServerState:
    def __init__(self, pipeline, limits, token, max_wait_ms, max_batch):
        self.pipeline, self.limits = pipeline, limits
        if isinstance(token, str):
            token = {"token": token}
        self.tokens = {name: value.encode() for name, value in (token or {}).items()}
        self.token = bool(self.tokens)  # routes depend on require_token when True
        self.batcher = Batcher(pipeline, max_wait_ms=max_wait_ms, max_batch=max_batch,
                               queue_size=limits.queue_size)
        self.metrics = Metrics(lambda: self.batcher.depth)
        self.batcher.on_batch = self.metrics.on_batch
        self.batching = {"max_wait_ms": max_wait_ms, "max_batch_cells": max_batch,
                         "engine_batch_chromosomes": pipeline.batch_size}
        self.budget = ImageBudget(limits.max_inflight_mb << 20)

    def count_error(self, code):
        self.metrics.errors.labels(code).inc()

    def check_token(self, credentials):
        """The name of the token the bearer ``credentials`` carry (None when the server has
        no token); ApiError 401 unless they carry one of the server's tokens."""
        if not self.tokens:
            return None
        given = credentials.credentials.strip().encode() if credentials else b""
        names = [name for name, token in self.tokens.items()
                 if hmac.compare_digest(given, token)]  # every token compared: constant time
        if not names:
            raise ApiError(401, "unauthorized", "missing or wrong token (send "
                           "'Authorization: Bearer <token>')",
                           headers={"WWW-Authenticate": "Bearer"})
        return names[0]

    async def token_first(self, request, error):
        """``error``, or the 401 that comes before it when the route needs a token the
        request lacks (FastAPI reads and parses a declared body before the dependencies)."""
        if request.url.path not in OPEN_PATHS:
            try:
                self.check_token(await bearer(request))
            except ApiError as refusal:
                return refusal
        return error

    def model_summary(self):
        manifest, backend = self.pipeline.manifest, self.pipeline.backend
        return {"name": manifest.model_dir.name, "model": public_model(manifest.summary()),
                "preset": self.pipeline.config.preset, "backend": backend.describe(),
                "dispatch": self.pipeline.dispatch_mode, "batching": self.batching,
                "limits": self.limits.describe(), "version": __version__}


async def require_token(
        request: Request,
        credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(bearer)]):
    """The dependency of every route but health: ``Authorization: Bearer <token>``; the
    token's name goes to ``request.state.token_name``."""
    request.state.token_name = request.app.state.vfinfer.check_token(credentials)


def _add_error_handlers(app, state):
    @app.exception_handler(ApiError)
    async def api_error(_request, exc):
        state.metrics.errors.labels(exc.code).inc()
        return _json_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc):
        """FastAPI's own 422 (a body that is not JSON or not the model) in our shape."""
        refusal = bad_input(describe(exc.errors(), skip=1, whole="the JSON body"))
        return await api_error(request, await state.token_first(request, refusal))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        cause = exc.__cause__  # FastAPI's 400 wraps what failed while it read the body
        if isinstance(cause, ClientDisconnect):
            return await client_gone(request, cause)
        refusal = body_refusal(cause)
        if refusal is not None:
            return await api_error(request, await state.token_first(request, refusal))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return await api_error(request, ApiError(exc.status_code, code, exc.detail))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request, _exc):
        """The client hung up before its body was read: nobody to answer, nothing wrong here."""
        log.info("client disconnected during %s %s", request.method, request.url.path)
        state.metrics.disconnects.inc()
        return Response(status_code=CLIENT_GONE)


def body_refusal(cause):
    """The ApiError for what went wrong while a JSON body was read, or None."""
    if isinstance(cause, ApiError):  # BodyTooLarge, BodyTimeout
        return cause
    if isinstance(cause, UnicodeDecodeError):
        return bad_input(f"the body is not valid JSON ({cause})")
    if isinstance(cause, RecursionError):
        return bad_input("the JSON body is nested too deeply")
    return None


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

    api = APIRouter(dependencies=[Depends(require_token)] if state.token else [],
                    responses=ERROR_RESPONSES)

    @api.get("/v1/models")
    async def models():
        return {"models": [state.model_summary()]}

    @api.get("/metrics")
    async def metrics():
        data, content_type = state.metrics.exposition()
        return Response(data, media_type=content_type)

    if state.token:  # the schema behind the token too (and no /docs page)
        @api.get("/openapi.json", include_in_schema=False)
        async def schema():
            return app.openapi()

    _add_cell_routes(api, state)
    _add_metaphase_route(api, state)
    add_review_routes(app, api, state, review_upload(state))
    add_oip_routes(api, state)
    app.include_router(api)


def _add_cell_routes(api, state):
    @api.post("/v1/cells", openapi_extra=_cell_body("CellRequest"))
    async def cells(request: Request, karyogram: Flag = "false"):
        """One cell: multipart/form-data (``images`` parts, optional ``name``) or JSON
        ``{"name", "images": [{"file", "data": base64}]}``; ``?karyogram=true`` adds the
        karyogram PNG (base64) as ``karyogram_png``."""
        started = arrival(request)
        name, parts, karyogram = await read_cell_request(request, state.limits,
                                                         _flag(karyogram))
        return await classify(state, name, parts, karyogram, started)

    @api.post("/v1/cells:batch", dependencies=[Depends(require_json)])
    async def cells_batch(request: Request, body: BatchRequest, karyogram: Flag = "false"):
        """Several cells as JSON ``{"cells": [{"name", "images": [...]}, ...]}``; each entry
        of ``results`` is a result or ``{"case", "error"}`` for that cell alone."""
        started = arrival(request)
        cells = read_batch_request(body, state.limits)
        if len(cells) > state.limits.queue_size:
            raise bad_input(f"{len(cells)} cells can never wait together in this server's "
                            f"queue of {state.limits.queue_size}: send smaller batches")
        if state.batcher.depth + len(cells) > state.limits.queue_size:
            raise queue_full(f"{state.batcher.depth} cells are waiting")
        wanted = _flag(karyogram) or body.karyogram
        answers = await asyncio.gather(*(
            classify(state, name, parts, wanted, started, raise_errors=False)
            for name, parts in cells))
        return {"results": answers}


def _add_metaphase_route(api, state):
    @api.post("/v1/metaphase", openapi_extra=_cell_body("CellRequest"))
    async def metaphase(request: Request, karyogram: Flag = "false", overlay: Flag = "false"):
        """One metaphase image, sent as one cell of ``/v1/cells`` with a single image: it is
        segmented, its chromosomes cut out and classified; the result carries each
        chromosome's ``segment`` and a ``segmentation`` section; ``?overlay=true`` adds the
        overlay PNG (base64) as ``overlay_png``."""
        started = arrival(request)
        if state.segmenter is None:
            raise ApiError(404, "no_segmenter", "this server has no segmentation model "
                           "(start it with --seg-model)")
        name, parts, karyogram = await read_cell_request(request, state.limits,
                                                         _flag(karyogram))
        if len(parts) != 1:
            raise bad_input(f"{name}: send exactly one metaphase image (got {len(parts)})")
        held = {}
        result = await classify(state, name, parts, karyogram, started,
                                decode=lambda *args: decode_metaphase(*args, held))
        from vfinfer.pipeline.metaphase import attach_segmentation, result_overlay

        attach_segmentation(result, held["segmented"], state.segmenter)
        if _flag(overlay):
            png = await run_in_threadpool(result_overlay, result, held["segmented"])
            result["overlay_png"] = base64.b64encode(png).decode("ascii")
        return result


def review_upload(state):
    """The review page's upload: ``async (request, metaphase) -> (result, {name: bytes})``, a
    cell (or a metaphase image) classified like ``/v1/cells`` (``/v1/metaphase``) with the
    files a reviewable case keeps."""
    async def upload(request, metaphase):
        started = arrival(request)
        name, parts, _ = await read_cell_request(request, state.limits)
        held = {}
        if not metaphase:
            decode = lambda *args: held.setdefault("prepared", decode_cell(*args))  # noqa: E731
        elif state.segmenter is None:
            raise ApiError(404, "no_segmenter", "this server has no segmentation model "
                           "(start it with --seg-model)")
        elif len(parts) != 1:
            raise bad_input(f"{name}: send exactly one metaphase image (got {len(parts)})")
        else:
            def decode(*args):
                return held.setdefault("prepared", decode_metaphase(*args, held))
        result = await classify(state, name, parts, False, started, decode=decode)
        return result, await run_in_threadpool(reviewable_files, state, result, held)

    return upload


def reviewable_files(state, result, held):
    """{name: bytes} of a classified upload: karyogram, overlay and its images."""
    from vfinfer.pipeline.metaphase import attach_segmentation, result_overlay

    prepared, segmented = held["prepared"], held.get("segmented")
    files = {}
    if segmented is not None:
        attach_segmentation(result, segmented, state.segmenter)
        files["overlay.png"] = result_overlay(result, segmented)
    images = prepared.display or prepared.images
    files["karyogram.png"] = karyogram_png(result, images)
    files.update(image_files(prepared.files, images,
                             None if segmented is None else segmented.gray))
    return files


def _cell_body(model):
    """The OpenAPI request body of a route that reads JSON (``model``) or multipart itself."""
    form = {"type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                   "description": "one part per image; its file name is reported"},
        "name": {"type": "string", "description": "the case name (cell when missing)"},
        "karyogram": {"type": "boolean", "description": "add the karyogram PNG"}}}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}},
        "multipart/form-data": {"schema": form}}}}


def _publish_request_models(app):
    """Put every model of ``vfinfer.serve.schemas`` in the OpenAPI components, those only
    named by ``_cell_body`` included."""
    build = app.openapi

    def openapi():
        if app.openapi_schema is None:
            known = build().setdefault("components", {}).setdefault("schemas", {})
            for model in REQUEST_MODELS:
                found = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, schema in {**found.pop("$defs", {}), model.__name__: found}.items():
                    known.setdefault(name, schema)
        return app.openapi_schema

    app.openapi = openapi


def _flag(value):
    return str(value).lower() in ("1", "true", "yes", "on")


async def read_cell_request(request, limits, karyogram=False):
    """(name, [(file, bytes)], karyogram) from a multipart or JSON (``CellRequest``) request;
    ``karyogram``: the query's flag, which the body may set too."""
    if media_type(request) == "multipart/form-data":
        try:
            form = await request.form(max_files=limits.max_images + 1, max_fields=16)
        except (BodyTooLarge, BodyTimeout):
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
    try:
        cell = CellRequest.model_validate(body)
    except ValidationError as exc:
        raise bad_input(describe(exc.errors(include_url=False), whole="the JSON body")) from None
    name, parts = json_cell(cell, limits, "cell")
    return name, parts, karyogram or cell.karyogram


def read_batch_request(body, limits):
    """[(name, [(file, bytes)] or the ApiError of that cell)] of a validated ``BatchRequest``;
    a cell that is malformed or over a limit is that cell's error only."""
    if len(body.cells) > limits.max_cells:
        raise bad_input(f"{len(body.cells)} cells, over the limit of {limits.max_cells} per "
                        "batch")
    parsed = []
    for i, cell in enumerate(body.cells):
        name = cell.name or f"cell_{i}"
        if isinstance(cell, CellProblem):
            parsed.append((name, bad_input(f"{name}: {describe(cell.errors)}")))
            continue
        try:
            parsed.append(json_cell(cell, limits, f"cell_{i}"))
        except ApiError as exc:
            parsed.append((name, exc))
    return parsed


async def json_body(request):
    require_json(request)
    body = await request.body()
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_input(f"the body is not valid JSON ({exc})") from None
    except RecursionError:
        raise bad_input("the JSON body is nested too deeply") from None


def json_cell(cell: Cell, limits, default_name):
    """(name, [(file, bytes)]) of one validated cell: the server's limits on names and image
    counts, and the base64 payloads (a bad one is ``bad_image`` naming its file)."""
    name = check_name(cell.name or default_name, "name", limits)
    if len(cell.images) > limits.max_images:
        raise bad_input(f"{name}: {len(cell.images)} images, over the limit of "
                        f"{limits.max_images}")
    parts = []
    for i, image in enumerate(cell.images):
        file = check_name(image.file or f"image_{i}", "file name", limits)
        try:
            parts.append((file, base64.b64decode(image.data, validate=True)))
        except (binascii.Error, ValueError):
            raise ApiError(422, "bad_image", f"{file}: data is not valid base64",
                           file) from None
    return name, parts
