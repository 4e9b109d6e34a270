"""The review routes of ``vfinfer serve --cases`` in process (FastAPI's TestClient): the
page, uploads, files, saves, and the server's token, limits and bad-input behaviour on
them."""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from vfinfer.pipeline import Pipeline  # noqa: E402
from vfinfer.segment.segmenter import Segmenter  # noqa: E402
from vfinfer.serve.app import create_app  # noqa: E402
from vfinfer.serve.limits import Limits  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRISOMY = "syn9002-47XY+21-0"
TOKENS = {"alice": "alice-token-0123456789", "vendor": "vendor-token-0123456789"}
ALICE = {"Authorization": f"Bearer {TOKENS['alice']}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, cases directory) of a server with tokens, a segmenter and --cases."""
    cases = tmp_path_factory.mktemp("cases")
    segmenter = Segmenter(None, threads=1)
    with Pipeline(threads=1) as pipe:
        app = create_app(pipe, Limits(max_images=60), token=TOKENS, hosts=("testserver",),
                         segmenter=segmenter, cases_dir=cases)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, cases
    segmenter.close()


def trisomy_parts(name=TRISOMY):
    files = sorted((EXAMPLES / TRISOMY).glob("*.png"))
    return ([("images", (path.name, path.read_bytes(), "image/png")) for path in files],
            {"name": name})


@pytest.fixture(scope="module")
def uploaded(served):
    client, cases = served
    files, data = trisomy_parts()
    answer = client.post("/v1/cases", files=files, data=data, headers=ALICE)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_page_is_served_without_data(served):
    client, _ = served
    page = client.get("/review")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "<script>" in page.text and "http://" not in page.text and "https://" not in page.text


def test_the_routes_need_the_token(served, uploaded):
    client, _ = served
    for method, path in (("get", "/v1/cases"), ("get", f"/v1/cases/{TRISOMY}"),
                         ("get", f"/v1/cases/{TRISOMY}/files/karyogram.png"),
                         ("post", f"/v1/cases/{TRISOMY}/corrections")):
        answer = getattr(client, method)(path)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.json()["error"]["code"] == "unauthorized"


def test_an_upload_is_kept_with_its_images(served, uploaded):
    client, cases = served
    assert uploaded == {"case": TRISOMY, "karyotype": "47,XY,+21", "n_chromosomes": 47}
    listed = client.get("/v1/cases", headers=ALICE).json()["cases"]
    assert {"case": TRISOMY, "karyotype": "47,XY,+21", "n_chromosomes": 47, "revision": 0,
            "images": True} in listed
    body = client.get(f"/v1/cases/{TRISOMY}", headers=ALICE).json()
    assert body["reviewed"] is None and body["revision"] == 0 and body["audit"] == []
    assert set(body["files"]) >= {"result.json", "result.csv", "karyogram.png", "report.html"}
    assert len(list((cases / TRISOMY / "images").glob("*.png"))) == 47
    image = client.get(f"/v1/cases/{TRISOMY}/files/images/{TRISOMY}_00.png", headers=ALICE)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    report = client.get(f"/v1/cases/{TRISOMY}/files/report.html", headers=ALICE)
    assert report.headers["content-type"].startswith("text/html") and "47,XY,+21" in report.text


def test_a_second_upload_of_a_name_is_refused(served, uploaded):
    client, cases = served
    before = (cases / TRISOMY / "result.json").read_bytes()
    files, data = trisomy_parts()
    answer = client.post("/v1/cases", files=files[:3], data=data, headers=ALICE)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "case_exists"
    assert (cases / TRISOMY / "result.json").read_bytes() == before


@pytest.mark.parametrize("name", [".hidden", "a/b", ".."])
def test_unsafe_upload_names_are_refused(served, name):
    client, cases = served
    files, _ = trisomy_parts()
    answer = client.post("/v1/cases", files=files[:2], data={"name": name}, headers=ALICE)
    assert answer.status_code == 422, answer.text
    assert not (cases / name).exists() or name == ".."


@pytest.mark.parametrize("path", ["..%2Fresult.json", "images%2F..%2F..%2Fx.png",
                                  "images/%2e%2e%2Fresult.json", "secret.txt",
                                  "review%2F..%2F..%2Fx", "images/.hidden.png"])
def test_only_the_case_files_are_served(served, uploaded, path):
    client, _ = served
    answer = client.get(f"/v1/cases/{TRISOMY}/files/{path}", headers=ALICE)
    assert answer.status_code == 404, answer.text


def post_corrections(client, body, case=TRISOMY, headers=ALICE):
    return client.post(f"/v1/cases/{case}/corrections", json=body, headers=headers)


@pytest.mark.parametrize("body, status, words", [
    ({"reviewer": "r", "corrections": [{"index": "a"}]}, 422, "index"),
    ({"reviewer": "r", "corrections": [{"index": 0, "colour": "red"}]}, 422, "colour"),
    ({"corrections": []}, 422, "reviewer"),
    ({"reviewer": "r", "corrections": [{"index": 0, "type": "23"}]}, 422, "not one of 1-22"),
    ({"reviewer": "r", "corrections": [{"index": 47, "deleted": True}]}, 422, "0-46"),
])
def test_a_malformed_correction_is_refused(served, uploaded, body, status, words):
    client, cases = served
    answer = post_corrections(client, body)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]["message"]
    assert not (cases / TRISOMY / "review" / "result.json").exists()


