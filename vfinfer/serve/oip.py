"""The Open Inference Protocol (KServe v2, the HTTP/REST protocol of Triton) beside ``/v1``.

Routes (``add_oip_routes``; behind the server's token and limits like ``/v1``):
``GET /v2`` (server metadata), ``GET /v2/models/{name}[/versions/{v}]`` (model metadata),
``GET /v2/models/{name}[/versions/{v}]/ready`` and ``POST /v2/models/{name}[/versions/{v}]/infer``
(one cell per request). The health probes ``/v2/health/live|ready`` are ``vfinfer.serve.app``'s.

A cell is a ``BYTES`` input ``IMAGES`` of shape ``[N]``, one encoded image file per chromosome
(and optionally ``FILES``, their names); it goes through the same admission, decoding and
dynamic batcher as ``POST /v1/cells`` (``vfinfer.serve.admission.classify``). The outputs are per
chromosome (``TYPE``, ``TYPE_PROB``, ``PROBABILITIES`` [N, 24], ``POLARITY``,
``POLARITY_PROB``, ``LOW_CONFIDENCE``) and per cell (``KARYOTYPE``, ``RESULT_JSON``).

Tensors come as JSON (``data``, flat or nested, row-major) or with the binary tensor data
extension (``Inference-Header-Content-Length``: the JSON header, then each binary input's
bytes in the order of ``inputs``; a BYTES element is a 4-byte little-endian length and its
bytes), which ``tritonclient.http`` uses by default. The protocol's JSON form of a BYTES
element is a UTF-8 string, which an image file is not: in JSON, ``IMAGES`` elements are
base64 and the input says so with ``"parameters": {"binary_data_encoding": "base64"}``.

Errors on ``/v2`` paths are ``{"error": "message"}`` (``OipErrors`` rewrites the server's own
error shape there): 400 for a bad tensor or image, 404 for an unknown model, the server's other
statuses (401, 413, 503, 504 ...) as they are.
"""

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from vfinfer import __version__
from vfinfer.serve.admission import arrival, classify, decode_cell
from vfinfer.serve.limits import ApiError, bad_input, check_name

PLATFORM = "vfinfer_varifocal"
MODEL_VERSION = "1"  # a server serves one model; its graphs' sha256 are in /v1/models
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "Inference-Header-Content-Length"
BASE64 = "base64"
NOT_KARYOTYPED = "not karyotyped"
LENGTH_PREFIX = struct.Struct("<I")  # a BYTES element's length in the binary extension
NUMPY_TYPES = {"FP32": "<f4", "BOOL": "?"}


@dataclass(frozen=True)
class Tensor:
    """A tensor of the model's metadata: name, datatype, shape (-1: any) and its meaning."""

    name: str
    datatype: str
    shape: tuple
    meaning: str

    def metadata(self):
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape),
                "parameters": {"description": self.meaning}}


INPUTS = (
    Tensor("IMAGES", "BYTES", (-1,), "one encoded image file (PNG, TIFF, BMP, JPEG ...) per "
           "chromosome cut-out of one cell; raw bytes with the binary extension, base64 in "
           "JSON (the input's parameters.binary_data_encoding = 'base64')"),
    Tensor("FILES", "BYTES", (-1,), "optional: a name per image, in the order of IMAGES, "
           "reported in RESULT_JSON and errors (image_<i> when missing)"),
)


def output_tensors(n_classes):
    """The outputs of the model's metadata (``n_classes`` types, 24 for a human cell)."""
    return (
        Tensor("TYPE", "BYTES", (-1,), "per chromosome: the called type, 1..22, X or Y "
               "(after dispatch)"),
        Tensor("TYPE_PROB", "FP32", (-1,), "per chromosome: the probability of the called type"),
        Tensor("PROBABILITIES", "FP32", (-1, n_classes), "per chromosome (row): the "
               "probability of each type in class_order (before dispatch), row-major"),
        Tensor("POLARITY", "BYTES", (-1,), "per chromosome: 'q-arm down' or 'q-arm up' "
               "('not called' when the model has no polarity)"),
        Tensor("POLARITY_PROB", "FP32", (-1,), "per chromosome: the probability of the called "
               "polarity (NaN, JSON null, when not called)"),
        Tensor("LOW_CONFIDENCE", "BOOL", (-1,), "per chromosome: the called type's probability "
               "is under the model's threshold or dispatch changed the type"),
        Tensor("KARYOTYPE", "BYTES", (1,), "the cell's karyotype, or 'not karyotyped' when the "
               "verdict withholds it (RESULT_JSON's verdict says why)"),
        Tensor("RESULT_JSON", "BYTES", (1,), "the whole result as POST /v1/cells answers it "
               "(UTF-8 JSON)"),
    )


