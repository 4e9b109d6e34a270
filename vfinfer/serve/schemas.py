"""The JSON request bodies of ``vfinfer serve`` as pydantic models (the ``serve`` extra).

FastAPI validates ``POST /v1/cells:batch`` against ``BatchRequest`` itself; ``POST /v1/cells``
and ``POST /v1/metaphase`` also take multipart uploads, so their JSON branch is validated
against ``CellRequest`` by the route. All three are published in ``/openapi.json`` and on
``/docs``. The limits a server is started with (images per cell, name length, cells per
batch, pixels per image) vary per server and are checked by the routes, as are the base64
payloads (a bad one is a ``bad_image`` error naming its file).

A wrong type is a 422 ``bad_input`` error in the project's shape (``vfinfer.serve.limits``);
its message is ``describe(errors)``. In a batch, a cell that does not validate is refused
alone: it is kept as a ``CellProblem`` and answered as that cell's ``{"case", "error"}``.
"""

from typing import Annotated, Any, Dict, List, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, Field, ValidationError, WrapValidator

MAX_LISTED_ERRORS = 3  # in one error message; the rest are counted


class ImagePart(BaseModel):
    """One encoded cut-out (or metaphase image)."""

    file: Optional[str] = Field(
        None, coerce_numbers_to_str=True, examples=["chr_01.png"],
        description="file name reported per chromosome and in errors (image_<i> when missing)")
    data: str = Field(description="the image file (PNG, JPEG, TIFF, BMP, ...), base64-encoded",
                      json_schema_extra={"contentEncoding": "base64"})


class Cell(BaseModel):
    """One cell: its cut-outs, one image per chromosome."""

    name: Optional[str] = Field(
        None, coerce_numbers_to_str=True, examples=["cell_07"],
        description="case name reported as the result's 'case' (cell, or cell_<i> in a batch, "
                    "when missing)")
    images: List[ImagePart] = Field(description="the cut-outs (at most the server's "
                                                "limits.max_images)")


class CellRequest(Cell):
    """The JSON body of ``POST /v1/cells`` (and ``POST /v1/metaphase``, one image)."""

    karyogram: bool = Field(False, description="add the karyogram PNG (base64) as "
                                               "'karyogram_png'")


class CellProblem:
    """A batch entry that is not a valid ``Cell``: the raw entry and why it was refused."""

    def __init__(self, raw: Any, error: ValidationError):
        self.raw, self.errors = raw, error.errors(include_url=False)

    @property
    def name(self) -> Optional[str]:
        name = self.raw.get("name") if isinstance(self.raw, dict) else None
        return None if name is None or name == "" else str(name)


def _cell_or_problem(value: Any, handler) -> Any:
    try:
        return handler(value)
    except ValidationError as exc:
        return CellProblem(value, exc)


class BatchRequest(BaseModel):
    """The JSON body of ``POST /v1/cells:batch``."""

    cells: List[Annotated[Cell, WrapValidator(_cell_or_problem)]] = Field(
        min_length=1, description="the cells (at most the server's limits.max_cells); a cell "
                                  "that is malformed is refused alone, in its own entry")
    karyogram: bool = Field(False, description="add each cell's karyogram PNG (base64) as "
                                               "'karyogram_png'")


class ChromosomeCorrection(BaseModel):
    """What the reviewer says about one chromosome (fields left out stay as called)."""

    model_config = {"extra": "forbid"}
    index: int = Field(ge=0, description="the chromosome's position in the result (0-based)")
    type: Optional[str] = Field(None, description="1-22, X or Y")
    polarity: Optional[str] = Field(None, description="'q-arm down' or 'q-arm up'")
    deleted: bool = Field(False, description="not a chromosome (debris, a nucleus, a copy)")
    joined_into: Optional[int] = Field(
        None, ge=0, description="this object is a piece of chromosome <joined_into>")
    structural: Optional[str] = Field(
        None, max_length=60, examples=["del(5)(q31)"],
        description="a structural change seen on it, in ISCN ('' clears one)")


class CorrectionsRequest(BaseModel):
    """A review save: every correction of the case against its original result."""

    model_config = {"extra": "forbid"}
    reviewer: str = Field(min_length=1, max_length=100, description="who reviewed the case")
    base_revision: Optional[int] = Field(
        None, ge=0, description="the revision the corrections were made on (0: the original); "
                                "a case saved since is refused with 409")
    corrections: List[ChromosomeCorrection] = Field(max_length=1000)


REQUEST_MODELS = (ImagePart, Cell, CellRequest, BatchRequest, ChromosomeCorrection,
                  CorrectionsRequest)


class ErrorDetail(BaseModel):
    status: int = Field(description="the HTTP status, repeated")
    code: str = Field(examples=["bad_input"], description="stable: bad_input, bad_image, "
                      "image_too_large, body_too_large, unauthorized, queue_full, timeout ...")
    message: str = Field(description="one line")
    file: Optional[str] = Field(None, description="the image concerned (absent when none)")


class ErrorBody(BaseModel):
    """Every refusal: ``{"error": {"status", "code", "message", "file"?}}``
    (``vfinfer.serve.limits.ApiError``); published for the docs, not used to build it."""

    error: ErrorDetail


ERROR_RESPONSES: Dict[Union[int, str], Dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description} for status, description in (
        (401, "missing or wrong token (when the server has one)"),
        (413, "body or image over the server's limits"),
        (415, "neither JSON nor multipart"),
        (422, "a body that does not validate, a bad image or field, over a count limit"),
        (503, "queue full (Retry-After)"),
        (504, "no answer within the server's time limit"))}


def describe(errors: Sequence[Mapping[str, Any]], skip: int = 0,
             whole: Optional[str] = None) -> str:
    """One line from pydantic (or FastAPI) validation errors: ``field.path: message; ...``.

    ``skip`` drops that many leading parts of each location (FastAPI's ``"body"``);
    ``whole`` names what an error without a location is about (the JSON body).
    """
    lines = []
    for error in errors[:MAX_LISTED_ERRORS]:
        where = ".".join(str(part) for part in error.get("loc", ())[skip:]) or whole
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", error.get("msg", ""))
            lines.append(f"the body is not valid JSON ({reason} at char {where or 0})")
        else:
            message = error.get("msg", "invalid")
            lines.append(f"{where}: {message}" if where else message)
    if len(errors) > MAX_LISTED_ERRORS:
        lines.append(f"and {len(errors) - MAX_LISTED_ERRORS} more")
    return "; ".join(lines)
