"""What one request may hold, and the errors the server answers with (one JSON shape).

Every refusal is ``{"error": {"status", "code", "message", "file"?}}`` with the matching HTTP
status: 400 (a Host the server does not answer to), 401 (token), 403 (a cross-origin browser
request), 408 (a body too slow), 413 (body, image or request too large), 415 (media type),
422 (a bad image or field, naming the file), 500 (an unexpected error, with a
``request_id`` the server's log holds too), 503 (busy, with Retry-After), 504 (the request's
time ran out). ``docs/serving.md`` lists every limit and its default.
"""

from dataclasses import asdict, dataclass

from starlette.requests import Request

from vfinfer.util.image_header import HeaderError, image_size


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 << 20  # one request body (413 above)
    max_images: int = 200  # cut-outs per cell
    max_pixels: int = 16_000_000  # pixels per image, read from its header before decoding
    # pixels per request, all images together: 200 cut-outs of 400 x 400 pass
    max_request_pixels: int = 32_000_000
    max_inflight_mb: int = 512  # decoded image bytes of all requests together (503 above)
    max_cells: int = 32  # cells per POST /v1/cells:batch
    queue_size: int = 64  # cells accepted and waiting for the engines (503 above)
    timeout_s: float = 30.0  # per request, from its arrival to its answer (504 after)
    max_name_chars: int = 200  # case and file names
    header_timeout_s: float = 10.0  # request line and headers complete (connection closed)
    body_timeout_s: float = 30.0  # whole body received after the request came in (408)
    min_body_rate: int = 16_384  # bytes per second the body must keep up ... (408 below)
    rate_grace_s: float = 5.0  # ... after this many seconds
    max_requests: int = 256  # API requests in flight (503 above; health is never counted)
    max_connections: int = 1024  # open connections (closed at once above)

    def describe(self):
        return asdict(self)


class ApiError(Exception):
    """A refusal: HTTP ``status``, a stable ``code``, one-line ``message``, the ``file``."""

    def __init__(self, status, code, message, file=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, " ".join(str(message).split())
        self.file, self.headers = file, headers or {}

    def body(self):
        error = {"status": self.status, "code": self.code, "message": self.message}
        if self.file is not None:
            error["file"] = self.file
        return {"error": error}


class BodyTooLarge(ApiError):
    def __init__(self, limit):
        super().__init__(413, "body_too_large",
                         f"request body over the limit of {limit} bytes")


def bad_input(message, file=None):
    return ApiError(422, "bad_input", message, file)


def measure_parts(parts, limits):
    """(width, height) of each ``(file, bytes)`` part from its header, before any decoding:
    422 ``bad_image`` for a file whose size cannot be read (naming it), 413
    ``image_too_large`` over ``max_pixels``, 413 ``request_too_large`` when the images
    together are over ``max_request_pixels``."""
    sizes = []
    for file, data in parts:
        try:
            _fmt, width, height = image_size(data)
        except HeaderError as exc:
            raise ApiError(422, "bad_image", f"{file}: {exc}", file) from None
        if width * height > limits.max_pixels:
            raise ApiError(413, "image_too_large", f"{file}: {width} x {height} pixels, over "
                           f"the limit of {limits.max_pixels}", file)
        sizes.append((width, height))
    total = sum(w * h for w, h in sizes)
    if total > limits.max_request_pixels:
        raise ApiError(413, "request_too_large", f"{len(sizes)} images of {total} pixels in "
                       f"all, over the limit of {limits.max_request_pixels} per request")
    return sizes


def check_name(name, what, limits):
    if len(name) > limits.max_name_chars:
        raise bad_input(f"{what} is {len(name)} characters long, over the limit of "
                        f"{limits.max_name_chars}")
    return name


def media_type(request):
    """The request's media type, lower case, without parameters."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_json(request: Request):
    """A dependency: 415 unless the body is declared as JSON."""
    content_type = media_type(request)
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", f"content type {content_type!r}: send "
                       "multipart/form-data (field 'images') or application/json")
