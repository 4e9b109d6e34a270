"""``vfinfer serve`` against a hostile client, for real (a server subprocess on a free loopback
port, bounded loops): memory per request and in all, every format's size read before
decoding, slow and vanishing clients, status codes, Host and Origin, no server paths in
answers."""

import json
import socket
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

from vfinfer.model.manifest import demo_model_dir  # noqa: E402

from serving import Server  # noqa: E402

pytestmark = pytest.mark.slow
GROWTH_LIMIT_MB = 300
DEADLINE_S = 20  # every loop below gives up after this


def rss_mb(pid):
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def png(image):
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture(scope="module")
def guarded():
    srv = Server(demo_model_dir(), "--queue", 4, "--body-timeout", 2, "--header-timeout", 2)
    yield srv
    assert srv.stop() == 0, "".join(srv.output)


@pytest.fixture(scope="module")
def a_cell():
    from vfinfer.tools.synthesis.cells import render_chromosome

    rng = np.random.default_rng(3)
    return [("c%d.png" % k, png(render_chromosome(k % 22, rng))) for k in range(46)]


def post_cell(srv, parts, **kwargs):
    files = [("images", (name, data)) for name, data in parts]
    return httpx.post(f"{srv.url}/v1/cells", files=files, timeout=60, **kwargs)


def test_large_images_refused_before_decoding_and_memory_bounded(guarded, a_cell):
    assert post_cell(guarded, a_cell).status_code == 200  # warm: arenas and sessions exist
    pid = guarded.proc.pid
    before = rss_mb(pid)
    white = png(np.full((4000, 4000), 255, np.uint8))
    answer = post_cell(guarded, [(f"w{k}.png", white) for k in range(50)])
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"
    tiff = cv2.imencode(".tif", np.full((8000, 8000), 255, np.uint8))[1].tobytes()
    answer = post_cell(guarded, [("huge.tif", tiff)])
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "image_too_large"
    assert answer.json()["error"]["file"] == "huge.tif"
    assert rss_mb(pid) - before < 50  # refused from their headers: nothing was decoded
    rgba16 = np.zeros((4000, 4000, 4), np.uint16)
    rgba16[..., 3] = 65535
    rgba16[1800:2200, 1950:2050, :3] = 9000  # a dark bar on white once composited
    rgba16[..., :3][rgba16[..., 0] == 0] = 65535
    answer = post_cell(guarded, [("rgba16.png", png(rgba16))] + a_cell[:45])
    assert answer.status_code in (200, 413), answer.text
    assert rss_mb(pid) - before < GROWTH_LIMIT_MB
    assert post_cell(guarded, a_cell).status_code == 200  # and the server goes on


def test_a_format_whose_size_cannot_be_read_is_refused(guarded):
    answer = post_cell(guarded, [("x.exr", b"\x76\x2f\x31\x01" + b"\0" * 64)])
    assert answer.status_code == 422
    assert "OpenEXR images are not accepted" in answer.json()["error"]["message"]


def test_nested_json_and_a_batch_that_can_never_fit_are_422(guarded, a_cell):
    nested = b"[" * 100_000 + b"]" * 100_000
    for path in ("/v1/cells", "/v1/cells:batch"):
        answer = httpx.post(f"{guarded.url}{path}", content=nested,
                            headers={"content-type": "Application/JSON"})
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "bad_input"
    cell = {"images": [{"file": "a.png", "data": __import__("base64").b64encode(
        a_cell[0][1]).decode()}]}
    answer = httpx.post(f"{guarded.url}/v1/cells:batch", json={"cells": [cell] * 5})
    assert answer.status_code == 422 and "can never wait together" in answer.text


def raw_request(srv, head, body=b""):
    port = int(srv.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    sock.sendall(head + body)
    return sock


def closed_or_answered(sock):
    """What the server sent before it closed the connection (b"" when it only closed)."""
    data = b""
    sock.settimeout(DEADLINE_S)
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_slow_headers_and_a_trickled_body_are_cut_off(guarded, a_cell):
    started = time.monotonic()
    slow_head = raw_request(guarded, b"POST /v1/cells HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    trickle = raw_request(guarded, b"POST /v1/cells HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   b"Content-Type: application/json\r\n"
                                   b"Content-Length: 100000\r\n\r\n", b"{")
    for _ in range(3):  # the server goes on answering others meanwhile
        assert httpx.get(f"{guarded.url}/v1/health/ready").status_code == 200
        assert post_cell(guarded, a_cell[:10]).status_code == 200
        trickle.sendall(b" ")
    assert b"408" in closed_or_answered(trickle).split(b"\r\n", 1)[0]
    assert closed_or_answered(slow_head) == b""
    assert time.monotonic() - started < DEADLINE_S
    assert guarded.metric('vfinfer_errors_total{code="request_timeout"}') >= 1


def test_a_client_hanging_up_is_not_a_500(guarded):
    gone_before = guarded.metric("vfinfer_client_disconnects_total") or 0
    sock = raw_request(guarded, b"POST /v1/cells HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Content-Type: application/json\r\n"
                                b"Content-Length: 1000\r\n\r\n", b'{"images": [')
    sock.close()
    deadline = time.monotonic() + DEADLINE_S
    while (guarded.metric("vfinfer_client_disconnects_total") or 0) == gone_before:
        assert time.monotonic() < deadline, "the disconnect was never counted"
        time.sleep(0.05)
    assert guarded.metric('vfinfer_requests_total{path="/v1/cells",status="500"}') is None


def test_foreign_hosts_and_origins_are_refused(guarded):
    answer = httpx.get(f"{guarded.url}/v1/models", headers={"Host": "rebound.example"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_host"
    answer = httpx.post(f"{guarded.url}/v1/cells", headers={"Origin": "http://evil.example"},
                        files=[("images", ("a.png", b"x"))])
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "cross_origin"
    ok = httpx.get(f"{guarded.url}/v1/models", headers={"Origin": guarded.url})
    assert ok.status_code == 200


def test_no_server_path_in_any_answer(guarded, a_cell):
    where = str(Path(demo_model_dir()).resolve().parent)
    answers = [httpx.get(f"{guarded.url}/v1/models"), post_cell(guarded, a_cell[:5]),
               post_cell(guarded, [("bad.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")])]
    for answer in answers:
        assert where not in answer.text and '"/' not in answer.text.replace('"/v', "")
    model = answers[0].json()["models"][0]["model"]
    assert model["dir"] == Path(demo_model_dir()).name


def test_an_unexpected_error_answers_a_request_id_only():
    """In process: a pipeline whose step raises; the answer holds no word of the exception."""
    from fastapi.testclient import TestClient

    from vfinfer.pipeline import Pipeline
    from vfinfer.serve.app import create_app

    with Pipeline(threads=1) as pipe:
        def broken(*_args, **_kwargs):
            raise RuntimeError("secret /srv/path went wrong")

        pipe.prepare = broken
        app = create_app(pipe, hosts=("testserver",))
        with TestClient(app, raise_server_exceptions=False) as client:
            image = png(np.full((40, 12), 255, np.uint8))
            answer = client.post("/v1/cells", files=[("images", ("a.png", image))])
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["code"] == "internal" and "secret" not in answer.text
    assert error["request_id"] in error["message"]
    json.dumps(error)
