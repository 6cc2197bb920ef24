"""``SearchService`` over gRPC: messages in, ``histo.search.SearchEngine`` calls, messages out.

Translation only. Every rule (filters, grouping, tiling of large query images, defaults) lives in
the engine, and every failure goes through the one table in ``services/search/errors.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from google.protobuf import struct_pb2

from histo.client import FUSION_VALUES, STRATEGY_VALUES, query_image_message
from histo.data.records import Box
from histo.data.tile_source import TileImage, TileView
from histo.heatmap import DEFAULT_BEST, Heatmap
from histo.rpc.v1 import search_pb2, search_pb2_grpc
from histo.search import DEFAULT_TOP_K, EncoderInfo, Feedback, IndexStats, SearchEngine, SearchResult
from histo.slide_search import DEFAULT_TILES_PER_SLIDE, SlideSearchResult
from histo.snapshots import SnapshotTaker
from histo.store import SearchFilter
from services.search.errors import NotReadyError, abort

SERVICE_NAME: str = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name


def to_struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def filter_of(message: search_pb2.Filter) -> SearchFilter:
    return SearchFilter(
        dataset=message.dataset or None,
        labels=tuple(message.labels),
        split=message.split or None,
        exclude_image_ids=tuple(message.exclude_image_ids),
        exclude_slide_ids=tuple(message.exclude_slide_ids),
        exclude_patient_ids=tuple(message.exclude_patient_ids),
    )


#: Proto enum values to the engine's names (the client's maps, inverted).
FUSION_NAMES = {value: name for name, value in FUSION_VALUES.items()}
STRATEGY_NAMES = {value: name for name, value in STRATEGY_VALUES.items()}


def feedback_of(message: search_pb2.Feedback) -> Feedback:
    return Feedback(
        like=tuple(message.like),
        unlike=tuple(message.unlike),
        like_images=tuple(message.like_images),
        unlike_images=tuple(message.unlike_images),
        strategy=STRATEGY_NAMES[message.strategy],
    )


def search_kwargs(request: search_pb2.SearchRequest) -> dict[str, Any]:
    """The engine's keyword arguments for a request (proto defaults mean "not given")."""
    kind = request.WhichOneof("query")
    return {
        "image": request.image if kind == "image" else None,
        "point_id": request.point_id if kind == "point_id" else None,
        "vector": list(request.vector.values) if kind == "vector" else None,
        "encoder": request.encoder or None,
        "encoders": list(request.encoders) or None,
        "fusion": FUSION_NAMES[request.fusion],
        "feedback": feedback_of(request.feedback) if request.HasField("feedback") else None,
        "diversity": request.diversity if request.HasField("diversity") else None,
        "top_k": request.top_k or DEFAULT_TOP_K,
        "filter": filter_of(request.filter),
        "per_image": (request.grouping.per_image or 1) if request.HasField("grouping") else None,
        "include_same_image": request.include_same_image,
        "mpp": request.mpp or None,
        "exact": request.exact,
    }


def hit_message(h: Any) -> search_pb2.Hit:
    """A SearchHit or a SlideMatch as a Hit."""
    return search_pb2.Hit(
        id=h.id,
        score=h.score,
        payload=to_struct(h.payload),
        query_tile=h.query_tile,
        found_by=getattr(h, "found_by", ()),
    )


def box_messages(boxes: Iterable[Box]) -> list[search_pb2.Box]:
    return [search_pb2.Box(x=b.x, y=b.y, w=b.w, h=b.h) for b in boxes]


def search_response(result: SearchResult) -> search_pb2.SearchResponse:
    return search_pb2.SearchResponse(
        query_image=query_image_message(result.query_image),
        hits=[hit_message(h) for h in result.hits],
        encoder=result.encoder,
        took_ms=result.took_ms,
        query_boxes=box_messages(result.query_boxes),
        encoders=result.encoders,
        fusion=result.fusion or "",
    )


def slides_kwargs(request: search_pb2.SearchSlidesRequest) -> dict[str, Any]:
    kind = request.WhichOneof("query")
    return {
        "image": request.image if kind == "image" else None,
        "slide_id": request.slide_id if kind == "slide_id" else None,
        "encoder": request.encoder or None,
        "top_k": request.top_k or DEFAULT_TOP_K,
        "filter": filter_of(request.filter),
        "tiles_per_slide": request.tiles_per_slide or DEFAULT_TILES_PER_SLIDE,
        "mpp": request.mpp or None,
        "exact": request.exact,
    }


def slides_response(result: SlideSearchResult) -> search_pb2.SearchSlidesResponse:
    return search_pb2.SearchSlidesResponse(
        slides=[
            search_pb2.SlideHit(
                slide_id=s.slide_id,
                score=s.score,
                dataset=s.dataset or "",
                label=s.label or "",
                patient_id=s.patient_id or "",
                tiles=[hit_message(t) for t in s.tiles],
            )
            for s in result.slides
        ],
        encoder=result.encoder,
        took_ms=result.took_ms,
        query_boxes=box_messages(result.query_boxes),
        query_image=query_image_message(result.query_image),
    )


def heatmap_kwargs(request: search_pb2.GetHeatmapRequest) -> dict[str, Any]:
    kind = request.WhichOneof("query")
    return {
        "image": request.image if kind == "image" else None,
        "point_id": request.point_id if kind == "point_id" else None,
        "slide_id": request.slide_id,
        "encoder": request.encoder or None,
        "size": request.size or None,
        "best": request.best or DEFAULT_BEST,
        "mpp": request.mpp or None,
    }


def heatmap_response(heatmap: Heatmap) -> search_pb2.GetHeatmapResponse:
    return search_pb2.GetHeatmapResponse(
        image=heatmap.data,
        media_type=heatmap.media_type,
        width=heatmap.width,
        height=heatmap.height,
        best_boxes=box_messages(b for b, _ in heatmap.best),
        best_scores=[score for _, score in heatmap.best],
    )