_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string", "enum": ["IMAGES", "FILES"]},
    "datatype": {"type": "string", "enum": ["BYTES"]},
    "shape": {"type": "array", "items": {"type": "integer"}, "example": [46]},
    "parameters": {"type": "object", "description": "binary_data_encoding: 'base64' (IMAGES "
                   "in JSON) or binary_data_size (the binary extension)"},
    "data": {"type": "array", "items": {}, "description": "flat or nested, row-major"}}}
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "description": "case: the case name; "
                       "binary_data_output: binary outputs"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}},
    "application/octet-stream": {"schema": {
        "type": "string", "format": "binary", "description": "the binary tensor data "
        "extension: the JSON request (Inference-Header-Content-Length bytes), then the "
        "binary inputs"}}}}}


def bad_tensor(message):
    """A 400 for a request whose tensors do not fit the model or the protocol."""
    return ApiError(400, "bad_tensor", message)


def add_oip_routes(api, state):
    """Register the ``/v2`` metadata, ready and infer routes on ``api`` (the router that
    carries the token dependency)."""
    tags = ["Open Inference Protocol v2"]

    @api.get("/v2", tags=tags)
    async def server_metadata():
        """Server metadata: name, version and the protocol extensions supported."""
        return {"name": "vfinfer", "version": __version__, "extensions": list(EXTENSIONS)}

    async def metadata(model_name, model_version=None):
        """The model metadata (404 for another model or version)."""
        check_model(state, model_name, model_version)
        return model_metadata(state)

    async def ready(model_name, model_version=None):
        """200 when the model is ready, 503 when not."""
        check_model(state, model_name, model_version)
        ok = state.batcher.alive and state.pipeline.backend is not None
        return JSONResponse({"name": model_name, "ready": ok}, status_code=200 if ok else 503)

    async def infer(request, model_name, model_version=None):
        """One cell through the admission and batcher of /v1/cells."""
        started = arrival(request)
        check_model(state, model_name, model_version)
        call = await run_in_threadpool(parse_infer_request, await request.body(),
                                       request.headers, state.limits)
        result = await classify(state, call.case, call.parts, False, started,
                                decode=decode_with_probabilities)
        return infer_response(model_name, call, result)

    _add_model_route(api, "GET", "", metadata, tags, "Model metadata: inputs, outputs, layout.")
    _add_model_route(api, "GET", "/ready", ready, tags, "200 when the model is ready.")
    _add_model_route(api, "POST", "/infer", infer, tags,
                     "One cell: IMAGES (BYTES [N]) in, per-chromosome calls out; JSON or the "
                     "binary tensor data extension.")


def _add_model_route(api, method, suffix, handler, tags, summary):
    """``handler`` under ``/v2/models/{model_name}`` and ``.../versions/{model_version}``."""
    if method == "POST":
        async def plain(request: Request, model_name: str):
            return await handler(request, model_name)

        async def versioned(request: Request, model_name: str, model_version: str):
            return await handler(request, model_name, model_version)
    else:
        async def plain(model_name: str):
            return await handler(model_name)

        async def versioned(model_name: str, model_version: str):
            return await handler(model_name, model_version)
    base = "/v2/models/{model_name}"
    extra = INFER_BODY if method == "POST" else None
    api.add_api_route(base + suffix, plain, methods=[method], tags=tags, summary=summary,
                      openapi_extra=extra)
    api.add_api_route(base + "/versions/{model_version}" + suffix, versioned, methods=[method],
                      tags=tags, summary=summary, openapi_extra=extra)


def check_model(state, name, version):
    """ApiError 404 unless ``name`` (and ``version``, when given) is the model served."""
    served = state.pipeline.manifest.model_dir.name
    if name != served:
        raise ApiError(404, "model_not_found", f"unknown model {name!r}: this server serves "
                       f"{served!r}")
    if version is not None and version != MODEL_VERSION:
        raise ApiError(404, "model_not_found", f"unknown version {version!r} of {name!r}: "
                       f"the served version is {MODEL_VERSION!r}")


