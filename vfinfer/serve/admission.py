"""Admission and classification of one cell, shared by the routes of ``vfinfer.serve.app``
(``/v1/cells``, ``/v1/metaphase``, the review page's uploads) and ``vfinfer.serve.oip``
(``/v2/models/{name}/infer``): its images' sizes against the limits and the server's budget of
decoded bytes, decoding on a worker thread, the dynamic batcher, the request's deadline, and
one ``ApiError`` for whatever goes wrong with that cell alone.
"""

import asyncio
import base64
import logging
import time
import uuid
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from vfinfer.io.results import karyogram_png
from vfinfer.serve.batcher import QueueFull
from vfinfer.serve.guards import ARRIVED, reservation
from vfinfer.serve.limits import ApiError, bad_input, measure_parts
from vfinfer.util.images import ImageReadError, decode_gray8

RETRY_AFTER_S = "1"
log = logging.getLogger("vfinfer.serve")


def public_model(summary):
    """A model summary without the server's file system: directory and checkpoint by name."""
    source = dict(summary.get("source") or {})
    if source.get("path"):
        source["path"] = Path(source["path"]).name
    return {**summary, "dir": Path(summary["dir"]).name, "source": source}


def arrival(request):
    """perf_counter() when ``BodyGuard`` saw the request come in (now, without it)."""
    return request.scope.get(ARRIVED) or time.perf_counter()


def queue_full(detail):
    return ApiError(503, "queue_full", f"server busy: {detail}; retry later",
                    headers={"Retry-After": RETRY_AFTER_S})


async def classify(state, name, parts, karyogram, started, raise_errors=True,
                   decode=None):
    """One cell through admission (its images' sizes from their headers against the limits
    and the server's budget of decoded bytes), decode (``decode_cell``, or ``decode``), the
    batcher and (optionally) the karyogram."""
    try:
        if isinstance(parts, ApiError):
            raise parts
        if state.batcher.depth >= state.limits.queue_size:  # before decoding anything
            raise queue_full(f"{state.batcher.depth} cells are waiting")
        held = reservation(measure_parts(parts, state.limits))
        if not state.budget.try_acquire(held):
            raise queue_full("the images of the requests in flight fill the server's memory "
                             f"budget ({state.limits.max_inflight_mb} MB)")
        try:
            return await _classify_admitted(state, name, parts, karyogram, started, decode)
        finally:
            state.budget.release(held)
    except ApiError as exc:
        if raise_errors:
            raise
        state.count_error(exc.code)
        return {"case": name, **exc.body()}


async def _classify_admitted(state, name, parts, karyogram, started, decode):
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
    except Exception:
        request_id = uuid.uuid4().hex[:12]
        log.exception("request %s: inference of %s failed", request_id, name)
        raise ApiError(500, "inference_failed", f"{name}: inference failed (request id "
                       f"{request_id}: the server's log has the details)") from None
    result["model"] = public_model(result["model"])
    if karyogram:
        png = await run_in_threadpool(karyogram_png, result, prepared.images)
        result["karyogram_png"] = base64.b64encode(png).decode("ascii")
    return result


def decode_cell(state, name, parts):
    """(file, bytes) parts -> a PreparedCase; ApiError 422/413 naming the file."""
    limits = state.limits
    if not parts:
        raise bad_input(f"{name}: no images (send one part per cut-out in the field 'images')")
    if len(parts) > limits.max_images:
        raise bad_input(f"{name}: {len(parts)} images, over the limit of {limits.max_images}")
    images = [decode_part(data, file, limits) for file, data in parts]
    files = [file for file, _ in parts]
    try:
        return state.pipeline.prepare(name, images, files)
    except ValueError as exc:
        raise bad_input(str(exc)) from None


def decode_part(data, file, limits):
    """One image's bytes -> 8-bit gray; ApiError 422 naming the file."""
    try:
        return decode_gray8(data, file, max_pixels=limits.max_pixels)
    except ImageReadError as exc:
        raise ApiError(422, "bad_image", str(exc), file) from None


def decode_metaphase(state, name, parts, held):
    """One metaphase part -> segmented (kept in ``held``) -> a PreparedCase of its cut-outs;
    ApiError 422/413 naming the file."""
    from vfinfer.pipeline.metaphase import NoChromosomesError, prepare_metaphase
    from vfinfer.segment.model import ImageTooLargeError

    file, data = parts[0]
    image = decode_part(data, file, state.limits)
    try:
        held["segmented"], prepared = prepare_metaphase(state.pipeline, state.segmenter, image,
                                                        name)
    except ImageTooLargeError as exc:
        raise ApiError(413, "image_too_large", f"{file}: {exc}", file) from None
    except NoChromosomesError as exc:
        raise ApiError(422, "no_chromosomes", str(exc), file) from None
    return prepared