def encoder_message(info: EncoderInfo) -> search_pb2.EncoderInfo:
    return search_pb2.EncoderInfo(
        name=info.name,
        kind=info.kind,
        method=info.method,
        architecture=info.architecture,
        dim=info.dim,
        input_size=info.input_size,
        orientation_pooling=info.orientation_pooling,
        trained_on=info.trained_on,
        data=to_struct(info.data),
        training=to_struct(info.training),
        points=info.points,
        is_default=info.is_default,
    )


def stats_response(stats: IndexStats) -> search_pb2.GetIndexStatsResponse:
    return search_pb2.GetIndexStatsResponse(
        collection=stats.collection,
        points=stats.points,
        vectors={
            name: search_pb2.VectorStats(dim=v["dim"], points=v["points"])
            for name, v in stats.vectors.items()
        },
        datasets={
            name: search_pb2.DatasetStats(points=count, labels=stats.labels.get(name, {}))
            for name, count in stats.datasets.items()
        },
        searchable_encoders=stats.encoders,
    )


#: GetTileRequest.View values -> the engine's views (the proto enum names are the upper-case ones).
VIEWS = {search_pb2.GetTileRequest.TILE: TileView.TILE, search_pb2.GetTileRequest.SOURCE: TileView.SOURCE}


def tile_response(tile: TileImage) -> search_pb2.GetTileResponse:
    b = tile.box
    return search_pb2.GetTileResponse(
        image=tile.data,
        media_type=tile.media_type,
        width=tile.width,
        height=tile.height,
        box=search_pb2.Box(x=b.x, y=b.y, w=b.w, h=b.h),
    )


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """Calls ``engine()`` per request: it returns the loaded engine or raises ``NotReadyError``."""

    def __init__(
        self,
        engine: Callable[[], SearchEngine],
        secrets: Iterable[str] = (),
        snapshots: SnapshotTaker | None = None,
        open_snapshots: bool = False,
    ) -> None:
        self._engine = engine
        self._secrets = tuple(s for s in secrets if s)
        self._snapshots = snapshots
        self._open_snapshots = open_snapshots  # True with a token: the interceptor checked the caller

    def Search(  # gRPC method names are CamelCase
        self, request: search_pb2.SearchRequest, context: grpc.ServicerContext
    ) -> search_pb2.SearchResponse:
        try:
            return search_response(self._engine().search(**search_kwargs(request)))
        except Exception as exc:
            abort(context, exc, self._secrets, "Search")

    def ListEncoders(
        self, request: search_pb2.ListEncodersRequest, context: grpc.ServicerContext
    ) -> search_pb2.ListEncodersResponse:
        try:
            infos = self._engine().list_encoders()
            return search_pb2.ListEncodersResponse(encoders=[encoder_message(i) for i in infos])
        except Exception as exc:
            abort(context, exc, self._secrets, "ListEncoders")

    def GetIndexStats(
        self, request: search_pb2.GetIndexStatsRequest, context: grpc.ServicerContext
    ) -> search_pb2.GetIndexStatsResponse:
        try:
            return stats_response(self._engine().stats())
        except Exception as exc:
            abort(context, exc, self._secrets, "GetIndexStats")

    def GetTile(
        self, request: search_pb2.GetTileRequest, context: grpc.ServicerContext
    ) -> search_pb2.GetTileResponse:
        try:
            tile = self._engine().tile(
                request.point_id,
                view=VIEWS.get(request.view, TileView.TILE),
                size=request.size or None,
                fmt=request.format or "png",
            )
            return tile_response(tile)
        except Exception as exc:
            abort(context, exc, self._secrets, "GetTile")

    def SearchSlides(
        self, request: search_pb2.SearchSlidesRequest, context: grpc.ServicerContext
    ) -> search_pb2.SearchSlidesResponse:
        try:
            return slides_response(self._engine().search_slides(**slides_kwargs(request)))
        except Exception as exc:
            abort(context, exc, self._secrets, "SearchSlides")

    def GetHeatmap(
        self, request: search_pb2.GetHeatmapRequest, context: grpc.ServicerContext
    ) -> search_pb2.GetHeatmapResponse:
        try:
            return heatmap_response(self._engine().heatmap(**heatmap_kwargs(request)))
        except Exception as exc:
            abort(context, exc, self._secrets, "GetHeatmap")

    def CreateSnapshot(
        self, request: search_pb2.CreateSnapshotRequest, context: grpc.ServicerContext
    ) -> Iterator[search_pb2.SnapshotChunk]:
        if not (self._open_snapshots or is_loopback(context.peer())):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, SNAPSHOT_REFUSED)
        try:
            if self._snapshots is None:
                raise NotReadyError("this server was started without snapshots; run histocli serve")
            for index, (snapshot, data) in enumerate(self._snapshots.stream()):
                if index == 0:
                    name, size = snapshot.path.name, snapshot.size_bytes
                    yield search_pb2.SnapshotChunk(name=name, size=size, data=data)
                else:
                    yield search_pb2.SnapshotChunk(data=data)
        except Exception as exc:
            abort(context, exc, self._secrets, "CreateSnapshot")


SNAPSHOT_REFUSED = (
    "snapshots are sent to loopback clients only unless the server has a token (HISTO_GRPC__TOKEN); "
    "run histocli index snapshot on the server's machine, or set a token"
)


def is_loopback(peer: str) -> bool:
    """Whether a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, ``unix:...``)
    is this machine."""
    return peer.startswith(("ipv4:127.", "ipv6:[::1]", "unix:"))


__all__ = ["SERVICE_NAME", "SearchServicer"]