def model_metadata(state):
    """The model metadata of the protocol, with the tensors' layout in ``parameters``."""
    manifest, pipeline = state.pipeline.manifest, state.pipeline
    outputs = output_tensors(len(manifest.type_names))
    return {
        "name": manifest.model_dir.name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [tensor.metadata() for tensor in INPUTS],
        "outputs": [tensor.metadata() for tensor in outputs],
        "parameters": {
            "description": "Varifocal-Net chromosome classification of one cell per request: "
                           "IMAGES [N] in, one row per chromosome out, in the order of IMAGES",
            "class_order": ",".join(manifest.type_names),
            "polarity_order": ",".join(manifest.polarity_names),
            "images_json_encoding": BASE64,
            "max_images": state.limits.max_images,
            "preset": pipeline.config.preset,
            "dispatch": pipeline.dispatch_mode,
            "backend": pipeline.backend.name if pipeline.backend is not None else "closed",
        },
    }


def decode_with_probabilities(state, name, parts):
    """``decode_cell``, asking the pipeline for the full probability matrix too."""
    prepared = decode_cell(state, name, parts)
    prepared.with_probabilities = True
    return prepared


# -- the request ---------------------------------------------------------------------------

@dataclass
class InferCall:
    """A parsed infer request: its id, case name, (file, bytes) parts and wanted outputs."""

    id: object = None
    case: str = "cell"
    parts: list = field(default_factory=list)
    outputs: list = field(default_factory=list)  # [(name, binary)]; empty: all, as JSON
    binary_default: bool = False


def parse_infer_request(body, headers, limits):
    """An ``InferCall`` from the body (JSON, or JSON and binary tensor data) and headers;
    ApiError 400 (``bad_tensor``) for anything the model or the protocol does not take."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise bad_tensor(f"Content-Encoding {encoding!r} is not supported: send the body "
                         "uncompressed")
    header, binary = split_body(body, headers.get(HEADER_LENGTH))
    request = parse_header(header)
    parameters = _dict(request.get("parameters"), "parameters")
    case = parameters.get("case", "cell")
    if not isinstance(case, str) or not case:
        raise bad_tensor("parameters.case: the case name must be a non-empty string")
    elements = input_elements(request.get("inputs"), binary, limits)
    parts = image_parts(elements, limits)
    return InferCall(id=request.get("id"), case=check_name(case, "name", limits), parts=parts,
                     outputs=requested_outputs(request.get("outputs")),
                     binary_default=bool(parameters.get("binary_data_output", False)))


def split_body(body, header_length):
    """(JSON header bytes, binary tensor data) of a body, by Inference-Header-Content-Length."""
    if header_length is None:
        return body, b""
    header_length = header_length.strip()
    if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
        raise bad_tensor(f"{HEADER_LENGTH} {header_length!r}: not a length within the body's "
                         f"{len(body)} bytes")
    size = int(header_length)
    return body[:size], memoryview(body)[size:]


def parse_header(header):
    """The JSON inference request as a dict."""
    try:
        request = json.loads(bytes(header))
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_tensor(f"the inference request is not valid JSON ({exc})") from None
    except RecursionError:
        raise bad_tensor("the inference request is nested too deeply") from None
    return _dict(request, "the inference request")


def _dict(value, what):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_tensor(f"{what} must be a JSON object")
    return value


def _named(entry, kind, known, seen):
    """(entry, its name) of one requested input or output: a dict naming a tensor the model
    has, not named before (``seen``)."""
    entry = _dict(entry, f"each {kind}")
    name = entry.get("name")
    if name not in known:
        raise bad_tensor(f"{kind} {name!r}: unknown; the model's {kind}s are "
                         f"{', '.join(known)}")
    if name in seen:
        raise bad_tensor(f"{kind} {name!r} is given twice")
    return entry, name


def input_elements(inputs, binary, limits):
    """{input name: list of bytes elements}, each input checked against the model (name,
    datatype, shape) and its data against its shape; binary data is taken in input order and
    must be used up exactly."""
    if not isinstance(inputs, list) or not inputs:
        raise bad_tensor("inputs: a list of tensors is required (IMAGES, optionally FILES)")
    known = {tensor.name: tensor for tensor in INPUTS}
    elements, offset = {}, 0
    for tensor in inputs:
        tensor, name = _named(tensor, "input", known, elements)
        count = check_declared(tensor, known[name], limits)
        size = _dict(tensor.get("parameters"), f"{name}.parameters").get("binary_data_size")
        if size is not None:
            chunk, offset = binary_chunk(binary, offset, size, name)
            elements[name] = split_bytes(chunk, name)
        else:
            elements[name] = json_elements(tensor, name)
        if len(elements[name]) != count:
            raise bad_tensor(f"{name}: shape {tensor['shape']} holds {count} elements, the data "
                             f"{len(elements[name])}")
    if offset != len(binary):
        raise bad_tensor(f"{len(binary) - offset} bytes of binary data after the inputs that "
                         "declare binary_data_size")
    if "IMAGES" not in elements:
        raise bad_tensor("input 'IMAGES' is required")
    return elements


def check_declared(tensor, spec, limits):
    """The element count of an input whose datatype and 1-D shape fit ``spec``."""
    name, datatype, shape = spec.name, tensor.get("datatype"), tensor.get("shape")
    if datatype != spec.datatype:
        raise bad_tensor(f"{name}: datatype {datatype!r}, the model takes {spec.datatype}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad_tensor(f"{name}: shape {shape!r} is not a list of non-negative integers")
    if len(shape) != 1:
        raise bad_tensor(f"{name}: shape {shape}, the model takes [N] (one element per "
                         "image)")
    if shape[0] > limits.max_images:
        raise bad_input(f"{name}: {shape[0]} images, over the limit of {limits.max_images}")
    return shape[0]


def binary_chunk(binary, offset, size, name):
    """The ``size`` bytes of input ``name`` at ``offset`` in the binary data, and the next
    offset."""
    if type(size) is not int or size < 0:
        raise bad_tensor(f"{name}: binary_data_size {size!r} is not a non-negative integer")
    if offset + size > len(binary):
        raise bad_tensor(f"{name}: binary_data_size {size} but only {len(binary) - offset} "
                         "bytes of binary data left (truncated body?)")
    return binary[offset:offset + size], offset + size


def split_bytes(buffer, name):
    """The elements of a BYTES tensor in the binary extension: each a 4-byte little-endian
    length and that many bytes."""
    items, offset, end = [], 0, len(buffer)
    while offset < end:
        if offset + LENGTH_PREFIX.size > end:
            raise bad_tensor(f"{name}: binary data ends inside the length of element "
                             f"{len(items)}")
        (size,) = LENGTH_PREFIX.unpack_from(buffer, offset)
        offset += LENGTH_PREFIX.size
        if offset + size > end:
            raise bad_tensor(f"{name}: element {len(items)} declares {size} bytes, "
                             f"{end - offset} are left")
        items.append(bytes(buffer[offset:offset + size]))
        offset += size
    return items


def json_elements(tensor, name):
    """The elements of a BYTES tensor given as JSON ``data`` (flat or nested): strings,
    base64 when the input's ``binary_data_encoding`` says so (IMAGES must)."""
    if "data" not in tensor:
        raise bad_tensor(f"{name}: neither data nor parameters.binary_data_size")
    flat = flatten(tensor["data"])
    if not all(isinstance(item, str) for item in flat):
        raise bad_tensor(f"{name}: BYTES data must be strings")
    encoding = _dict(tensor.get("parameters"), f"{name}.parameters").get("binary_data_encoding")
    if name == "IMAGES" and encoding != BASE64:
        raise bad_tensor("IMAGES in JSON: each element is an image file in base64, and the "
                         "input says so with \"parameters\": {\"binary_data_encoding\": "
                         "\"base64\"} (or send the binary tensor data extension)")
    if encoding == BASE64:
        return [decode_base64(item, name, i) for i, item in enumerate(flat)]
    if encoding is not None:
        raise bad_tensor(f"{name}: binary_data_encoding {encoding!r}; only 'base64' is known")
    return [item.encode("utf-8") for item in flat]


