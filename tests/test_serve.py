"""``vfinfer serve`` for real: the server runs in a subprocess on a free loopback port (port 0,
printed at start) and every test talks HTTP to it; each server is stopped with SIGTERM.

Tests that need a cell to stay in the batcher's window give the server's batcher a clock of
their own (``Server(..., clock=...)``) instead of a long real window: ``STILL`` never moves, so
the window closes only when the batcher stops; ``held_until(path)`` stands still too, until
the file exists (the test creates it when it wants the waiting cell to run): then it jumps
past the open window."""

import base64
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

from click.testing import CliRunner  # noqa: E402

from vfinfer.cli import main  # noqa: E402
from vfinfer.client import Client, ServerError  # noqa: E402
from vfinfer.pipeline import Pipeline  # noqa: E402
from vfinfer.util.images import read_case  # noqa: E402

from serving import START_TIMEOUT_S, STILL, Server, held_until  # noqa: E402


@pytest.fixture(scope="module")
def server(model_dir):
    srv = Server(model_dir, "--max-body-mb", 4, "--max-pixels", 4_000_000, "--max-wait-ms", 10)
    yield srv
    assert srv.stop() == 0, "".join(srv.output)


@pytest.fixture(scope="module")
def expected(model_dir, synth_root):
    """Pipeline.run_case on each synthetic cell: what the server must answer."""
    cells = {}
    with Pipeline(model_dir, threads=2) as pipe:
        for case in sorted(p for p in synth_root.iterdir() if p.is_dir()):
            images, paths, _ = read_case(case)
            cells[case.name] = (case, pipe.run_case(images, name=case.name,
                                                    files=[p.name for p in paths]))
    return cells


def same_calls(got, want):
    assert got["case"] == want["case"] and got["karyotype"] == want["karyotype"]
    assert got["warnings"] == want["warnings"]
    assert [c["file"] for c in got["chromosomes"]] == [c["file"] for c in want["chromosomes"]]
    for g, w in zip(got["chromosomes"], want["chromosomes"]):
        assert (g["type"], g["polarity"], g["top3"][0][0]) == (w["type"], w["polarity"],
                                                                w["top3"][0][0])
        assert abs(g["type_prob"] - w["type_prob"]) < 1e-4
        assert np.allclose(g["box"], w["box"], atol=0.05)


@pytest.mark.slow
def test_a_cell_gives_the_result_of_run_case(server, expected):
    with Client(server.url) as client:
        for case, want in expected.values():
            same_calls(client.classify_dir(case), want)
            images = sorted(case.glob("*.png"))
            body = {"name": case.name, "images": [
                {"file": p.name, "data": base64.b64encode(p.read_bytes()).decode()}
                for p in images]}
            same_calls(httpx.post(f"{server.url}/v1/cells", json=body).json(), want)


@pytest.mark.slow
def test_eight_concurrent_clients_all_right(server, expected):
    cells = list(expected.values()) * 4

    def one(cell):
        with Client(server.url) as client:
            return client.classify_dir(cell[0]), cell[1]

    with ThreadPoolExecutor(8) as pool:
        for got, want in pool.map(one, cells):
            same_calls(got, want)


