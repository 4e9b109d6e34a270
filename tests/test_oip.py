"""The Open Inference Protocol v2 routes (``vfinfer.serve.oip``): in process on the demo model
(FastAPI's TestClient; metadata, ready, JSON and binary inference, every refusal in the
protocol's ``{"error": "message"}`` shape), and, marked slow, ``tritonclient.http`` against a
real ``vfinfer serve`` compared with ``vfinfer run`` on the same cell."""

import base64
import json
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="the serve extra is not installed")

from click.testing import CliRunner  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from vfinfer.cli import main  # noqa: E402
from vfinfer.model.manifest import demo_model_dir  # noqa: E402
from vfinfer.pipeline import Pipeline  # noqa: E402
from vfinfer.serve.app import create_app  # noqa: E402
from vfinfer.serve.limits import Limits  # noqa: E402

from serving import Server  # noqa: E402

CELL = Path(__file__).resolve().parents[1] / "examples" / "syn9002-47XY+21-0"
MODEL = Path(demo_model_dir()).name
INFER = f"/v2/models/{MODEL}/infer"
TOKEN = "a-token-of-sixteen-chars"
OUTPUTS = ("TYPE", "TYPE_PROB", "PROBABILITIES", "POLARITY", "POLARITY_PROB", "LOW_CONFIDENCE",
           "KARYOTYPE", "RESULT_JSON")


@pytest.fixture(scope="module")
def pipeline():
    with Pipeline(demo_model_dir(), threads=2) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def cell():
    """[(file, bytes)] of the example trisomy 21 cell."""
    return [(p.name, p.read_bytes()) for p in sorted(CELL.glob("*.png"))]


@pytest.fixture()
def connect(pipeline):
    """``connect(limits=None, token=None)`` -> a TestClient of a fresh app on the pipeline."""
    opened = []

    def make(limits=None, token=None):
        app = create_app(pipeline, limits, token=token, hosts=("testserver",))
        client = TestClient(app, raise_server_exceptions=False)
        opened.append(client.__enter__())
        return opened[-1]

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture()
def client(connect):
    return connect()


def json_request(parts, **extra):
    """An infer request with IMAGES in base64 JSON and FILES."""
    return {"inputs": [
        {"name": "IMAGES", "datatype": "BYTES", "shape": [len(parts)],
         "parameters": {"binary_data_encoding": "base64"},
         "data": [base64.b64encode(data).decode() for _, data in parts]},
        {"name": "FILES", "datatype": "BYTES", "shape": [len(parts)],
         "data": [file for file, _ in parts]}], **extra}


def packed(elements):
    """BYTES elements in the binary tensor data extension (4-byte little-endian lengths)."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def binary_request(parts, outputs=None, header_fix=None):
    """(body, headers) of an infer request with IMAGES and FILES as binary tensor data."""
    images, files = packed([d for _, d in parts]), packed([f.encode() for f, _ in parts])
    header = {"id": "b1", "parameters": {"binary_data_output": True}, "inputs": [
        {"name": "IMAGES", "datatype": "BYTES", "shape": [len(parts)],
         "parameters": {"binary_data_size": len(images)}},
        {"name": "FILES", "datatype": "BYTES", "shape": [len(parts)],
         "parameters": {"binary_data_size": len(files)}}]}
    if outputs is not None:
        header["outputs"] = outputs
    if header_fix:
        header_fix(header)
    text = json.dumps(header).encode()
    return text + images + files, {"Inference-Header-Content-Length": str(len(text))}


def unpacked(buffer):
    items, offset = [], 0
    while offset < len(buffer):
        (size,) = struct.unpack_from("<I", buffer, offset)
        items.append(buffer[offset + 4:offset + 4 + size].decode())
        offset += 4 + size
    return items


def read_outputs(response):
    """{name: numpy array} of an inference response, JSON or binary."""
    if "inference-header-content-length" not in response.headers:
        assert response.headers["content-type"] == "application/json"
        body, binary = response.json(), b""
    else:
        assert response.headers["content-type"] == "application/octet-stream"
        size = int(response.headers["inference-header-content-length"])
        body, binary = json.loads(response.content[:size]), response.content[size:]
    found, offset = {}, 0
    for out in body["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            value = np.array(out["data"], dtype=object if out["datatype"] == "BYTES"
                             else {"FP32": np.float32, "BOOL": bool}[out["datatype"]])
        else:
            chunk, offset = binary[offset:offset + size], offset + size
            value = (np.array(unpacked(chunk), dtype=object) if out["datatype"] == "BYTES"
                     else np.frombuffer(chunk, {"FP32": "<f4", "BOOL": "?"}[out["datatype"]]))
        found[out["name"]] = value.reshape(out["shape"])
    assert offset == len(binary)
    return body, found


def protocol_error(response, status):
    """The message of a refusal, which must be exactly ``{"error": "message"}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return body["error"]


