"""What one request may hold, and the errors the server answers with (one JSON shape).

Every refusal is ``{"error": {"status", "code", "message", "file"?}}`` with the matching HTTP
status: 401 (token), 413 (body too large), 422 (a bad image or field, naming the file), 503
(queue full, with Retry-After), 504 (the request's time ran out).
"""

import struct
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 << 20  # one request body (413 above)
    max_images: int = 200  # cut-outs per cell
    max_pixels: int = 16_000_000  # pixels per image, checked in the header before decoding
    max_cells: int = 32  # cells per POST /v1/cells:batch
    queue_size: int = 64  # cells accepted and waiting for the engines (503 above)
    timeout_s: float = 30.0  # per request, from its arrival to its answer (504 after)
    max_name_chars: int = 200  # case and file names

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


def image_size(data):
    """(width, height) from a PNG, JPEG or BMP header, without decoding; None when the
    format is another (TIFF) or the header is unreadable (the decoder then says why)."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"BM" and len(data) >= 26:
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data):
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            pos += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    return None


def check_pixels(data, file, limits):
    size = image_size(data)
    if size is not None and size[0] * size[1] > limits.max_pixels:
        raise ApiError(413, "image_too_large",
                       f"{size[0]} x {size[1]} pixels, over the limit of {limits.max_pixels}",
                       file)


def check_name(name, what, limits):
    if len(name) > limits.max_name_chars:
        raise bad_input(f"{what} is {len(name)} characters long, over the limit of "
                        f"{limits.max_name_chars}")
    return name
