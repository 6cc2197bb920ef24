"""The JSON API under ``/api``: the gRPC ``SearchService`` over HTTP, plus what a page needs.

| route | gRPC | answer |
|---|---|---|
| ``POST /api/search`` | ``Search`` | the JSON of ``histocli search --json`` (fused, with feedback) |
| ``GET /api/encoders`` | ``ListEncoders`` | ``{"encoders": [...]}`` |
| ``GET /api/stats`` | ``GetIndexStats`` | points per encoder, data set and label |
| ``GET /api/tiles/{id}`` | ``GetTile`` (TILE) | the tile as PNG or JPEG |
| ``GET /api/images/{id}`` | ``GetTile`` (SOURCE) | its source image, downscaled, box drawn |
| ``POST /api/slides/search`` | ``SearchSlides`` | ranked whole-slide images |
| ``POST /api/heatmap`` | ``GetHeatmap`` | a slide coloured by similarity to the query (PNG) |
| ``POST /api/preview`` | — | an upload downscaled to PNG, original size in headers |
| ``GET /api/health`` | health | ``{"status": "SERVING", ...}`` (no token needed) |

Translation only: every rule lives in the engine. Blocking calls (embedding, file reads, gRPC)
run in the thread pool, so one slow query does not stall the page's other requests.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.responses import Response

from histo.data.images import load_rgb
from histo.data.tile_source import MAX_SIZE, MIN_SIZE, TileView
from histo.errors import ImageDecodeError, InvalidInputError
from histo.heatmap import DEFAULT_BEST
from histo.search import DEFAULT_TOP_K, MAX_EXAMPLES, MAX_TILES_PER_SLIDE, MAX_TOP_K, Feedback
from histo.slide_search import DEFAULT_TILES_PER_SLIDE
from histo.store import SearchFilter
from services.web.errors import describe_validation

router = APIRouter()
P = TypeVar("P", bound=BaseModel)
#: Text fields of a multipart search (the file is the field ``image``); more is a malformed form.
#: Room for every like / unlike id the engine takes, so that its limit is the one a user meets.
MAX_FORM_FIELDS = 64 + MAX_EXAMPLES
#: Form fields that may repeat, and the SearchParams list each one adds to.
LIST_FIELDS = {
    "labels": "labels",
    "label": "labels",
    "encoders": "encoders",
    "like": "like",
    "unlike": "unlike",
}
MAX_FIELD_BYTES = 64 * 1024
DEFAULT_PREVIEW_SIZE = 512
CACHE_TILES = "private, max-age=300"
Size = Annotated[int, Query(ge=MIN_SIZE, le=MAX_SIZE, description="Longer side of the image, px.")]
Format = Annotated[str, Query(pattern="^(png|jpe?g)$", description="png or jpeg.")]


class SearchParams(BaseModel):
    """A search, as JSON or as the text fields of a multipart form beside the file ``image``.
    Give one query: the file ``image``, ``point_id`` or ``vector``; with ``like`` ids it may be
    left out. Lists repeat their field in a form (``like=a&like=b``)."""

    model_config = ConfigDict(extra="forbid")

    point_id: str | None = Field(None, description="Search with an indexed tile's stored vector.")
    vector: list[float] | None = Field(None, description="A raw vector of the encoder's dimension.")
    encoder: str | None = Field(None, description="Named vector to search; empty = the default.")
    encoders: list[str] = Field(
        default_factory=list, description="Several encoders, fused into one ranking (instead of encoder)."
    )
    fusion: str = Field("rrf", description="How several encoders' lists are fused: rrf or dbsf.")
    like: list[str] = Field(default_factory=list, description="Point ids of tiles to find more like.")
    unlike: list[str] = Field(default_factory=list, description="Point ids of tiles to find less like.")
    strategy: str | None = Field(
        None,
        description="How like / unlike combine: best_score, sum_scores or average_vector; "
        "empty = the engine's default (histo.search.Feedback).",
    )
    diversity: float | None = Field(
        None, description="MMR re-ranking, 0 (plain) to 1 (most diverse); one encoder, no like / unlike."
    )
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K)
    dataset: str | None = Field(None, description="Only tiles of this data set.")
    labels: list[str] = Field(default_factory=list, description="Only tiles with any of these labels.")
    split: str | None = Field(None, description="Only tiles of this split (train, val, test).")
    per_image: int | None = Field(None, ge=1, description="At most this many hits per source image.")
    include_same_image: bool = Field(False, description="point_id queries: keep tiles of its own image.")
    mpp: float | None = Field(None, gt=0, description="The query image's µm/px, when known.")
    exact: bool = Field(False, description="Exhaustive search instead of the HNSW index.")

    def engine_kwargs(self, image: bytes | None) -> dict[str, Any]:
        return {
            "image": image,
            "point_id": self.point_id,
            "vector": self.vector,
            "encoder": self.encoder,
            "encoders": self.encoders or None,
            "fusion": self.fusion,
            "feedback": self.feedback(),
            "diversity": self.diversity,
            "top_k": self.top_k,
            "filter": SearchFilter(dataset=self.dataset, labels=tuple(self.labels), split=self.split),
            "per_image": self.per_image,
            "include_same_image": self.include_same_image,
            "mpp": self.mpp,
            "exact": self.exact,
        }

    def feedback(self) -> Feedback | None:
        """The engine's Feedback when any tile is liked or unliked; else a plain search."""
        if not (self.like or self.unlike):
            return None
        feedback = Feedback(like=tuple(self.like), unlike=tuple(self.unlike))
        return dataclasses.replace(feedback, strategy=self.strategy) if self.strategy else feedback