@pytest.mark.slow
def test_a_corrupt_image_is_422_naming_the_file_and_others_go_on(server, expected):
    case, want = next(iter(expected.values()))
    good = sorted(case.glob("*.png"))
    data = good[1].read_bytes()
    for bad in (b"not an image", data[: len(data) // 2], b""):
        files = [("images", (good[0].name, good[0].read_bytes())), ("images", ("bad.png", bad))]
        response = httpx.post(f"{server.url}/v1/cells", files=files, data={"name": "x"})
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["file"] == "bad.png" and error["message"].startswith("bad.png: ")
    with Client(server.url) as client:
        same_calls(client.classify_dir(case), want)
        with pytest.raises(ServerError) as caught:
            client.classify([("x.png", b"garbage")])
        assert caught.value.status == 422 and caught.value.file == "x.png"


@pytest.mark.slow
def test_batch_endpoint_fails_only_the_bad_cell(server, expected):
    (case_a, want_a), (case_b, want_b) = list(expected.values())[:2]
    with Client(server.url) as client:
        results = client.classify_batch([
            (case_a.name, sorted(case_a.glob("*.png"))),
            ("broken", [("c.png", b"\x89PNG\r\n\x1a\n truncated")]),
            (case_b.name, sorted(case_b.glob("*.png"))),
        ])
    same_calls(results[0], want_a)
    assert results[1]["case"] == "broken" and results[1]["error"]["status"] == 422
    assert results[1]["error"]["file"] == "c.png"
    same_calls(results[2], want_b)


@pytest.mark.slow
def test_karyogram_on_request(server, expected):
    case, _ = next(iter(expected.values()))
    with Client(server.url) as client:
        result = client.classify_dir(case, karyogram=True)
    png = np.frombuffer(base64.b64decode(result["karyogram_png"]), np.uint8)
    picture = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
    assert picture is not None and picture.shape[1] > 800


@pytest.mark.slow
def test_too_large_bodies_and_images_are_413(server):
    big = os.urandom(5 << 20)  # over --max-body-mb 4
    response = httpx.post(f"{server.url}/v1/cells", files=[("images", ("a.png", big))])
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: the limit counts what arrives
        for _ in range(5):
            yield os.urandom(1 << 20)

    for path in ("/v1/cells", "/v1/cells:batch"):  # the batch's body is read by FastAPI
        response = httpx.post(f"{server.url}{path}", content=chunks(),
                              headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "body_too_large"
    wide = cv2.imencode(".png", np.full((2100, 2100), 255, np.uint8))[1].tobytes()
    response = httpx.post(f"{server.url}/v1/cells", files=[("images", ("wide.png", wide))])
    assert response.status_code == 413 and response.json()["error"]["file"] == "wide.png"


@pytest.mark.slow
def test_bad_requests_get_json_errors(server):
    url = f"{server.url}/v1/cells"
    assert httpx.post(url, content=b"{", headers={"content-type": "application/json"}
                      ).status_code == 422
    assert httpx.post(url, content=b"x", headers={"content-type": "text/plain"}
                      ).status_code == 415
    assert httpx.post(url, json={"images": []}).json()["error"]["code"] == "bad_input"
    response = httpx.post(url, json={"images": [{"file": "a.png", "data": "@@"}]})
    assert response.status_code == 422 and response.json()["error"]["file"] == "a.png"
    assert httpx.get(f"{server.url}/v1/nothing").json()["error"]["status"] == 404


@pytest.mark.slow
def test_the_openapi_schema_lists_the_request_models(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    models = spec["components"]["schemas"]
    fields = {name: (set(models[name]["properties"]), set(models[name].get("required", ())))
              for name in ("ImagePart", "Cell", "CellRequest", "BatchRequest", "ErrorBody")}
    assert fields == {"ImagePart": ({"file", "data"}, {"data"}),
                      "Cell": ({"name", "images"}, {"images"}),
                      "CellRequest": ({"name", "images", "karyogram"}, {"images"}),
                      "BatchRequest": ({"cells", "karyogram"}, {"cells"}),
                      "ErrorBody": ({"error"}, {"error"})}
    assert models["BatchRequest"]["properties"]["cells"]["items"] == {
        "$ref": "#/components/schemas/Cell"}
    assert models["ImagePart"]["properties"]["data"]["type"] == "string"
    assert models["CellRequest"]["properties"]["karyogram"]["type"] == "boolean"
    paths = spec["paths"]
    body = paths["/v1/cells:batch"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/BatchRequest"}
    for path in ("/v1/cells", "/v1/metaphase"):  # JSON or multipart
        body = paths[path]["post"]["requestBody"]["content"]
        assert body["application/json"]["schema"] == {
            "$ref": "#/components/schemas/CellRequest"}
        assert "images" in body["multipart/form-data"]["schema"]["properties"]
    answer = paths["/v1/cells:batch"]["post"]["responses"]["422"]["content"]
    assert answer["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in models and "securitySchemes" not in spec["components"]


@pytest.mark.slow
def test_a_wrong_type_is_422_in_the_project_error_shape(server):
    def refusal(path, body):
        response = httpx.post(f"{server.url}{path}", json=body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert set(response.json()) == {"error"} and set(error) == {"status", "code", "message"}
        assert error["status"] == 422 and error["code"] == "bad_input"
        return error["message"]

    before = server.metric('vfinfer_errors_total{code="bad_input"}') or 0
    assert refusal("/v1/cells:batch", {"cells": "cell_07"}).startswith("cells: ")
    assert refusal("/v1/cells:batch", {"cells": []}).startswith("cells: ")
    assert refusal("/v1/cells:batch", {"cells": [{"images": []}], "karyogram": "maybe"}
                   ).startswith("karyogram: ")
    assert refusal("/v1/cells:batch", [1]).startswith("the JSON body: ")
    assert refusal("/v1/cells", {"name": "x", "images": [{"file": "a.png", "data": 5}]}
                   ).startswith("images.0.data: ")
    assert refusal("/v1/metaphase", {"images": "x"}).startswith("images: ")
    assert server.metric('vfinfer_errors_total{code="bad_input"}') == before + 6
    # in a batch, a cell that does not validate (or fails the route's own checks) is refused
    # alone; a number as a name is taken as text, as before the models
    results = httpx.post(f"{server.url}/v1/cells:batch", json={"cells": [
        {"name": "odd", "images": "x"}, 7,
        {"name": 12, "images": [{"file": "q.png", "data": "@@"}]}]}).json()["results"]
    assert [(r["case"], r["error"]["code"]) for r in results] == [
        ("odd", "bad_input"), ("cell_1", "bad_input"), ("12", "bad_image")]
    assert results[0]["error"]["message"] == "odd: images: Input should be a valid list"
    assert results[2]["error"]["file"] == "q.png"


@pytest.mark.slow
def test_health_models_and_metrics_answer(server):
    assert httpx.get(f"{server.url}/v1/health/live").json() == {"live": True}
    ready = httpx.get(f"{server.url}/v1/health/ready").json()
    assert ready["ready"] and ready["backend"] == "onnxruntime-cpu"
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    model = httpx.get(f"{server.url}/v1/models").json()["models"][0]
    assert model["preset"] == "compact" and model["limits"]["max_pixels"] == 4_000_000
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("vfinfer_requests_total", "vfinfer_request_seconds_bucket",
                 "vfinfer_queue_depth", "vfinfer_errors_total", "vfinfer_batch_cells_bucket"):
        assert name in text
    assert server.metric('vfinfer_requests_total{path="/v1/health/live",status="200"}') >= 1
    assert httpx.get(f"{server.url}/docs").status_code == 200


@pytest.mark.slow
def test_token_required_when_set(model_dir, tmp_path, expected):
    token = "s3cret-token-for-the-test-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    srv = Server(model_dir, "--token-file", tmp_path / "token")
    try:
        case, want = next(iter(expected.values()))
        assert httpx.get(f"{srv.url}/v1/health/ready").status_code == 200  # open for probes
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            response = httpx.get(f"{srv.url}/v1/models", headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
        response = httpx.post(f"{srv.url}/v1/cells", files=[("images", ("a.png", b"x"))])
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
        for body in (b"{", b'{"cells": 3}'):  # the token comes before any word on the body
            response = httpx.post(f"{srv.url}/v1/cells:batch", content=body,
                                  headers={"content-type": "application/json"})
            assert response.status_code == 401 and response.headers["www-authenticate"] == \
                "Bearer"
        assert httpx.get(f"{srv.url}/openapi.json").status_code == 401  # the schema too
        assert httpx.get(f"{srv.url}/docs").status_code == 404  # no page behind a token
        spec = httpx.get(f"{srv.url}/openapi.json",
                         headers={"Authorization": f"Bearer {token}"}).json()
        assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert spec["paths"]["/v1/cells"]["post"]["security"] == [{"HTTPBearer": []}]
        assert "security" not in spec["paths"]["/v1/health/ready"]["get"]
        with Client(srv.url, token=token) as client:
            same_calls(client.classify_dir(case), want)
            assert client.models()[0]["preset"] == "compact"
    finally:
        assert srv.stop() == 0


def test_other_addresses_need_a_token():
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--token-file" in result.output


@pytest.mark.slow
def test_full_queue_is_503_and_sigterm_finishes_the_requests_in_flight(model_dir, expected,
                                                                       tmp_path):
    """One cell waits in the batcher's window (held open until the test lets it go); a second
    finds the queue full; SIGTERM stops the listening; only then is the first let go, and it
    is answered before the server exits with 0."""
    release = tmp_path / "release"
    srv = Server(model_dir, "--queue", 1, "--max-wait-ms", 100, clock=held_until(release))
    case, want = next(iter(expected.values()))
    answers = []
    try:
        first = threading.Thread(target=lambda: answers.append(
            Client(srv.url).classify_dir(case)))
        first.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while srv.metric("vfinfer_queue_depth") != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.metric("vfinfer_queue_depth") == 1, "the first cell never reached the queue"
        response = httpx.post(f"{srv.url}/v1/cells",
                              files=[("images", (p.name, p.read_bytes()))
                                     for p in sorted(case.glob("*.png"))])
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "queue_full"
        srv.terminate()
        srv.wait_until_closed()
        assert not answers  # still in the window: the shutdown waits for it
        release.touch()
        first.join(30)
    finally:
        code = srv.stop()
    assert answers, "the request in flight did not get its answer"
    same_calls(answers[0], want)
    assert code == 0, "".join(srv.output)
    assert "server stopped" in "".join(srv.output)


@pytest.mark.slow
def test_a_request_past_its_timeout_is_504_and_the_server_goes_on(model_dir, expected):
    """The batcher's clock stands still: the cell is never run before the request's 0.3 s."""
    srv = Server(model_dir, "--max-wait-ms", 800, "--timeout", 0.3, clock=STILL)
    try:
        case, _ = next(iter(expected.values()))
        with Client(srv.url) as client:
            with pytest.raises(ServerError) as caught:
                client.classify_dir(case)
            assert caught.value.status == 504 and caught.value.code == "timeout"
            assert client.ready()["ready"]
        errors = httpx.get(f"{srv.url}/metrics").text
        assert 'vfinfer_errors_total{code="timeout"} 1.0' in errors
    finally:
        assert srv.stop() == 0


@pytest.mark.slow
def test_the_result_is_json_as_vfinfer_run_writes_it(server, expected, tmp_path, model_dir):
    case, _ = next(iter(expected.values()))
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["run", str(case), "--out", str(out), "--no-karyogram",
                                     "--model", str(model_dir)]).exit_code == 0
    written = json.loads((out / case.name / "result.json").read_text())
    with Client(server.url) as client:
        got = client.classify_dir(case)
    assert sorted(got) == sorted(written)
    same_calls(got, written)


@pytest.mark.slow
def test_a_metaphase_image_is_segmented_and_classified(server, model_dir):
    from vfinfer.pipeline.metaphase import MetaphasePipeline
    from vfinfer.tools.synthesis.metaphases import render_metaphase

    image, _ = render_metaphase(21, "46,XY", size=(512, 640))
    with MetaphasePipeline(model_dir, threads=2) as mp:
        want = mp.run_image(image, name="meta")
    png = cv2.imencode(".png", image)[1].tobytes()
    answer = httpx.post(f"{server.url}/v1/metaphase?overlay=true", timeout=60,
                        files=[("images", ("meta.png", png, "image/png"))],
                        data={"name": "meta"})
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["segmentation"]["found"] == want["segmentation"]["found"]
    assert got["karyotype"] == want["karyotype"]
    assert [c["segment"]["box"] for c in got["chromosomes"]] == \
        [c["segment"]["box"] for c in want["chromosomes"]]
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(got["overlay_png"]), np.uint8), 1)
    assert overlay.shape == (512, 640, 3)
    blank = cv2.imencode(".png", np.full((64, 64), 240, np.uint8))[1].tobytes()
    refused = httpx.post(f"{server.url}/v1/metaphase",
                         files=[("images", ("blank.png", blank, "image/png"))])
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "no_chromosomes"
    two = httpx.post(f"{server.url}/v1/metaphase", files=[
        ("images", ("a.png", png, "image/png")), ("images", ("b.png", png, "image/png"))])
    assert two.status_code == 422 and "exactly one" in two.text
