"""``SearchClient``: a small Python client of the gRPC search service (``histocli serve``).

It returns the same plain dataclasses as the in-process engine (``histo.search``), so code can
switch between ``SearchEngine`` and ``SearchClient`` without changes, and it raises histo errors,
never ``grpc.RpcError``: a failure the server raised on purpose comes back as the same class
(``UnknownNameError``, ``ImageDecodeError``, ``NotFoundError``, ``StoreUnavailableError``, ...)
with the server's message; transport failures become ``ServiceError`` subclasses. Every error
carries the gRPC status name in ``.grpc_code``.

    with SearchClient("127.0.0.1:50051", token=...) as client:
        result = client.search(image=Path("query.png").read_bytes(), encoder="nnclr", top_k=5)
        for hit in result.hits:
            print(hit.score, hit.payload["label"])

Payload numbers travel as JSON numbers (doubles); whole numbers are turned back into ``int``, so
payloads compare equal to the store's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2
from pydantic import SecretStr

from histo.data.records import Box
from histo.data.tile_source import TileImage, TileView, check_format, check_size, check_view
from histo.errors import (
    DatasetLayoutError,
    HistoError,
    ImageDecodeError,
    ImageTooLargeError,
    InvalidInputError,
    NoMatchError,
    NotFoundError,
    SourceMissingError,
    StaleVectorsError,
    StoreLockedError,
    StoreUnavailableError,
    UnknownNameError,
    unknown_name,
)
from histo.heatmap import DEFAULT_BEST, Heatmap
from histo.query_image import QueryImage
from histo.rpc.v1 import search_pb2, search_pb2_grpc
from histo.search import (
    DEFAULT_TOP_K,
    EncoderInfo,
    Feedback,
    IndexStats,
    SearchHit,
    SearchResult,
    check_per_image,
    check_top_k,
)
from histo.slide_search import DEFAULT_TILES_PER_SLIDE, SlideHit, SlideMatch, SlideSearchResult
from histo.store.base import SearchFilter

MIB = 1024 * 1024
#: Trailing metadata naming the histo error class of a failed call (see services/search/errors.py).
ERROR_CLASS_KEY = "histo-error"
_KNOWN_ERRORS: dict[str, type[HistoError]] = {
    cls.__name__: cls
    for cls in (
        InvalidInputError,
        DatasetLayoutError,
        ImageDecodeError,
        ImageTooLargeError,
        UnknownNameError,
        NotFoundError,
        NoMatchError,
        SourceMissingError,
        StaleVectorsError,
        StoreUnavailableError,
        StoreLockedError,
    )
}


class ServiceError(HistoError):
    """The search service failed in a way that is not one of histo's own errors."""

    grpc_code: str = "UNKNOWN"


class ServiceUnavailableError(ServiceError):
    """The server cannot be reached, did not answer in time, or is still loading its encoders."""


class AuthenticationError(ServiceError):
    """The server wants a token (HISTO_GRPC__TOKEN) and the call had none or a wrong one."""


class MessageTooLargeError(ServiceError, InvalidInputError):
    """The request is larger than the server accepts (HISTO_GRPC__MAX_MESSAGE_MB)."""