def _params(model: type[P], values: dict[str, Any]) -> P:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise InvalidInputError(describe_validation(exc.errors())) from None


async def _form(request: Request) -> FormData:
    try:
        return await request.form(max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except MultiPartException as exc:
        message = f"malformed multipart form: {exc.message}; send one file in 'image'"
        raise InvalidInputError(message) from None


async def _upload(form: FormData, required: bool) -> bytes | None:
    """The bytes of the form's ``image`` file (a plain text field there is a mistake)."""
    value = form.get("image")
    if value is None:
        if required:
            raise InvalidInputError("no image: send the file in the multipart field 'image'")
        return None
    if not isinstance(value, UploadFile):
        raise ImageDecodeError("the field 'image' must be a file upload, not text")
    return await value.read()


def _form_values(form: FormData) -> dict[str, Any]:
    """Text fields as SearchParams input: empty ones left out, ``LIST_FIELDS`` repeatable."""
    values: dict[str, Any] = {}
    for key in dict.fromkeys(form.keys()):
        if key == "image":
            continue
        items = [v for v in form.getlist(key) if isinstance(v, str) and v.strip()]
        if key in LIST_FIELDS:
            values.setdefault(LIST_FIELDS[key], []).extend(items)
        elif key == "vector" and items:
            values[key] = [part for part in items[0].replace(",", " ").split() if part]
        elif items:
            values[key] = items[-1]
    return values


def body_of(schema: str) -> dict[str, Any]:
    """The OpenAPI request body of a route that takes JSON or a form with the file ``image``."""
    ref = {"$ref": f"#/components/schemas/{schema}"}
    upload = {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ref},
                "multipart/form-data": {"schema": {"allOf": [ref, upload]}},
            },
        }
    }


@router.post(
    "/search",
    openapi_extra=body_of("SearchParams"),
    summary="Rank indexed tiles by similarity to an uploaded image, an indexed tile or a vector, "
    "with one encoder or several fused, optionally steered by liked and unliked tiles.",
)
async def search(request: Request) -> dict[str, Any]:
    """The same JSON as ``histocli search --json``: encoder(s), fusion, took_ms, query_boxes,
    hits (each with ``found_by``)."""
    image, values = await _request_values(request)
    params = _params(SearchParams, values)
    backend = request.app.state.backend
    result = await run_in_threadpool(lambda: backend.search(**params.engine_kwargs(image)))
    data: dict[str, Any] = result.as_dict()
    return data


async def _request_values(request: Request) -> tuple[bytes | None, dict[str, Any]]:
    """The uploaded ``image`` (if any) and the other fields, from a form or a JSON object."""
    kind = request.headers.get("content-type", "")
    if kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await _form(request)
        try:
            return await _upload(form, required=False), _form_values(form)
        finally:
            await form.close()
    if kind.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise InvalidInputError("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidInputError("the JSON body must be an object of search fields")
        return None, body
    raise InvalidInputError(
        "send multipart/form-data (the file in 'image'), a form or application/json (point_id or vector)"
    )


class SlideSearchParams(BaseModel):
    """A slide search: the file ``image`` (a region or image) or ``slide_id`` (an indexed slide)."""

    model_config = ConfigDict(extra="forbid")

    slide_id: str | None = Field(None, description="Query with an indexed slide's mosaic.")
    encoder: str | None = None
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K)
    dataset: str | None = None
    labels: list[str] = Field(default_factory=list)
    split: str | None = None
    tiles_per_slide: int = Field(DEFAULT_TILES_PER_SLIDE, ge=1, le=MAX_TILES_PER_SLIDE)
    mpp: float | None = Field(None, gt=0)
    exact: bool = False

    def engine_kwargs(self, image: bytes | None) -> dict[str, Any]:
        flt = SearchFilter(dataset=self.dataset, labels=tuple(self.labels), split=self.split)
        return self.model_dump(exclude={"dataset", "labels", "split"}) | {"image": image, "filter": flt}


class HeatmapParams(BaseModel):
    """A heatmap: the file ``image`` or ``point_id`` is the query; ``slide_id`` the slide drawn."""

    model_config = ConfigDict(extra="forbid")

    slide_id: str
    point_id: str | None = None
    encoder: str | None = None
    size: int | None = Field(None, ge=MIN_SIZE, le=MAX_SIZE)
    best: int = Field(DEFAULT_BEST, ge=1, le=MAX_TILES_PER_SLIDE)
    mpp: float | None = Field(None, gt=0)

    def engine_kwargs(self, image: bytes | None) -> dict[str, Any]:
        return self.model_dump() | {"image": image}


