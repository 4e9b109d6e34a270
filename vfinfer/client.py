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

import base64
from pathlib import Path

import httpx


class ServerError(Exception):
    def __init__(self, status, code, message, file=None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.file = status, code, message, file


class Client:
    def __init__(self, url="http://127.0.0.1:8000", token=None, timeout=60.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def close(self):
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- endpoints ---------------------------------------------------------------------------
    def live(self):
        return self._json(self.http.get("/v1/health/live"))

    def ready(self):
        return self._json(self.http.get("/v1/health/ready"))

    def models(self):
        return self._json(self.http.get("/v1/models"))["models"]

    def classify(self, images, name="cell", karyogram=False):
        """One cell: ``images`` are paths, (file name, bytes) pairs or 2-D numpy arrays."""
        parts = [("images", part) for part in _parts(images)]
        response = self.http.post("/v1/cells", data={"name": name}, files=parts,
                                  params={"karyogram": "true"} if karyogram else None)
        return self._json(response)

    def classify_dir(self, case_dir, karyogram=False):
        from vfinfer.util.images import list_case

        paths, _ = list_case(case_dir)
        return self.classify(paths, name=Path(case_dir).resolve().name, karyogram=karyogram)

    def classify_batch(self, cells, karyogram=False):
        """Several cells in one request: ``cells`` is a list of (name, images); returns one
        entry per cell, a result or ``{"case", "error"}``."""
        body = {"cells": [{"name": name, "images": [
            {"file": file, "data": base64.b64encode(data).decode("ascii")}
            for file, data, _ in _parts(images)]} for name, images in cells],
            "karyogram": bool(karyogram)}
        return self._json(self.http.post("/v1/cells:batch", json=body))["results"]

    @staticmethod
    def _json(response):
        try:
            body = response.json()
        except ValueError:
            raise ServerError(response.status_code, "not_json", response.text[:200]) from None
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise ServerError(response.status_code, error.get("code", "http_error"),
                              error.get("message", response.text[:200]), error.get("file"))
        return body


def _parts(images):
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
