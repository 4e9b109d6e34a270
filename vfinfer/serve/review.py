"""The review page (``GET /review``) and the routes behind it, on a server started with
``--cases DIR`` (a ``vfinfer.io.review.ReviewStore``: ``vfinfer run --keep-images`` output, or
cases uploaded here).

- ``GET /v1/cases``: the cases, each with its karyotype and review revision;
- ``POST /v1/cases``: a new case from uploaded cut-outs, or one metaphase image with
  ``?metaphase=true`` (the body of ``/v1/cells``), classified, stored with its images;
- ``GET /v1/cases/{case}``: its result, its reviewed result and audit trail (if any);
- ``GET /v1/cases/{case}/files/{name}``: its pictures, report, CSV and images;
- ``POST /v1/cases/{case}/corrections``: a save (``CorrectionsRequest``): 200 with the new
  revision and karyotype, 409 when the case was saved since ``base_revision``, 422 for a
  correction that cannot apply, 404 for an unknown case.

The page is plain HTML with a little JavaScript (``static/review.html``, no build step): it
holds no data and needs no token itself; everything it shows comes from the routes above,
which sit behind the server's token and limits like the rest of the API. The audit trail
records the reviewer's name as typed and the name of the token that made the save.
"""

import mimetypes
from importlib import resources
from pathlib import Path

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from vfinfer.io.review import (
    AUDIT_FILE,
    IMAGES_DIR,
    REVIEW_DIR,
    ReviewConflict,
    ReviewError,
    UnknownCase,
    corrections_from,
)
from vfinfer.serve.limits import ApiError, bad_input, require_json
from vfinfer.serve.schemas import CorrectionsRequest

CASE_FILES = ("result.json", "result.csv", "karyogram.png", "overlay.png", "report.html")
REVIEW_FILES = ("result.json", "result.csv", "karyogram.png", "report.html", AUDIT_FILE)
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
               "script-src 'unsafe-inline'; frame-ancestors 'none'")


def review_page():
    return resources.files("vfinfer.serve").joinpath("static/review.html").read_text("utf-8")


def add_review_routes(app, api, state, upload):
    """The page on ``app`` (open) and the routes on ``api`` (token, limits); ``upload``:
    ``async (request, metaphase) -> (result, {name: bytes})``, a classified case and its
    files (``vfinfer.serve.app``)."""
    page = review_page()

    @app.get("/review", include_in_schema=False)
    async def review():
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    @api.get("/v1/cases")
    async def cases():
        """The cases of the server's cases directory."""
        store = _store(state)
        return {"cases": await run_in_threadpool(_case_list, store)}

    @api.get("/v1/cases/{case}")
    async def case(case: str):
        """One case: ``result``, ``reviewed`` (null before any save), ``revision``, ``audit``."""
        opened = await run_in_threadpool(_open, _store(state), case)
        return await run_in_threadpool(_case_body, opened)

    @api.get("/v1/cases/{case}/files/{name:path}")
    async def case_file(case: str, name: str):
        """A file of the case: its pictures, report, CSV, images and review files."""
        opened = await run_in_threadpool(_open, _store(state), case)
        path = _case_file(opened.dir, name)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Response(await run_in_threadpool(path.read_bytes), media_type=media)

    _add_write_routes(api, state, upload)


def _add_write_routes(api, state, upload):
    @api.post("/v1/cases")
    async def new_case(request: Request, metaphase: str = "false"):
        """A new case, sent like ``POST /v1/cells`` (``?metaphase=true``: one metaphase image
        as for ``/v1/metaphase``); 409 when a case of that name exists."""
        store = _store(state)
        result, files = await upload(request, metaphase.lower() in ("1", "true", "yes", "on"))
        await run_in_threadpool(_store_case, store, result, files)
        return {"case": result["case"], "karyotype": result["karyotype"],
                "n_chromosomes": result["n_chromosomes"]}

    @api.post("/v1/cases/{case}/corrections", dependencies=[Depends(require_json)])
    async def corrections(case: str, body: CorrectionsRequest, request: Request):
        """Save a review of ``case``: the corrected result, its report and an audit line."""
        store = _store(state)
        fixes = corrections_from([fix.model_dump(exclude_none=True, exclude_defaults=True)
                                  for fix in body.corrections])
        token = getattr(request.state, "token_name", None)
        try:
            reviewed, line = await run_in_threadpool(
                store.save, case, fixes, body.reviewer, token, body.base_revision)
        except UnknownCase as exc:
            raise ApiError(404, "unknown_case", str(exc)) from None
        except ReviewConflict as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        except ReviewError as exc:
            raise bad_input(f"{case}: {exc}") from None
        return {"case": case, "revision": line["revision"], "karyotype": reviewed["karyotype"],
                "n_chromosomes": reviewed["n_chromosomes"], "warnings": reviewed["warnings"],
                "changes": line["changes"]}


def _store(state):
    if state.review_store is None:
        raise ApiError(404, "no_cases", "this server keeps no cases (start it with --cases DIR)")
    return state.review_store


def _open(store, name):
    try:
        return store.open(name)
    except UnknownCase as exc:
        raise ApiError(404, "unknown_case", str(exc)) from None
    except ReviewError as exc:
        raise ApiError(422, "bad_case", str(exc)) from None


def _case_list(store):
    listed = []
    for name in store.case_names():
        try:
            case = store.open(name)
            reviewed = case.reviewed()
        except ReviewError:
            continue  # a case directory being written, or not one of ours
        shown = reviewed or case.original
        listed.append({"case": name, "karyotype": shown["karyotype"],
                       "n_chromosomes": shown["n_chromosomes"],
                       "revision": reviewed["review"]["revision"] if reviewed else 0,
                       "images": (case.dir / IMAGES_DIR).is_dir()})
    return listed


def _case_body(case):
    reviewed = case.reviewed()
    return {"case": case.dir.name, "result": case.original, "reviewed": reviewed,
            "revision": reviewed["review"]["revision"] if reviewed else 0,
            "audit": case.audit(), "images": (case.dir / IMAGES_DIR).is_dir(),
            "files": [name for name in CASE_FILES if (case.dir / name).exists()]}


def _case_file(case_dir, name):
    """The path of an allowed file of the case; 404 for anything else."""
    parts = name.split("/")
    allowed = ((len(parts) == 1 and parts[0] in CASE_FILES)
               or (len(parts) == 2 and parts[0] == REVIEW_DIR and parts[1] in REVIEW_FILES)
               or (len(parts) == 2 and parts[0] == IMAGES_DIR and parts[1].endswith(".png")
                   and not parts[1].startswith(".")))
    path = case_dir.joinpath(*parts)
    if not allowed or not path.is_file():
        raise ApiError(404, "not_found", f"{case_dir.name}: no file {name!r}")
    return path


def _store_case(store, result, files):
    """Write an uploaded case into the store (never over an existing case: 409)."""
    from vfinfer.io.results import ResultExistsError, write_case

    name = result["case"]
    if not name or name.startswith(".") or Path(name).name != name:
        raise bad_input(f"{name!r} cannot be a case name (no '/', no leading '.')")
    try:
        with store.lock(name):
            write_case(store.root, result, extra_files=files, report=True)
    except ResultExistsError:
        raise ApiError(409, "case_exists", f"{name}: the server already keeps a case of "
                       "that name; choose another name") from None