def test_server_metadata_names_the_binary_extension(client):
    assert client.get("/v2").json() == {"name": "vfinfer", "version": client.get(
        "/v1/models").json()["models"][0]["version"], "extensions": ["binary_tensor_data"]}


def test_model_metadata_gives_tensors_and_their_layout(client, pipeline):
    assert client.get("/v1/models").json()["models"][0]["name"] == MODEL
    meta = client.get(f"/v2/models/{MODEL}").json()
    assert client.get(f"/v2/models/{MODEL}/versions/1").json() == meta
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    assert meta["platform"] == "vfinfer_varifocal"
    shapes = {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"] + meta["outputs"]}
    assert shapes == {"IMAGES": ("BYTES", [-1]), "FILES": ("BYTES", [-1]),
                      "TYPE": ("BYTES", [-1]), "TYPE_PROB": ("FP32", [-1]),
                      "PROBABILITIES": ("FP32", [-1, 24]), "POLARITY": ("BYTES", [-1]),
                      "POLARITY_PROB": ("FP32", [-1]), "LOW_CONFIDENCE": ("BOOL", [-1]),
                      "KARYOTYPE": ("BYTES", [1]), "RESULT_JSON": ("BYTES", [1])}
    assert all(t["parameters"]["description"] for t in meta["inputs"] + meta["outputs"])
    assert meta["parameters"]["class_order"].split(",") == pipeline.manifest.type_names
    assert meta["parameters"]["images_json_encoding"] == "base64"


def test_ready_and_unknown_models(client):
    assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    assert client.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 200
    for path in ("/v2/models/nope", "/v2/models/nope/ready", f"/v2/models/{MODEL}/versions/2",
                 f"/v2/models/{MODEL}/versions/2/ready"):
        message = protocol_error(client.get(path), 404)
        assert "unknown model 'nope'" in message or "unknown version '2'" in message
    assert "nope" in protocol_error(client.post("/v2/models/nope/infer", json={}), 404)
    assert client.get("/v2/health/ready").json()["ready"] is True


def test_json_inference_gives_the_result_of_v1_cells(client, cell):
    want = client.post("/v1/cells", files=[("images", p) for p in cell],
                       data={"name": "c7"}).json()
    response = client.post(INFER, json=json_request(cell, id="req-1",
                                                    parameters={"case": "c7"}))
    assert response.status_code == 200, response.text
    body, out = read_outputs(response)
    assert body["model_name"] == MODEL and body["id"] == "req-1"
    assert [o["name"] for o in body["outputs"]] == list(OUTPUTS)
    rows = want["chromosomes"]
    assert list(out["TYPE"]) == [r["type"] for r in rows]
    assert list(out["POLARITY"]) == [r["polarity"] for r in rows]
    assert np.allclose(out["TYPE_PROB"], [r["type_prob"] for r in rows])
    assert np.allclose(out["POLARITY_PROB"], [r["polarity_prob"] for r in rows])
    assert list(out["LOW_CONFIDENCE"]) == [r["low_confidence"] for r in rows]
    assert out["KARYOTYPE"].tolist() == [want["karyotype"] or "not karyotyped"]
    probs = out["PROBABILITIES"]
    assert probs.shape == (len(cell), 24) and np.allclose(probs.sum(1), 1, atol=1e-4)
    names = np.array(client.get(f"/v2/models/{MODEL}").json()["parameters"]["class_order"]
                     .split(","))
    assert list(names[probs.argmax(1)]) == [r["type_before_dispatch"] for r in rows]
    for row, p in zip(rows, probs):
        top3 = np.argsort(-p, kind="stable")[:3]
        assert [[names[j], round(float(p[j]), 6)] for j in top3] == row["top3"]
    result = json.loads(out["RESULT_JSON"][0])
    assert "type_probabilities" not in result
    assert {**result, "timing_ms": None} == {**want, "timing_ms": None}
    assert 'path="/v2/models/{name}/infer",status="200"' in client.get("/metrics").text


def test_binary_inference_and_output_choice(client, cell):
    outputs = [{"name": "KARYOTYPE", "parameters": {"binary_data": False}},
               {"name": "PROBABILITIES"}, {"name": "TYPE", "parameters": {"binary_data": True}}]
    body, headers = binary_request(cell, outputs)
    response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    header, out = read_outputs(response)
    assert header["id"] == "b1" and [o["name"] for o in header["outputs"]] == [
        "KARYOTYPE", "PROBABILITIES", "TYPE"]
    assert "data" in header["outputs"][0] and "data" not in header["outputs"][1]
    assert out["KARYOTYPE"].tolist() == ["47,XY,+21"]
    json_out = read_outputs(client.post(INFER, json=json_request(cell)))[1]
    assert list(out["TYPE"]) == list(json_out["TYPE"])
    assert np.array_equal(out["PROBABILITIES"], json_out["PROBABILITIES"])
    body, headers = binary_request(cell, header_fix=lambda h: h.pop("parameters"))
    plain = client.post(INFER, content=body, headers=headers)  # binary in, JSON out
    assert "inference-header-content-length" not in plain.headers
    assert list(read_outputs(plain)[1]["TYPE"]) == list(out["TYPE"])


def test_the_versions_form_and_nested_data(client, cell):
    request = json_request(cell[:3], outputs=[{"name": "TYPE"}])
    request["inputs"][0]["data"] = [request["inputs"][0]["data"]]  # nested: row-major
    response = client.post(f"/v2/models/{MODEL}/versions/1/infer", json=request)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [3]


def _set(path, value):
    def change(request):
        target = request
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


BAD_JSON = {
    "datatype": (_set(["inputs", 0, "datatype"], "FP32"), "datatype 'FP32'"),
    "shape_vs_data": (_set(["inputs", 0, "shape"], [5]), "holds 5 elements, the data 3"),
    "shape_rank": (_set(["inputs", 0, "shape"], [1, 3]), "the model takes [N]"),
    "input_name": (_set(["inputs", 0, "name"], "PIXELS"), "'PIXELS': unknown"),
    "no_base64_flag": (_set(["inputs", 0, "parameters"], {}), "binary_data_encoding"),
    "not_base64": (_set(["inputs", 0, "data", 1], "%%%"), "IMAGES[1]: not valid base64"),
    "files_count": (_set(["inputs", 1, "shape"], [2]), "holds 2 elements"),
    "output_name": (_set(["outputs"], [{"name": "SCORES"}]), "'SCORES': unknown"),
    "no_images": (lambda r: r["inputs"].pop(0), "'IMAGES' is required"),
    "case_name": (_set(["parameters"], {"case": 7}), "parameters.case"),
}


@pytest.mark.parametrize("name", sorted(BAD_JSON))
def test_bad_json_tensors_are_400(client, cell, name):
    change, words = BAD_JSON[name]
    request = json_request(cell[:3])
    change(request)
    assert words in protocol_error(client.post(INFER, json=request), 400)


def test_an_undecodable_image_is_400_naming_its_file(client, cell):
    parts = [cell[0], ("broken.png", cell[1][1][:40]), ("text.png", b"not an image")]
    for part in parts[1:]:
        message = protocol_error(client.post(INFER, json=json_request([parts[0], part])), 400)
        assert message.startswith(part[0] + ": ")
        body, headers = binary_request([parts[0], part])
        assert part[0] in protocol_error(client.post(INFER, content=body, headers=headers), 400)


def test_bad_binary_data_is_400(client, cell):
    body, headers = binary_request(cell[:2])
    size = int(headers["Inference-Header-Content-Length"])
    cases = {
        "truncated": (body[:-5], headers, "bytes of binary data left"),
        "trailing": (body + b"xx", headers, "2 bytes of binary data after"),
        "header_length": (body, {"Inference-Header-Content-Length": str(len(body) + 1)},
                          "not a length within"),
        "header_not_json": (body, {"Inference-Header-Content-Length": str(size - 1)},
                            "not valid JSON"),
        "compressed": (body, {**headers, "Content-Encoding": "gzip"}, "Content-Encoding"),
    }
    for what, (data, sent, words) in cases.items():
        assert words in protocol_error(client.post(INFER, content=data, headers=sent), 400), what
    # an element whose length runs past its input's bytes
    images = struct.pack("<I", 999) + b"abc"
    header = json.dumps({"inputs": [{"name": "IMAGES", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(images)}}]})
    answer = client.post(INFER, content=header.encode() + images,
                         headers={"Inference-Header-Content-Length": str(len(header))})
    assert "element 0 declares 999 bytes, 3 are left" in protocol_error(answer, 400)


