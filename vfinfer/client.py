"""A Python client for ``vfinfer serve`` (httpx; the ``serve`` extra).

    from vfinfer.client import Client

    with Client("http://127.0.0.1:8000", token=None) as client:
        result = client.classify_dir("examples/syn9002-47XY+21-0")
        print(result["karyotype"])

``classify`` sends files (paths or ``(name, bytes)``) or 2-D numpy arrays (encoded as PNG),
``classify_dir`` a case directory (the images ``vfinfer run`` would read), ``classify_batch``
several cells in one request. A refusal raises ``ServerError`` with the server's status, code,
message and file.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Tuple, Union

import httpx

if TYPE_CHECKING:  # numpy (and cv2) load only when an array is sent
    import numpy as np

# one image as ``Client.classify`` takes it: a path, a (file name, bytes) pair or a 2-D array
ImageInput = Union[str, Path, Tuple[str, bytes], "np.ndarray"]


class ServerError(Exception):
    """A refusal of the server: its HTTP ``status``, error ``code`` (``bad_input``,
    ``bad_image``, ``unauthorized``, ``queue_full`` ...), ``message`` and the ``file``
    concerned (or None)."""

    def __init__(self, status: int, code: str, message: str, file: Optional[str] = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.file = status, code, message, file


class Client:
    """A client of one ``vfinfer serve`` server (one httpx connection pool; close it, or use
    it as a context manager).

    Parameters
    ----------
    url : str
        The server's base URL.
    token : str, optional
        The server's token, sent as ``Authorization: Bearer <token>``; None: no header.
    timeout : float
        Seconds per request (connect, read, write).

    Notes
    -----
    Every method raises ``ServerError`` when the server refuses (status 400 and above) or
    answers with something other than JSON, and httpx's errors (``httpx.HTTPError``) when it
    cannot be reached.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", token: Optional[str] = None,
                 timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- endpoints ---------------------------------------------------------------------------
    def live(self) -> dict[str, Any]:
        """``GET /v1/health/live``: ``{"live": True}``."""
        return self._json(self.http.get("/v1/health/live"))

    def ready(self) -> dict[str, Any]:
        """``GET /v1/health/ready``: ``{"ready", "model", "backend"}`` (ServerError 503 when
        the server is not ready)."""
        return self._json(self.http.get("/v1/health/ready"))

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: one summary per model (manifest, preset, backend, dispatch,
        batching, limits, version)."""
        return self._json(self.http.get("/v1/models"))["models"]

    def classify(self, images: Iterable[ImageInput], name: str = "cell",
                 karyogram: bool = False) -> dict[str, Any]:
        """Classify one cell (``POST /v1/cells``, multipart).

        Parameters
        ----------
        images : iterable
            One per chromosome: a path (str or pathlib.Path), a ``(file name, bytes)`` pair
            of an encoded image, or an np.ndarray (H, W) (or (H, W, 3)) image, sent as PNG
            named ``image_<i>.png``.
        name : str
            The case name.
        karyogram : bool
            Ask for the karyogram PNG (base64) as ``karyogram_png``.

        Returns
        -------
        dict
            The result of ``Pipeline.run_case`` (what ``vfinfer run`` writes as result.json).

        Raises
        ------
        ServerError
            The server's refusal (422 for a bad image, naming the file, 413, 503 ...).
        ValueError
            An array that cannot be encoded as PNG.
        """
        parts = [("images", part) for part in _parts(images)]
        response = self.http.post("/v1/cells", data={"name": name}, files=parts,
                                  params={"karyogram": "true"} if karyogram else None)
        return self._json(response)

    def classify_dir(self, case_dir: Union[str, os.PathLike],
                     karyogram: bool = False) -> dict[str, Any]:
        """``classify`` the images of a case directory (those ``vfinfer run`` would read),
        named after the directory."""
        from vfinfer.util.images import list_case

        paths, _ = list_case(case_dir)
        return self.classify(paths, name=Path(case_dir).resolve().name, karyogram=karyogram)

    def classify_batch(self, cells: Iterable[Tuple[str, Iterable[ImageInput]]],
                       karyogram: bool = False) -> list[dict[str, Any]]:
        """Several cells in one request (``POST /v1/cells:batch``, JSON).

        Parameters
        ----------
        cells : iterable of (str, iterable)
            ``(name, images)`` per cell, the images as in ``classify``.
        karyogram : bool
            Ask for each cell's karyogram PNG.

        Returns
        -------
        list of dict
            One entry per cell, in order: its result, or ``{"case", "error"}`` when that cell
            alone was refused (the request goes on).

        Raises
        ------
        ServerError
            A refusal of the whole request (too many cells, queue full, body too large ...).
        """
        body = {"cells": [{"name": name, "images": [
            {"file": file, "data": base64.b64encode(data).decode("ascii")}
            for file, data, _ in _parts(images)]} for name, images in cells],
            "karyogram": bool(karyogram)}
        return self._json(self.http.post("/v1/cells:batch", json=body))["results"]

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            raise ServerError(response.status_code, "not_json", response.text[:200]) from None
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise ServerError(response.status_code, error.get("code", "http_error"),
                              error.get("message", response.text[:200]), error.get("file"))
        return body


def _parts(images: Iterable[ImageInput]) -> list[Tuple[str, bytes, str]]:
    """(file name, bytes, content type) per image."""
    parts = []
    for i, image in enumerate(images):
        if isinstance(image, (str, Path)):
            path = Path(image)
            parts.append((path.name, path.read_bytes(), "application/octet-stream"))
        elif isinstance(image, tuple):
            parts.append((str(image[0]), bytes(image[1]), "application/octet-stream"))
        else:
            from vfinfer.util.images import encode_png  # numpy arrays need OpenCV

            parts.append((f"image_{i}.png", encode_png(image, what=f"image {i}"), "image/png"))
    return parts