def test_corrections_need_json_and_a_known_case(served, uploaded):
    client, _ = served
    answer = client.post(f"/v1/cases/{TRISOMY}/corrections", content=b"reviewer=r",
                         headers={**ALICE, "content-type": "text/plain"})
    assert answer.status_code == 415
    answer = post_corrections(client, {"reviewer": "r", "corrections": []}, case="nope")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_case"


def test_a_save_and_a_stale_save(served, uploaded):
    client, cases = served
    result = json.loads((cases / TRISOMY / "result.json").read_text())
    extra = [i for i, c in enumerate(result["chromosomes"]) if c["type"] == "21"][0]
    body = {"reviewer": "Dr. Review", "base_revision": 0,
            "corrections": [{"index": extra, "deleted": True}]}
    answer = post_corrections(client, body)
    assert answer.status_code == 200, answer.text
    saved = answer.json()
    assert (saved["revision"], saved["karyotype"], saved["n_chromosomes"]) == (1, "46,XY", 46)
    assert saved["changes"] == [{"index": extra, "file": result["chromosomes"][extra]["file"],
                                 "field": "deleted", "from": False, "to": True}]
    stale = post_corrections(client, {**body, "reviewer": "someone else"})
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "conflict"
    case = client.get(f"/v1/cases/{TRISOMY}", headers=ALICE).json()
    assert case["revision"] == 1 and case["reviewed"]["karyotype"] == "46,XY"
    assert [(e["reviewer"], e["token"]) for e in case["audit"]] == [("Dr. Review", "alice")]
    assert case["result"] == result  # the original, untouched
    picture = client.get(f"/v1/cases/{TRISOMY}/files/review/karyogram.png", headers=ALICE)
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")


def test_a_metaphase_upload_keeps_its_image_and_overlay(served):
    client, cases = served
    image = (EXAMPLES / "metaphase-46XY.png").read_bytes()
    answer = client.post("/v1/cases?metaphase=true", headers=ALICE, data={"name": "meta"},
                         files=[("images", ("metaphase-46XY.png", image, "image/png"))])
    assert answer.status_code == 200, answer.text
    body = client.get("/v1/cases/meta", headers=ALICE).json()
    assert "overlay.png" in body["files"] and body["images"]
    assert (cases / "meta" / "images" / "metaphase.png").is_file()
    assert all("segment" in c for c in body["result"]["chromosomes"])


def test_without_a_cases_directory_there_is_no_review():
    with Pipeline(threads=1) as pipe:
        app = create_app(pipe, hosts=("testserver",))
        with TestClient(app, raise_server_exceptions=False) as client:
            answer = client.get("/v1/cases")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "no_cases"


def test_concurrent_saves_of_one_case_one_wins(served):
    client, cases = served
    files, _ = trisomy_parts()
    assert client.post("/v1/cases", files=files, data={"name": "race"},
                       headers=ALICE).status_code == 200
    bodies = [{"reviewer": who, "base_revision": 0,
               "corrections": [{"index": 0, "type": kind}]} for who, kind in (("a", "5"),
                                                                            ("b", "6"))]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda body: post_corrections(client, body, case="race"),
                                bodies))
    assert sorted(answer.status_code for answer in answers) == [200, 409]
    winner = bodies[[answer.status_code for answer in answers].index(200)]
    saved = json.loads((cases / "race" / "review" / "result.json").read_text())
    assert saved["review"]["revision"] == 1 and saved["review"]["reviewer"] == winner["reviewer"]
    assert saved["chromosomes"][0]["type"] == winner["corrections"][0]["type"]
    audit = (cases / "race" / "review" / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["reviewer"] for line in audit] == [winner["reviewer"]]
    assert not list((cases / "race").rglob("*.tmp"))