def test_limits_and_token_answer_in_the_protocol_shape(connect, cell):
    small = connect(Limits(max_images=3, max_body_bytes=200_000, max_inflight_mb=0))
    assert "over the limit of 3" in protocol_error(small.post(INFER, json=json_request(cell)), 400)
    big = json_request(cell[:3])
    big["inputs"][0]["data"][0] += "A" * 300_000
    assert "request body" in protocol_error(small.post(INFER, json=big), 413)
    busy = small.post(INFER, json=json_request(cell[:2]))  # no memory budget at all
    assert "busy" in protocol_error(busy, 503) and busy.headers["retry-after"] == "1"
    assert "Host" in protocol_error(small.get("/v2", headers={"Host": "evil.example"}), 400)
    late = connect(Limits(timeout_s=0))  # no time at all to answer
    assert "no answer within" in protocol_error(late.post(INFER, json=json_request(cell)), 504)
    guarded = connect(token=TOKEN)
    assert "token" in protocol_error(guarded.post(INFER, json=json_request(cell[:2])), 401)
    for path in ("/v2", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready"):
        assert guarded.get(path).status_code == 401
        assert guarded.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert guarded.get("/v2/health/live").status_code == 200  # health stays open
    ok = guarded.post(INFER, json=json_request(cell[:2], outputs=[{"name": "TYPE"}]),
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [2]


def test_v1_errors_keep_their_shape(client):
    error = client.post("/v1/cells", files=[("images", ("x.png", b"garbage"))]).json()["error"]
    assert error["code"] == "bad_image" and error["file"] == "x.png"


def test_the_pipeline_adds_probabilities_only_when_asked(pipeline, cell):
    from vfinfer.util.images import decode_gray8

    images = [decode_gray8(data, file) for file, data in cell[:4]]
    plain = pipeline.prepare("c", images)
    asked = pipeline.prepare("c", images)
    asked.with_probabilities = True
    got_plain, got_asked = pipeline.run_cases([plain, asked])
    assert "type_probabilities" not in got_plain
    probs = np.array(got_asked.pop("type_probabilities"))
    assert probs.shape == (4, 24)
    assert np.allclose([r["top3"][0][1] for r in got_asked["chromosomes"]], probs.max(1),
                       atol=1e-6)


# -- tritonclient against a real server ---------------------------------------------------

@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """(tritonclient.http client, the server) of ``vfinfer serve`` on the demo model."""
    http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (dev extra)")
    srv = Server(demo_model_dir())
    try:
        with http.InferenceServerClient(srv.url.split("://", 1)[1]) as client:
            yield client, srv
    finally:
        assert srv.stop() == 0, "".join(srv.output)


def run_cli(folder, out):
    """result.json of ``vfinfer run`` on ``folder`` with the demo model."""
    answer = CliRunner().invoke(main, ["run", str(folder), "--model", str(demo_model_dir()),
                                       "--out", str(out), "--no-karyogram"])
    assert answer.exit_code == 0, answer.output
    return json.loads((out / folder.name / "result.json").read_text())


@pytest.mark.slow
def test_tritonclient_metadata_and_ready(triton):
    client, _ = triton
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_model_metadata(MODEL)
    assert meta["platform"] == "vfinfer_varifocal" and meta["outputs"][2]["shape"] == [-1, 24]
    assert client.get_model_metadata(MODEL, model_version="1") == meta
    assert client.is_model_ready(MODEL) and not client.is_model_ready("nope")


@pytest.mark.slow
def test_tritonclient_infer_matches_vfinfer_run(triton, tmp_path):
    import tritonclient.http as http

    client, _ = triton
    paths = sorted(CELL.glob("*.png"))
    images = http.InferInput("IMAGES", [len(paths)], "BYTES")
    images.set_data_from_numpy(np.array([p.read_bytes() for p in paths], dtype=object))
    files = http.InferInput("FILES", [len(paths)], "BYTES")
    files.set_data_from_numpy(np.array([p.name.encode() for p in paths], dtype=object))
    answer = client.infer(MODEL, [images, files], request_id="t1",
                          parameters={"case": CELL.name})
    want = run_cli(CELL, tmp_path)
    rows = want["chromosomes"]
    assert answer.get_response()["id"] == "t1"
    assert [t.decode() for t in answer.as_numpy("TYPE")] == [r["type"] for r in rows]
    assert [p.decode() for p in answer.as_numpy("POLARITY")] == [r["polarity"] for r in rows]
    assert answer.as_numpy("KARYOTYPE")[0].decode() == want["karyotype"] == "47,XY,+21"
    assert np.allclose(answer.as_numpy("TYPE_PROB"), [r["type_prob"] for r in rows], atol=1e-5)
    assert answer.as_numpy("PROBABILITIES").shape == (len(paths), 24)
    result = json.loads(answer.as_numpy("RESULT_JSON")[0])
    assert result["case"] == CELL.name and [r["file"] for r in result["chromosomes"]] == [
        r["file"] for r in rows]
    wanted = [http.InferRequestedOutput("KARYOTYPE", binary_data=False)]
    json_answer = client.infer(MODEL, [images], outputs=wanted)
    assert json_answer.get_output("KARYOTYPE")["data"] == ["47,XY,+21"]


@pytest.mark.slow
def test_tritonclient_sees_a_bad_tensor_as_400(triton):
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client, _ = triton
    wrong = http.InferInput("IMAGES", [2], "FP32")
    wrong.set_data_from_numpy(np.zeros(2, np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, [wrong])
    assert caught.value.status() == "400" and "datatype 'FP32'" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "404"
