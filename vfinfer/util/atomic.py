"""Atomic file writes: a temporary file beside the target, then one rename.

Readers never see half a file, and a failure leaves the previous file (if any) in place.
"""

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path, data: bytes):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path, data):
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