@router.post(
    "/slides/search",
    openapi_extra=body_of("SlideSearchParams"),
    summary="Rank whole-slide images by their mosaics' likeness to an image or a slide (SearchSlides).",
)
async def search_slides(request: Request) -> dict[str, Any]:
    """The same JSON as ``histocli search --slides --json``: encoder, took_ms, query_boxes, slides."""
    image, values = await _request_values(request)
    params = _params(SlideSearchParams, values)
    backend = request.app.state.backend
    result = await run_in_threadpool(lambda: backend.search_slides(**params.engine_kwargs(image)))
    data: dict[str, Any] = result.as_dict()
    return data


@router.post(
    "/heatmap",
    openapi_extra=body_of("HeatmapParams"),
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
    summary="A slide's thumbnail with every tile coloured by its similarity to the query (GetHeatmap).",
)
async def heatmap(request: Request) -> Response:
    image, values = await _request_values(request)
    params = _params(HeatmapParams, values)
    backend = request.app.state.backend
    drawn = await run_in_threadpool(lambda: backend.heatmap(**params.engine_kwargs(image)))
    best = ";".join(f"{b.x},{b.y},{b.w},{b.h},{score:.4f}" for b, score in drawn.best)
    return Response(
        drawn.data, media_type=drawn.media_type, headers={"X-Best-Boxes": best, "Cache-Control": "no-store"}
    )


@router.get("/encoders", summary="The encoders this server can search with (ListEncoders).")
async def encoders(request: Request) -> dict[str, Any]:
    infos = await run_in_threadpool(request.app.state.backend.list_encoders)
    return {"encoders": [dataclasses.asdict(i) | {"trained_on": i.trained_on} for i in infos]}


@router.get("/stats", summary="What the index holds (GetIndexStats).")
async def stats(request: Request) -> dict[str, Any]:
    figures = await run_in_threadpool(request.app.state.backend.stats)
    data: dict[str, Any] = figures.as_dict()
    return data


async def _tile(request: Request, point_id: str, view: TileView, size: int | None, fmt: str) -> Response:
    backend = request.app.state.backend
    tile = await run_in_threadpool(lambda: backend.tile(point_id, view=view, size=size, fmt=fmt))
    box = f"{tile.box.x},{tile.box.y},{tile.box.w},{tile.box.h}"
    headers = {"Cache-Control": CACHE_TILES, "X-Tile-Box": box}
    return Response(tile.data, media_type=tile.media_type, headers=headers)


@router.get(
    "/tiles/{point_id}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}},
    summary="An indexed tile's pixels, read from its source file (GetTile, view TILE).",
)
async def tile(request: Request, point_id: str, size: Size | None = None, format: Format = "png") -> Response:
    return await _tile(request, point_id, TileView.TILE, size, format)


@router.get(
    "/images/{point_id}",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
    summary="A tile's whole source image, downscaled, with the tile's box drawn (GetTile, view SOURCE).",
)
async def source_image(
    request: Request,
    point_id: str,
    size: Size | None = None,
    format: Format = "jpeg",
) -> Response:
    return await _tile(request, point_id, TileView.SOURCE, size, format)


@router.post(
    "/preview",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
    summary="An uploaded image downscaled to PNG (browsers cannot show TIFF); X-Image-Width/Height "
    "give its original size, the pixels of a search's query_boxes.",
)
async def preview(request: Request) -> Response:
    form = await _form(request)
    try:
        data = await _upload(form, required=True)
        size = _form_values(form).get("size", DEFAULT_PREVIEW_SIZE)
    finally:
        await form.close()
    if not str(size).isdigit() or not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise InvalidInputError(f"size must be an integer from {MIN_SIZE} to {MAX_SIZE} px, got {size!r}")
    assert data is not None
    png, width, height = await run_in_threadpool(_thumbnail, data, int(size), request.app.state.max_pixels)
    headers = {"X-Image-Width": str(width), "X-Image-Height": str(height), "Cache-Control": "no-store"}
    return Response(png, media_type="image/png", headers=headers)


def _thumbnail(data: bytes, size: int, max_pixels: int) -> tuple[bytes, int, int]:
    image = load_rgb(data, max_pixels)
    width, height = image.size
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue(), width, height


@router.get("/health", summary="SERVING when the search backend answers (no token needed).")
async def health(request: Request) -> dict[str, Any]:
    infos = await run_in_threadpool(request.app.state.backend.list_encoders)
    return {"status": "SERVING", "encoders": [i.name for i in infos]}


#: Request bodies that routes read themselves (JSON or a form): their schemas for the OpenAPI file.
BODY_MODELS: tuple[type[BaseModel], ...] = (SearchParams, SlideSearchParams, HeatmapParams)

__all__ = ["BODY_MODELS", "HeatmapParams", "SearchParams", "SlideSearchParams", "router"]