def flatten(data):
    """Row-major elements of nested lists (without recursion: nesting may be deep)."""
    if not isinstance(data, list):
        return [data]
    flat, stack = [], [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def decode_base64(text, name, index):
    """One base64 element of a JSON BYTES input."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_tensor(f"{name}[{index}]: not valid base64") from None


def image_parts(elements, limits):
    """[(file, bytes)] of the IMAGES, named by FILES (or image_<i>)."""
    images = elements["IMAGES"]
    files = elements.get("FILES")
    if files is None:
        names = [f"image_{i}" for i in range(len(images))]
    elif len(files) != len(images):
        raise bad_tensor(f"FILES: {len(files)} names for {len(images)} images")
    else:
        try:
            names = [item.decode("utf-8") for item in files]
        except UnicodeDecodeError:
            raise bad_tensor("FILES: a name is not UTF-8") from None
    return [(check_name(file or f"image_{i}", "file name", limits), data)
            for i, (file, data) in enumerate(zip(names, images))]


def requested_outputs(outputs):
    """[(name, binary or None)] of the request's ``outputs``; empty: all of them."""
    if outputs is None:
        return []
    if not isinstance(outputs, list):
        raise bad_tensor("outputs must be a list of {\"name\": ...}")
    known = [tensor.name for tensor in output_tensors(0)]
    wanted = []
    for output in outputs:
        output, name = _named(output, "output", known, [seen for seen, _ in wanted])
        parameters = _dict(output.get("parameters"), f"{name}.parameters")
        if "class_count" in parameters:
            raise bad_tensor(f"{name}: the classification extension (class_count) is not "
                             "supported; PROBABILITIES holds every class")
        binary = parameters.get("binary_data")
        wanted.append((name, None if binary is None else bool(binary)))
    return wanted


# -- the response --------------------------------------------------------------------------

def output_values(result):
    """{output name: numpy array or list of bytes} of one cell's result (which holds
    ``type_probabilities``, taken out: RESULT_JSON is the result of ``/v1/cells``)."""
    probabilities = result.pop("type_probabilities")
    rows = result["chromosomes"]

    def column(key, dtype, missing=None):
        return np.array([missing if r[key] is None else r[key] for r in rows], dtype)

    return {
        "TYPE": [r["type"].encode() for r in rows],
        "TYPE_PROB": column("type_prob", np.float32),
        "PROBABILITIES": np.asarray(probabilities, np.float32).reshape(len(rows), -1),
        "POLARITY": [r["polarity"].encode() for r in rows],
        "POLARITY_PROB": column("polarity_prob", np.float32, math.nan),
        "LOW_CONFIDENCE": column("low_confidence", bool),
        "KARYOTYPE": [(result["karyotype"] or NOT_KARYOTYPED).encode()],
        "RESULT_JSON": [json.dumps(result, ensure_ascii=False, allow_nan=False,
                                   separators=(",", ":")).encode("utf-8")],
    }


def infer_response(model_name, call, result):
    """The inference response: JSON, or JSON then binary data when an output is binary."""
    values = output_values(result)
    datatypes = {tensor.name: tensor.datatype for tensor in output_tensors(0)}
    wanted = call.outputs or [(name, None) for name in values]
    outputs, chunks = [], []
    for name, binary in wanted:
        value = values[name]
        shape = [len(value)] if isinstance(value, list) else list(value.shape)
        tensor = {"name": name, "datatype": datatypes[name], "shape": shape}
        if call.binary_default if binary is None else binary:
            chunk = serialize(value, datatypes[name])
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = json_data(value)
        outputs.append(tensor)
    body = {"model_name": model_name, "model_version": MODEL_VERSION}
    if call.id is not None:
        body["id"] = call.id
    body["outputs"] = outputs
    header = json.dumps(body, allow_nan=False, separators=(",", ":")).encode("utf-8")
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(b"".join([header, *chunks]), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


def serialize(value, datatype):
    """Binary tensor data: BYTES as length-prefixed elements, numbers little-endian raw."""
    if datatype == "BYTES":
        return b"".join(LENGTH_PREFIX.pack(len(item)) + item for item in value)
    return np.ascontiguousarray(value, NUMPY_TYPES[datatype]).tobytes()


def json_data(value):
    """JSON ``data`` (flat, row-major): BYTES as UTF-8 strings, NaN as null."""
    if isinstance(value, list):
        return [item.decode("utf-8") for item in value]
    return [None if isinstance(v, float) and math.isnan(v) else v
            for v in value.ravel().tolist()]


# -- the error shape -----------------------------------------------------------------------

class OipErrors:
    """Pure ASGI middleware: on ``/v2`` paths, the server's error body ``{"error": {"status",
    "code", "message", ...}}`` becomes the protocol's ``{"error": "message"}``, and its 422
    (a bad field or image) the protocol's 400; other statuses and headers stay."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != "/v2" and not path.startswith("/v2/"):
            return await self.app(scope, receive, send)
        held = {"start": None, "body": []}

        async def rewriting(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["start"] = message
                return
            if held["start"] is None or message["type"] != "http.response.body":
                return await send(message)
            held["body"].append(message.get("body", b""))
            if not message.get("more_body", False):
                start, body = protocol_error(held["start"], b"".join(held["body"]))
                await send(start)
                await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewriting)


def protocol_error(start, body):
    """(start message, body) of an error response in the protocol's shape, or as they were
    when the body is not the server's error JSON."""
    try:
        error = json.loads(body)["error"]
        message = error["message"]
    except (ValueError, KeyError, TypeError):
        return start, body
    body = json.dumps({"error": message}, separators=(",", ":")).encode("utf-8")
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    status = 400 if start["status"] == 422 else start["status"]
    return {**start, "status": status, "headers": headers}, body