def _error_from(exc: grpc.RpcError, target: str, timeout: float | None) -> HistoError:
    """The histo error a failed call stands for, with the server's message."""
    code: grpc.StatusCode = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or code.name
    trailers = dict(exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else {}
    known = _KNOWN_ERRORS.get(str(trailers.get(ERROR_CLASS_KEY, "")))
    error: HistoError
    if known is not None:
        error = known(details)
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        error = AuthenticationError(f"the search server at {target} refused the call: {details}")
    elif code == grpc.StatusCode.UNAVAILABLE:
        error = ServiceUnavailableError(
            f"the search server at {target} is unavailable: {details}; is `histocli serve` running there?"
        )
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        error = ServiceUnavailableError(f"the search server at {target} did not answer within {timeout} s")
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        error = MessageTooLargeError(
            f"{details}; send a smaller image or raise HISTO_GRPC__MAX_MESSAGE_MB on the server"
        )
    elif code == grpc.StatusCode.INVALID_ARGUMENT:
        error = InvalidInputError(details)
    elif code == grpc.StatusCode.NOT_FOUND:
        error = NotFoundError(details)
    else:
        error = ServiceError(f"the search server at {target} failed: {code.name}: {details}")
    error.grpc_code = code.name  # type: ignore[attr-defined]
    return error


def payload_from(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A payload Struct as a dict, whole numbers back as ints (JSON numbers are doubles)."""
    return {key: _restore(value) for key, value in json_format.MessageToDict(struct).items()}


def _restore(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_restore(v) for v in value]
    if isinstance(value, dict):
        return {k: _restore(v) for k, v in value.items()}
    return value


def filter_message(flt: SearchFilter | None) -> search_pb2.Filter:
    flt = flt or SearchFilter()
    return search_pb2.Filter(
        dataset=flt.dataset or "",
        labels=list(flt.labels),
        split=flt.split or "",
        exclude_image_ids=list(flt.exclude_image_ids),
        exclude_slide_ids=list(flt.exclude_slide_ids),
        exclude_patient_ids=list(flt.exclude_patient_ids),
    )


def query_image_message(shown: QueryImage | None) -> search_pb2.QueryImage | None:
    """How a query image was searched, as its message (None for other queries)."""
    if shown is None:
        return None
    fields = dataclasses.asdict(shown)
    return search_pb2.QueryImage(**{k: v for k, v in fields.items() if v is not None})


def query_image_from(response: Any) -> QueryImage | None:
    """The ``QueryImage`` of a search response, when the query was an image."""
    if not response.HasField("query_image"):
        return None
    m = response.query_image
    mpp = m.mpp if m.HasField("mpp") else None
    return QueryImage(m.width, m.height, m.grid_tiles, m.tissue_tiles, m.searched, mpp, m.mpp_source)


def check_target(target: object) -> str:
    """A server address as ``HOST:PORT`` (``[::1]:PORT`` for IPv6, or ``unix:PATH``); without a
    port gRPC would dial port 443 and fail without saying so."""
    if not isinstance(target, str) or not target.strip():
        raise InvalidInputError(f"the server address must be HOST:PORT, got {target!r}")
    target = target.strip()
    if target.startswith("unix:"):
        return target
    host, colon, port = target.rpartition(":")
    if not colon or not host or (host.endswith(":") and not host.startswith("[")):
        bare = target.strip("[]")
        example = f"[{bare}]:50051" if ":" in bare else f"{bare}:50051"
        raise InvalidInputError(
            f"the server address {target!r} has no port; give HOST:PORT, e.g. {example} "
            "(histocli serve prints the address it listens on)"
        )
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidInputError(
            f"the server address {target!r} has no valid port (1 to 65535); give HOST:PORT"
        )
    return target


class SearchClient:
    """A connection to a search server at ``target`` (``host:port``).

    ``token``: sent as ``authorization: Bearer <token>`` on every call. ``tls_ca``: a PEM file (or
    its bytes) of the CA that signed the server's certificate, or the self-signed certificate
    itself; the channel is plaintext without it. ``timeout``: seconds per call.
    """

    def __init__(
        self,
        target: str,
        token: str | SecretStr | None = None,
        tls_ca: Path | bytes | None = None,
        *,
        timeout: float | None = 60.0,
        max_message_mb: int = 256,
        server_name: str | None = None,
    ) -> None:
        self.target = check_target(target)
        self.timeout = timeout
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {secret}"),) if secret else ()
        )
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", -1),  # the server's limit decides, and says so
            ("grpc.max_receive_message_length", max_message_mb * MIB),
        ]
        if tls_ca is None:
            self._channel = grpc.insecure_channel(self.target, options=options)
        else:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            credentials = grpc.ssl_channel_credentials(root_certificates=_read_pem(tls_ca))
            self._channel = grpc.secure_channel(self.target, credentials, options=options)
        self._stub = search_pb2_grpc.SearchServiceStub(self._channel)

    # -- calls -----------------------------------------------------------------------------------

    def search(
        self,
        image: bytes | Path | None = None,
        point_id: str | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
        *,
        encoder: str | None = None,
        encoders: Sequence[str] | None = None,
        fusion: str = "rrf",
        feedback: Feedback | None = None,
        diversity: float | None = None,
        top_k: int = DEFAULT_TOP_K,
        filter: SearchFilter | None = None,
        per_image: int | None = None,
        include_same_image: bool = False,
        mpp: float | None = None,
        exact: bool = False,
    ) -> SearchResult:
        """Like ``SearchEngine.search``; ``image`` may also be a file path, read here."""
        if fusion not in FUSION_VALUES:
            raise unknown_name("fusion", fusion, list(FUSION_VALUES))
        if isinstance(encoders, str):
            raise InvalidInputError(f"encoders must be a list of names, got the string {encoders!r}")
        request = search_pb2.SearchRequest(
            encoder=encoder or "",
            encoders=list(encoders or ()),
            fusion=FUSION_VALUES[fusion],
            diversity=diversity,
            top_k=check_top_k(top_k),
            filter=filter_message(filter),
            include_same_image=include_same_image,
            mpp=mpp or 0.0,
            exact=exact,
        )
        given = [
            n for n, v in (("image", image), ("point_id", point_id), ("vector", vector)) if v is not None
        ]
        if len(given) > 1:
            raise InvalidInputError(f"give exactly one query: an image, a point id or a vector (got {given})")
        if isinstance(image, Path):
            image = _read_image(image)
        if image is not None and not isinstance(image, bytes | bytearray | memoryview):
            raise InvalidInputError(f"image must be the file's bytes or a Path, got {type(image).__name__}")
        if image is not None:
            request.image = bytes(image)
        elif point_id is not None:
            request.point_id = point_id
        elif vector is not None:
            request.vector.values.extend(float(x) for x in np.asarray(vector, dtype=np.float64).ravel())
        if per_image is not None:
            request.grouping.per_image = check_per_image(per_image) or 1
        if feedback is not None:
            request.feedback.CopyFrom(feedback_message(feedback))
        response = self._call(self._stub.Search, request)
        return SearchResult(
            hits=[SearchHit(*_hit_fields(h), found_by=tuple(h.found_by)) for h in response.hits],
            encoder=response.encoder,
            took_ms=response.took_ms,
            query_boxes=[Box(b.x, b.y, b.w, b.h) for b in response.query_boxes],
            encoders=list(response.encoders),
            fusion=response.fusion or None,
            query_image=query_image_from(response),
        )

    def list_encoders(self) -> list[EncoderInfo]:
        response = self._call(self._stub.ListEncoders, search_pb2.ListEncodersRequest())
        return [
            EncoderInfo(
                name=e.name,
                kind=e.kind,
                method=e.method,
                architecture=e.architecture,
                dim=e.dim,
                input_size=e.input_size,
                orientation_pooling=e.orientation_pooling,
                data=payload_from(e.data),
                training=payload_from(e.training),
                points=e.points,
                is_default=e.is_default,
            )
            for e in response.encoders
        ]

    def stats(self) -> IndexStats:
        r = self._call(self._stub.GetIndexStats, search_pb2.GetIndexStatsRequest())
        return IndexStats(
            collection=r.collection,
            points=r.points,
            vectors={name: {"dim": v.dim, "points": v.points} for name, v in sorted(r.vectors.items())},
            datasets={name: d.points for name, d in sorted(r.datasets.items())},
            labels={name: dict(sorted(d.labels.items())) for name, d in sorted(r.datasets.items())},
            encoders=sorted(r.searchable_encoders),
        )

    def tile(
        self,
        point_id: str,
        *,
        view: TileView | str = TileView.TILE,
        size: int | None = None,
        fmt: str = "png",
    ) -> TileImage:
        """Like ``SearchEngine.tile``: the tile's pixels, or its source image with the box drawn."""
        request = search_pb2.GetTileRequest(
            point_id=point_id,
            size=check_size(size) or 0,
            view=search_pb2.GetTileRequest.SOURCE
            if check_view(view) is TileView.SOURCE
            else search_pb2.GetTileRequest.TILE,
            format=check_format(fmt),
        )
        r = self._call(self._stub.GetTile, request)
        return TileImage(r.image, r.media_type, r.width, r.height, Box(r.box.x, r.box.y, r.box.w, r.box.h))

    def search_slides(
        self,
        *,
        image: bytes | Path | None = None,
        slide_id: str | None = None,
        encoder: str | None = None,
        top_k: int = DEFAULT_TOP_K,
        filter: SearchFilter | None = None,
        tiles_per_slide: int = DEFAULT_TILES_PER_SLIDE,
        mpp: float | None = None,
        exact: bool = False,
    ) -> SlideSearchResult:
        """Like ``SearchEngine.search_slides``; ``image`` may also be a file path, read here."""
        request = search_pb2.SearchSlidesRequest(
            encoder=encoder or "",
            top_k=check_top_k(top_k),
            filter=filter_message(filter),
            tiles_per_slide=tiles_per_slide,
            mpp=mpp or 0.0,
            exact=exact,
        )
        if image is not None:
            request.image = _read_image(image) if isinstance(image, Path) else bytes(image)
        if slide_id is not None:
            request.slide_id = slide_id
        r = self._call(self._stub.SearchSlides, request)
        return SlideSearchResult(
            slides=[
                SlideHit(
                    slide_id=s.slide_id,
                    score=float(s.score),
                    dataset=s.dataset or None,
                    label=s.label or None,
                    patient_id=s.patient_id or None,
                    tiles=[SlideMatch(*_hit_fields(t)) for t in s.tiles],
                )
                for s in r.slides
            ],
            encoder=r.encoder,
            took_ms=r.took_ms,
            query_boxes=[Box(b.x, b.y, b.w, b.h) for b in r.query_boxes],
            query_image=query_image_from(r),
        )

    def heatmap(
        self,
        *,
        slide_id: str,
        image: bytes | Path | None = None,
        point_id: str | None = None,
        encoder: str | None = None,
        size: int | None = None,
        best: int = DEFAULT_BEST,
        mpp: float | None = None,
    ) -> Heatmap:
        """Like ``SearchEngine.heatmap``: the slide's thumbnail coloured by similarity, as PNG."""
        request = search_pb2.GetHeatmapRequest(
            slide_id=slide_id, encoder=encoder or "", size=check_size(size) or 0, best=best, mpp=mpp or 0.0
        )
        if image is not None:
            request.image = _read_image(image) if isinstance(image, Path) else bytes(image)
        if point_id is not None:
            request.point_id = point_id
        r = self._call(self._stub.GetHeatmap, request)
        best_boxes = [
            (Box(b.x, b.y, b.w, b.h), float(s)) for b, s in zip(r.best_boxes, r.best_scores, strict=True)
        ]
        return Heatmap(r.image, r.media_type, r.width, r.height, best_boxes)

    def snapshot(self, path: Path, timeout: float | None = None) -> Path:
        """Have the server take a snapshot of the index it owns (``CreateSnapshot``) and write it to
        the file ``path``, which appears only once complete; ``timeout``: seconds for the whole
        transfer (default: none, a large index takes long)."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        expected, written = -1, 0
        try:
            with open(partial, "wb") as out:
                for chunk in self._stub.CreateSnapshot(
                    search_pb2.CreateSnapshotRequest(), timeout=timeout, metadata=self._metadata
                ):
                    expected = chunk.size if expected < 0 else expected
                    written += out.write(chunk.data)
            if written != expected:
                raise ServiceError(
                    f"the search server at {self.target} sent {written} of {expected} bytes of the snapshot; "
                    "try again"
                )
            partial.replace(path)
        except grpc.RpcError as exc:
            raise _error_from(exc, self.target, timeout) from None
        except OSError as exc:
            raise InvalidInputError(f"cannot write the snapshot {path}: {exc.strerror}") from None
        finally:
            partial.unlink(missing_ok=True)
        return path

    def health(self, service: str = "") -> str:
        """The server's health status name for ``service`` ("" = the whole server): SERVING, ..."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        response = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel connects and health says SERVING, or raise after ``timeout``."""
        import time

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self.health() == "SERVING":
                    return
            except HistoError as exc:
                last = exc
            time.sleep(0.05)
        raise ServiceUnavailableError(
            f"the search server at {self.target} was not SERVING within {timeout} s"
            + (f" ({last})" if last else "")
        )

    # -- plumbing --------------------------------------------------------------------------------

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error_from(exc, self.target, self.timeout) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


FUSION_VALUES = {"rrf": search_pb2.FUSION_RRF, "dbsf": search_pb2.FUSION_DBSF}
STRATEGY_VALUES = {
    "best_score": search_pb2.Feedback.BEST_SCORE,
    "sum_scores": search_pb2.Feedback.SUM_SCORES,
    "average_vector": search_pb2.Feedback.AVERAGE_VECTOR,
}


def feedback_message(feedback: Feedback) -> search_pb2.Feedback:
    """The Feedback message of ``feedback`` (the server checks ids and limits)."""
    if not isinstance(feedback, Feedback):
        raise InvalidInputError(f"feedback must be a histo.search.Feedback, got {type(feedback).__name__}")
    if feedback.strategy not in STRATEGY_VALUES:
        raise unknown_name("recommendation strategy", feedback.strategy, list(STRATEGY_VALUES))
    return search_pb2.Feedback(
        like=list(feedback.like),
        unlike=list(feedback.unlike),
        like_images=[bytes(b) for b in feedback.like_images],
        unlike_images=[bytes(b) for b in feedback.unlike_images],
        strategy=STRATEGY_VALUES[feedback.strategy],
    )


def _hit_fields(h: search_pb2.Hit) -> tuple[str, float, dict[str, Any], int | None]:
    """A Hit's id, score, payload and query tile (None when absent)."""
    return h.id, float(h.score), payload_from(h.payload), h.query_tile if h.HasField("query_tile") else None


def _read_pem(source: Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the TLS CA file {source}: {exc.strerror}") from None


def _read_image(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{path}: is a folder; give an image file") from None
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot be read ({exc.strerror})") from None


__all__ = [
    "AuthenticationError",
    "MessageTooLargeError",
    "SearchClient",
    "ServiceError",
    "ServiceUnavailableError",
]
