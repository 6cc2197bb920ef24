"""The query engine: image bytes, a point id or a raw vector in; ranked, filtered tiles out.

Backend-agnostic (any ``VectorStore``) and transport-agnostic: ``histocli search`` calls it
in-process, the gRPC servicer (``services/search``) translates messages to and from it, and both
therefore return the same hits for the same query.

Rules it implements (the proto comments in ``proto/histo/rpc/v1/search.proto`` say the same):

* **Searchable encoders** are those that are both a loaded artifact and a named vector of the same
  dimension in the index. Encoders are loaded once, when the engine is built, and warmed up with
  one forward pass, so the first query is not slower than the others.
* **Query by point id**: search with the point's stored vector; the point itself is never returned
  and, unless ``include_same_image``, neither is any other tile of its image (a user usually wants
  *other* images like this one; neighbouring tiles of one image would crowd them out).
* **Query image**: it is cut exactly as ingestion cuts images (``histo.data.tiling.grid_boxes``:
  a grid of tile-size squares at the tiling stride, remainder strips dropped, a side shorter than
  a tile taken whole, every tile resized to the tile size; an image with a side under
  ``histo.data.tiling.MIN_IMAGE_SIDE`` (16) px is refused, as ingestion refuses it); boxes without
  tissue by the ingestion test are dropped, and when more than ``max_query_tiles`` hold tissue
  they are spread evenly over the whole image (``histo.query_image``). An image with no tissue,
  or smaller than a tile with less tissue than a tile holds, is refused with a reason; the result
  says how many tiles of how many were searched and the query's µm/px (``SearchResult.query_image``).
  Each query tile is searched separately with the same filter and the lists are combined by
  **max similarity**: an indexed tile scores its best cosine similarity against any query tile,
  appears once, and records that query tile (``SearchHit.query_tile``). Per-tile top-k lists
  suffice for this to be exact: a tile among the true top k by max score, reaching its max at
  query tile t, is outranked in t's list only by tiles whose max is higher still, so at most k-1
  of them, so it is in t's top k.
* **Filters that match nothing** are never an empty answer without a word: a data set, label or
  split the index does not hold is ``NoMatchError`` naming it (with what there is and a near miss,
  ``histo.query_checks``), and so is a search that finds nothing because the encoder has no
  vectors there or every tile was excluded.
* **Which encoders** (``histo.encoder_choice``): one whose vectors in the index another artifact
  of its name made (retrained after ingestion) is not searched (``StaleVectorsError``), unless
  ``stale="warn"``; a query that names none gets the first, in order of preference, of those with
  vectors for the tiles its filter keeps.
* **Grouping** (``per_image``): each image keeps its best ``per_image`` hits, then the top k are
  cut. Candidates are fetched in widening rounds (x4), excluding images already full through the
  store filter, until the k-th kept score is at least every unfetched candidate's possible score
  (the last score of every list that came back full), or ``MAX_CANDIDATES`` per query tile.
* **Several encoders** (``encoders``): each embeds the query once; per query tile the store fuses
  each encoder's list (its ``max(100, 10 k)`` best, a fixed depth, so fused scores do not move
  as grouping widens the cut) by RRF or DBSF (``histo.store.base.StoreBase.query``), and every
  hit names the encoders whose list held it. Tiles are then combined by max score as above.
* **Feedback** (``Feedback``): the query's vectors (every query tile) and the liked tiles' are the
  positives, the unliked ones the negatives, of one recommendation query in the store; the example
  tiles are never returned. **Diversity**: MMR in the store, one encoder, no feedback or grouping.
* Scores are rounded to float32, the precision of the engine and of the wire format.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from histo.data.images import DEFAULT_MAX_PIXELS, load_rgb
from histo.data.records import Box
from histo.data.tile_source import TileImage, TileSource, TileView, check_size
from histo.data.tiling import TilingConfig, check_tileable
from histo.embed_batcher import Batching, EmbedBatcher
from histo.encoder_choice import EncoderChoice, unknown_encoder
from histo.errors import InvalidInputError, NotFoundError, unknown_name
from histo.heatmap import DEFAULT_BEST, DEFAULT_SIZE, Heatmap, render_heatmap, tile_similarities
from histo.query_checks import DEFAULT_TTL_S, Vocabulary, explain_empty, kept_only
from histo.query_image import QueryImage, query_tiles, resolve_mpp
from histo.slide_search import DEFAULT_TILES_PER_SLIDE, SlideSearchResult, rank_slides, slide_mosaic
from histo.store.base import (
    DEFAULT_STRATEGY,
    FUSION_DEPTH,
    FUSIONS,
    STRATEGIES,
    Leg,
    SearchFilter,
    VectorStore,
    canonical_id,
)

if TYPE_CHECKING:  # torch is imported only when encoders are loaded
    from histo.embedding import Embedder, TileEmbedder
    from histo.encoders.artifact import ArtifactMeta
    from histo.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 10
MAX_TOP_K = 1000
MAX_QUERY_TILES = 64
MAX_TILES_PER_SLIDE = 20
#: The most like / unlike examples (ids and images) one feedback query takes.
MAX_EXAMPLES = 64
#: The most candidates fetched per query tile when grouping needs to look deeper.
MAX_CANDIDATES = 10_000


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One ranked tile: the store's id, score and payload, plus, for image queries, the index into
    ``SearchResult.query_boxes`` of the query tile it matched best."""

    id: str
    score: float
    payload: dict[str, Any]
    query_tile: int | None = None
    #: The encoders whose candidate list held this tile (with one encoder, that one).
    found_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Hits best first, the encoder(s) used, time taken and, for image queries, the query tiles.

    ``encoder`` is the one encoder's name, or the fused encoders' names joined by ``+``."""

    hits: list[SearchHit]
    encoder: str
    took_ms: float
    query_boxes: list[Box] = field(default_factory=list)
    encoders: list[str] = field(default_factory=list)
    #: "rrf" or "dbsf" when several encoders were fused, else None.
    fusion: str | None = None
    #: For an image query: how it was searched (tiles of how many, how chosen, its µm/px).
    query_image: QueryImage | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what ``histocli search --json`` prints)."""
        return {
            "encoder": self.encoder,
            "encoders": self.encoders or [self.encoder],
            "fusion": self.fusion,
            "took_ms": round(self.took_ms, 3),
            "query_image": self.query_image.as_dict() if self.query_image else None,
            "query_boxes": [dataclasses.asdict(b) for b in self.query_boxes],
            "hits": [
                {"id": h.id, "score": h.score, "payload": h.payload, "found_by": list(h.found_by)}
                | ({} if h.query_tile is None else {"query_tile": h.query_tile})
                for h in self.hits
            ],
        }


@dataclass(frozen=True, slots=True)
class Feedback:
    """Relevance feedback: "more like these, less like those". Liked and unliked tiles by point
    id, and uploaded example images (tiled and embedded as a query image is), become the positive
    and negative examples of the store's recommendation query; the query itself, if any, is one
    more positive. ``strategy``: see ``histo.store.base.STRATEGIES``. The default,
    ``average_vector`` (Rocchio: nearest to 2 * mean(positives) - mean(negatives)), gave the best
    P@10 after a simulated round for every encoder on both synthetic sets (``histocli evaluate
    --feedback``; README) and is one plain nearest query, the fastest; ``best_score`` keeps
    positives of several looks apart (a tile ranks by its most similar positive) where an
    average would blur them."""

    like: tuple[str, ...] = ()
    unlike: tuple[str, ...] = ()
    like_images: tuple[bytes, ...] = ()
    unlike_images: tuple[bytes, ...] = ()
    strategy: str = DEFAULT_STRATEGY

    @property
    def examples(self) -> int:
        return len(self.like) + len(self.unlike) + len(self.like_images) + len(self.unlike_images)

    @property
    def has_positives(self) -> bool:
        return bool(self.like or self.like_images)


@dataclass(frozen=True, slots=True)
class EncoderInfo:
    """A searchable encoder as ``ListEncoders`` describes it."""

    name: str
    kind: str
    method: str
    architecture: str
    dim: int
    input_size: int
    orientation_pooling: int
    data: dict[str, Any]
    training: dict[str, Any]
    points: int
    is_default: bool = False

    @property
    def trained_on(self) -> str:
        """One line: the training data set and its size, or '-' for an untrained baseline."""
        dataset = self.data.get("dataset")
        if not dataset:
            return "-"
        tiles = self.data.get("tiles")
        return f"{dataset} ({tiles} tiles)" if tiles is not None else str(dataset)

    @classmethod
    def from_meta(cls, name: str, meta: ArtifactMeta, points: int, is_default: bool) -> EncoderInfo:
        return cls(
            name=name,
            kind=meta.kind,
            method=meta.method,
            architecture=meta.architecture,
            dim=meta.embedding_dim,
            input_size=meta.input_size,
            orientation_pooling=meta.orientation_pooling,
            data=dict(meta.data),
            training=dict(meta.training),
            points=points,
            is_default=is_default,
        )


@dataclass(frozen=True, slots=True)
class IndexStats:
    """What the index holds; ``vectors`` maps encoder -> {"dim", "points"} as ``VectorStore.stats``."""

    collection: str
    points: int
    vectors: dict[str, dict[str, int]]
    datasets: dict[str, int]
    labels: dict[str, dict[str, int]]
    encoders: list[str]

    @classmethod
    def from_store(cls, figures: Mapping[str, Any], encoders: Iterable[str]) -> IndexStats:
        return cls(
            collection=str(figures.get("collection", "")),
            points=int(figures.get("points", 0)),
            vectors={
                name: {"dim": int(v["dim"]), "points": int(v["points"])}
                for name, v in (figures.get("vectors") or {}).items()
            },
            datasets={k: int(v) for k, v in (figures.get("datasets") or {}).items()},
            labels={
                d: {label: int(n) for label, n in per.items()}
                for d, per in (figures.get("labels") or {}).items()
            },
            encoders=sorted(encoders),
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------
# Which encoders can be searched
# ------------------------------------------------------------------------------------------------


def searchable_artifacts(store: VectorStore, encoders_dir: Path) -> dict[str, tuple[Path, ArtifactMeta]]:
    """Artifacts under ``encoders_dir`` that are also a named vector of the same dimension in the
    store, by name (the folder name, which is the vector name). Reads metadata only."""
    from histo.encoders.artifact import list_artifacts

    vectors = store.vectors()
    found: dict[str, tuple[Path, ArtifactMeta]] = {}
    for folder, meta in list_artifacts(Path(encoders_dir)):
        dim = vectors.get(folder.name)
        if dim is None:
            continue
        if dim != meta.embedding_dim:
            log.warning(
                "encoder %s makes %d-d vectors but the index holds %d-d ones under that name; not searchable",
                folder.name,
                meta.embedding_dim,
                dim,
            )
            continue
        found[folder.name] = (folder, meta)
    return found


# ------------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------------


class SearchEngine:
    """Search one store with a fixed set of encoders (loaded once, at construction).

    ``embedders`` maps vector name -> ``Embedder``; names that are not a named vector of the same
    dimension in ``store`` are left out (``skipped`` says why). Thread-safe as far as the store and
    the encoders are (both are: ``EdgeStore`` serialises calls, inference mutates nothing).
    """

    def __init__(
        self,
        store: VectorStore,
        embedders: Mapping[str, Embedder],
        *,
        tiling: TilingConfig | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_query_tiles: int = MAX_QUERY_TILES,
        default: str | None = None,
        warm_up: bool = True,
        tiles: TileSource | None = None,
        batching: Batching | None = None,
        stale: str = "refuse",
        checks_ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        if max_query_tiles < 1:
            raise InvalidInputError(f"max_query_tiles must be at least 1, got {max_query_tiles}")
        self.store = store
        self.tiling = tiling or TilingConfig()
        self.max_pixels = max_pixels
        self.max_query_tiles = max_query_tiles
        self.tiles = tiles or TileSource(max_pixels=max_pixels)
        vectors = store.vectors()
        self.skipped: dict[str, str] = {}
        self._embedders: dict[str, TileEmbedder] = {}
        for name, embedder in embedders.items():
            if name not in vectors:
                self.skipped[name] = f"the index {store.description} has no {name!r} vectors"
            elif vectors[name] != embedder.dim:
                self.skipped[name] = (
                    f"it makes {embedder.dim}-d vectors, the index holds {vectors[name]}-d ones"
                )
            elif batching is not None:  # a server: embedding on its own thread, queries batched
                self._embedders[name] = EmbedBatcher(embedder, batching)
            else:
                self._embedders[name] = embedder
        for name, why in self.skipped.items():
            log.warning("encoder %s is not searchable: %s", name, why)
        self._vocabulary = Vocabulary(store, checks_ttl_s)
        self._choice = EncoderChoice(
            store,
            {name: e.meta for name, e in self._embedders.items()},
            {name: e.digest for name, e in self._embedders.items()},
            policy=stale,
            ttl_s=checks_ttl_s,
            default=default,
        )
        if warm_up:
            self.warm_up()

    @classmethod
    def load(
        cls,
        store: VectorStore,
        encoders_dir: Path,
        names: Iterable[str] | None = None,
        *,
        device: str | None = None,
        **kwargs: Any,
    ) -> SearchEngine:
        """Load the searchable artifacts under ``encoders_dir`` (all of them, or only ``names``)."""
        from histo.embedding import Embedder

        available = searchable_artifacts(store, encoders_dir)
        if names is None:
            chosen = list(available)
        else:
            chosen = list(dict.fromkeys(names))
            for name in chosen:
                if name not in available:
                    raise unknown_encoder(name, list(available), store)
        embedders = {name: Embedder.from_artifact(available[name][0], device=device) for name in chosen}
        return cls(store, embedders, **kwargs)

    @classmethod
    def from_settings(
        cls, store: VectorStore, settings: Settings, names: Iterable[str] | None = None, **kwargs: Any
    ) -> SearchEngine:
        """``load`` with the encoders folder, tiling and pixel limit of ``settings``."""
        tiling = TilingConfig(
            tile_size=settings.tiling.tile_size,
            stride=settings.tiling.stride,
            target_mpp=settings.tiling.target_mpp,
            min_tissue=settings.tiling.min_tissue,
        )
        kwargs.setdefault("tiling", tiling)
        kwargs.setdefault("max_pixels", settings.images.max_pixels)
        kwargs.setdefault("tiles", TileSource(settings.data_roots, max_pixels=settings.images.max_pixels))
        return cls.load(store, settings.encoders_dir, names, **kwargs)

    # -- introspection ---------------------------------------------------------------------------

    @property
    def encoders(self) -> list[str]:
        """Names of the searchable encoders (loaded, and not refused for vectors of another artifact)."""
        return self._choice.searchable

    @property
    def default(self) -> str | None:
        """The encoder a query without a filter uses when it names none."""
        return self._choice.default

    @property
    def stale(self) -> dict[str, str]:
        """Encoder -> why it is not searched: the index holds vectors another artifact made."""
        return dict(self._choice.stale)

    def embedder(self, name: str | None = None) -> TileEmbedder:
        return self._embedders[self._encoder(name)]

    def close(self) -> None:
        """Stop the embedding workers (``batching``); the store is the caller's to close."""
        for embedder in self._embedders.values():
            if isinstance(embedder, EmbedBatcher):
                embedder.close()

    def warm_up(self) -> None:
        """One forward pass per encoder (the first one allocates and is slow)."""
        size = self.tiling.tile_size
        blank = np.full((1, size, size, 3), 200, dtype=np.uint8)
        for embedder in self._embedders.values():
            embedder.embed(blank)

    def list_encoders(self) -> list[EncoderInfo]:
        """The searchable encoders with what they were trained on and how many tiles each covers."""
        counts = (self.store.stats().get("vectors") or {}) if self._embedders else {}
        return [
            EncoderInfo.from_meta(
                name,
                self._embedders[name].meta,
                int((counts.get(name) or {}).get("points", 0)),
                name == self.default,
            )
            for name in self.encoders
        ]

    def stats(self) -> IndexStats:
        return IndexStats.from_store(self.store.stats(), self.encoders)

    # -- search ----------------------------------------------------------------------------------

    def search(
        self,
        *,
        image: bytes | None = None,
        point_id: str | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
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
        """The ``top_k`` tiles most similar to at most one of ``image`` (file bytes), ``point_id``
        or ``vector``, best first, among those ``filter`` lets through; see the module docstring.

        ``encoders``: several encoders, each embedding the query once, fused in the store by
        ``fusion`` (RRF or DBSF). ``feedback``: liked and unliked examples, through the store's
        recommendation query (a liked example may stand in for the query). ``diversity``: MMR
        re-ranking in the store, 0 (plain ranking) to 1 (most diverse)."""
        started = time.perf_counter()
        fb = check_feedback(feedback)
        given = [
            k for k, v in (("image", image), ("point_id", point_id), ("vector", vector)) if v is not None
        ]
        if len(given) > 1 or not (given or (fb and fb.has_positives)):
            raise InvalidInputError(
                "give exactly one query (an image, a point id or a vector), or liked examples, or both"
                + (f" (got {' and '.join(given)})" if given else "")
            )
        if filter is not None and not isinstance(filter, SearchFilter):
            raise InvalidInputError(f"filter must be a histo.store.SearchFilter, got {type(filter).__name__}")
        flt = filter or SearchFilter()
        names = self._encoders(encoder, encoders, flt)
        if fusion not in FUSIONS:
            raise unknown_name("fusion", fusion, list(FUSIONS))
        diversity = check_diversity(diversity, names, fb, per_image)
        if vector is not None and len(names) > 1:
            raise InvalidInputError("a raw vector belongs to one encoder; give one encoder, or an image")
        k = check_top_k(top_k)
        per_group = check_per_image(per_image)
        self._check_values(flt)
        boxes: list[Box] = []
        shown: QueryImage | None = None
        queries: dict[str, list[Any]] = {name: [] for name in names}
        excluded: list[str] = []
        if image is not None:
            boxes, tiles, shown = self._image_tiles(image, mpp)
            queries = {name: self._embed(name, tiles) for name in names}
        elif point_id is not None:
            pid, queries, own_image = self._stored_vectors(names, point_id)
            excluded.append(pid)
            if own_image and not include_same_image:
                flt = dataclasses.replace(flt, exclude_image_ids=(*flt.exclude_image_ids, own_image))
        elif vector is not None:
            queries = {names[0]: [vector]}
        if fb is not None:
            positives, negatives, ids = self._examples(names, fb, mpp)
            excluded += ids
            requests = [
                tuple(
                    Leg(
                        n,
                        positives=(*queries[n], *positives[n]),
                        negatives=tuple(negatives[n]),
                        strategy=fb.strategy,
                    )
                    for n in names
                )
            ]
        else:
            count = len(queries[names[0]])
            requests = [
                tuple(Leg(n, queries[n][t], diversity=diversity) for n in names) for t in range(count)
            ]
        if excluded:
            flt = dataclasses.replace(flt, exclude_point_ids=(*flt.exclude_point_ids, *excluded))
        tiled = image is not None and fb is None
        hits = self._rank(requests, k, flt, per_group, exact, tiled, fusion)
        if not hits and not kept_only(flt).is_empty:
            raise explain_empty(self.store, flt, names, self.encoders)
        took = (time.perf_counter() - started) * 1000.0
        fused = fusion if len(names) > 1 else None
        return SearchResult(hits, "+".join(names), took, boxes, list(names), fused, shown)

    def search_slides(
        self,
        *,
        image: bytes | None = None,
        slide_id: str | None = None,
        encoder: str | None = None,
        top_k: int = DEFAULT_TOP_K,
        filter: SearchFilter | None = None,
        tiles_per_slide: int = DEFAULT_TILES_PER_SLIDE,
        mpp: float | None = None,
        exact: bool = False,
    ) -> SlideSearchResult:
        """The ``top_k`` indexed slides most like an image (tiled as any image query) or an indexed
        slide (by its mosaic; its own slide and patient excluded), ranked by the rule of
        ``histo.slide_search``; each with its best-matching tiles."""
        started = time.perf_counter()
        if (image is None) == (slide_id is None):
            raise InvalidInputError("give exactly one slide query: an image or an indexed slide id")
        if filter is not None and not isinstance(filter, SearchFilter):
            raise InvalidInputError(f"filter must be a histo.store.SearchFilter, got {type(filter).__name__}")
        name = self._encoder(encoder, filter)
        k = check_top_k(top_k)
        if not isinstance(tiles_per_slide, int) or not 1 <= tiles_per_slide <= MAX_TILES_PER_SLIDE:
            raise InvalidInputError(
                f"tiles_per_slide must be an integer from 1 to {MAX_TILES_PER_SLIDE}, got {tiles_per_slide!r}"
            )
        flt = filter or SearchFilter()
        self._check_values(flt)
        boxes: list[Box] = []
        shown: QueryImage | None = None
        if image is not None:
            queries, boxes, shown = self._embed_image(name, image, mpp)
        else:
            assert slide_id is not None
            queries, payload = slide_mosaic(self.store, name, slide_id)
            patient = payload.get("patient_id")
            flt = dataclasses.replace(
                flt,
                exclude_slide_ids=(*flt.exclude_slide_ids, slide_id),
                exclude_patient_ids=(
                    *flt.exclude_patient_ids,
                    *([patient] if isinstance(patient, str) else []),
                ),
            )
        slides = rank_slides(
            self.store, name, queries, flt, k, tiles_per_slide, exact, tiled=image is not None
        )
        return SlideSearchResult(slides, name, (time.perf_counter() - started) * 1000.0, boxes, shown)

    def heatmap(
        self,
        *,
        slide_id: str,
        image: bytes | None = None,
        point_id: str | None = None,
        encoder: str | None = None,
        size: int | None = None,
        best: int = DEFAULT_BEST,
        mpp: float | None = None,
    ) -> Heatmap:
        """Where in slide (or image) ``slide_id`` a query image or indexed tile matches: its
        thumbnail with each indexed tile coloured by its best similarity to the query
        (``histo.heatmap``); PNG."""
        if (image is None) == (point_id is None):
            raise InvalidInputError("give exactly one heatmap query: an image or a point id")
        name = self._encoder(encoder)
        if not isinstance(best, int) or not 1 <= best <= MAX_TILES_PER_SLIDE:
            raise InvalidInputError(f"best must be an integer from 1 to {MAX_TILES_PER_SLIDE}, got {best!r}")
        if image is not None:
            queries, _, _ = self._embed_image(name, image, mpp)
        else:
            assert point_id is not None
            queries = [self._stored_vector(name, point_id)[1]]
        payloads, scores = tile_similarities(self.store, name, slide_id, queries)
        title = f"{slide_id}: each tile's similarity to the query ({name}); best {best} outlined"
        return render_heatmap(self.tiles, payloads, scores, title, check_size(size) or DEFAULT_SIZE, best)

    def tile(
        self,
        point_id: str,
        *,
        view: TileView | str = TileView.TILE,
        size: int | None = None,
        fmt: str = "png",
    ) -> TileImage:
        """An indexed tile's pixels (or its source image with its box drawn), read from the data
        set's file; found by point id only (``histo.data.tile_source``)."""
        pid = canonical_id(point_id)
        records = self.store.retrieve([pid])
        if not records:
            raise self._missing(pid)
        return self.tiles.render(records[0].payload, view=view, size=size, fmt=fmt, name=f"tile {pid}")

    # -- internals -------------------------------------------------------------------------------

    def _missing(self, pid: str) -> NotFoundError:
        return NotFoundError(
            f"point {pid} is not in the index {self.store.description}; "
            "take ids from a search result (the id column of histocli search)"
        )

    def _encoder(self, name: str | None, flt: SearchFilter | None = None) -> str:
        return self._choice.resolve(name, flt)

    def _encoders(
        self, encoder: str | None, encoders: Sequence[str] | None, flt: SearchFilter | None = None
    ) -> list[str]:
        """The encoders of a query: ``encoders`` (several are fused), else ``encoder``, else the
        default for the query's filter."""
        if encoders is None or not list(encoders):
            return [self._encoder(encoder, flt)]
        if isinstance(encoders, str):
            raise InvalidInputError(f"encoders must be a list of names, got the string {encoders!r}")
        if encoder:
            raise InvalidInputError("give encoder or encoders, not both (encoders=[...] fuses several)")
        return [self._encoder(name) for name in dict.fromkeys(encoders) if name] or [self._encoder(None, flt)]

    def _check_values(self, flt: SearchFilter) -> None:
        """``NoMatchError`` for a data set, label or split the index does not hold."""
        if not kept_only(flt).is_empty:
            self._vocabulary.check(flt)

    def _stored_vector(self, name: str, point_id: str) -> tuple[str, list[float], str | None]:
        pid, vectors, own = self._stored_vectors([name], point_id)
        return pid, vectors[name][0], own

    def _stored_vectors(
        self, names: Sequence[str], point_id: str
    ) -> tuple[str, dict[str, list[Any]], str | None]:
        """A point's id, its vectors of ``names`` (one-element lists, as query tiles) and its image."""
        pid = canonical_id(point_id)
        records = self.store.retrieve([pid], with_vectors=list(names))
        if not records:
            raise self._missing(pid)
        record = records[0]
        for name in names:
            if name not in record.vectors:
                raise NotFoundError(
                    f"point {pid} has no {name!r} vector; search it with another encoder "
                    f"or ingest its data set with {name}"
                )
        own = record.payload.get("image_id")
        return pid, {n: [record.vectors[n]] for n in names}, own if isinstance(own, str) and own else None

    def _examples(
        self, names: Sequence[str], fb: Feedback, mpp: float | None
    ) -> tuple[dict[str, list[Any]], dict[str, list[Any]], list[str]]:
        """Positive and negative example vectors per encoder, and the example ids (excluded from
        the results: the user has seen them)."""
        ids = [*fb.like, *fb.unlike]
        records = {r.id: r for r in self.store.retrieve(ids, with_vectors=list(names))}
        unknown = [i for i in ids if i not in records]
        if unknown:
            raise NotFoundError(
                f"example point(s) {', '.join(unknown[:5])} not in the index {self.store.description}; "
                "take ids from a search result"
            )
        for pid in ids:
            lacking = [n for n in names if n not in records[pid].vectors]
            if lacking:
                raise NotFoundError(f"example point {pid} has no {lacking[0]!r} vector; use another encoder")
        positives: dict[str, list[Any]] = {n: [records[i].vectors[n] for i in fb.like] for n in names}
        negatives: dict[str, list[Any]] = {n: [records[i].vectors[n] for i in fb.unlike] for n in names}
        liked = [t for data in fb.like_images for t in self._image_tiles(data, mpp)[1]]
        tiles = liked + [t for data in fb.unlike_images for t in self._image_tiles(data, mpp)[1]]
        if tiles:  # every example image's tiles in one forward pass per encoder
            for n in names:
                vectors = self._embed(n, tiles)
                positives[n] += vectors[: len(liked)]
                negatives[n] += vectors[len(liked) :]
        return positives, negatives, ids

    def _embed_image(
        self, name: str, data: bytes, mpp: float | None
    ) -> tuple[list[Any], list[Box], QueryImage]:
        boxes, tiles, shown = self._image_tiles(data, mpp)
        return self._embed(name, tiles), boxes, shown

    def _embed(self, name: str, tiles: list[np.ndarray]) -> list[Any]:
        return list(self._embedders[name].embed(np.stack(tiles)))

    def _image_tiles(self, data: bytes, mpp: float | None) -> tuple[list[Box], list[np.ndarray], QueryImage]:
        """An uploaded image's query tiles and how they were chosen (``histo.query_image``), after
        the checks ingestion makes."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInputError(f"the query image must be the file's bytes, got {type(data).__name__}")
        data = bytes(data)
        image = load_rgb(data, self.max_pixels)
        try:
            check_tileable(image.size, "uploaded image")  # what ingestion would refuse is no query
            resolved, source = resolve_mpp(data, mpp, self.tiling.target_mpp)
            return query_tiles(image, self.tiling, resolved, source, self.max_query_tiles)
        finally:
            image.close()

    def query_tiles(self, image: Image.Image, mpp: float | None = None) -> tuple[list[Box], list[np.ndarray]]:
        """The boxes and pixels of the tiles a query image is searched with (module docstring)."""
        source = "given" if mpp is not None else "assumed"
        boxes, tiles, _ = query_tiles(image, self.tiling, mpp, source, self.max_query_tiles)
        return boxes, tiles

    def _rank(
        self,
        requests: list[tuple[Leg, ...]],
        k: int,
        flt: SearchFilter,
        per_image: int | None,
        exact: bool,
        tiled: bool,
        fusion: str,
    ) -> list[SearchHit]:
        """Run each request (one per query tile; its legs one per encoder) through the store and
        combine the lists by max score; with ``per_image``, widen until the grouping is exact."""
        fused = len(requests[0]) > 1
        # a fused list ranks the union of each encoder's `depth` best: fixed, so scores stay put
        depth = min(MAX_CANDIDATES, max(FUSION_DEPTH, 10 * k))
        cap = min(MAX_CANDIDATES, depth * len(requests[0])) if fused else MAX_CANDIDATES
        limit = min(cap, k if per_image is None else max(32, 2 * k))
        full: dict[str, list[SearchHit]] = {}  # images whose best per_image hits are final
        while True:
            if full:
                flt_now = dataclasses.replace(flt, exclude_image_ids=(*flt.exclude_image_ids, *full))
            else:
                flt_now = flt
            lists = [
                self.store.query(legs, limit, flt_now, fusion=fusion, depth=depth, exact=exact)
                for legs in requests
            ]
            best: dict[str, SearchHit] = {}
            for t, hits in enumerate(lists):
                for hit in hits:
                    seen = best.get(hit.id)
                    if seen is None or hit.score > seen.score:
                        score = float(np.float32(hit.score))
                        best[hit.id] = SearchHit(
                            hit.id, score, hit.payload, t if tiled else None, hit.sources
                        )
            ranked = sorted(best.values(), key=_order)
            if per_image is None:
                return ranked[:k]  # exact: see "Query image larger than one tile" above
            groups: dict[str, list[SearchHit]] = {g: list(h) for g, h in full.items()}
            for ranked_hit in ranked:
                members = groups.setdefault(_group_of(ranked_hit), [])
                if len(members) < per_image:
                    members.append(ranked_hit)
            kept = sorted((h for members in groups.values() for h in members), key=_order)[:k]
            # anything not fetched scores at most the last score of a list that came back full
            tails = [float(np.float32(hits[-1].score)) for hits in lists if len(hits) >= limit]
            bound = max(tails, default=None)
            if bound is None or (len(kept) == k and kept[-1].score >= bound) or limit >= cap:
                return kept
            # an image is final once nothing unseen can beat it; fused scores depend on the
            # lists, so there the filter stays and only the cut-off grows
            for group, members in groups.items():
                if (
                    not fused
                    and len(members) >= per_image
                    and members[-1].score >= bound
                    and not group.startswith("point:")
                ):
                    full[group] = members
            limit = min(cap, limit * 4)


def _order(hit: SearchHit) -> tuple[float, str]:
    return (-hit.score, hit.id)


def _group_of(hit: SearchHit) -> str:
    image = hit.payload.get("image_id")
    return image if isinstance(image, str) and image else f"point:{hit.id}"


def check_top_k(top_k: object) -> int:
    """``top_k`` as an int in 1..MAX_TOP_K, else ``InvalidInputError``."""
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or not 1 <= top_k <= MAX_TOP_K:
        raise InvalidInputError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}")
    return int(top_k)


def check_feedback(feedback: Feedback | None) -> Feedback | None:
    """The feedback with ids made canonical, or None when it has no examples; else ``InvalidInputError``."""
    if feedback is None:
        return None
    if not isinstance(feedback, Feedback):
        raise InvalidInputError(f"feedback must be a histo.search.Feedback, got {type(feedback).__name__}")
    if feedback.strategy not in STRATEGIES:
        raise unknown_name("recommendation strategy", feedback.strategy, list(STRATEGIES))
    if feedback.examples > MAX_EXAMPLES:
        raise InvalidInputError(
            f"at most {MAX_EXAMPLES} like / unlike examples per query, got {feedback.examples}; "
            "keep the clearest ones"
        )
    like = tuple(dict.fromkeys(canonical_id(i) for i in feedback.like))
    unlike = tuple(dict.fromkeys(canonical_id(i) for i in feedback.unlike))
    both = set(like) & set(unlike)
    if both:
        raise InvalidInputError(f"point {sorted(both)[0]} is both liked and unliked; keep one")
    checked = dataclasses.replace(feedback, like=like, unlike=unlike)
    return checked if checked.examples else None


def check_diversity(
    diversity: object, names: Sequence[str], feedback: Feedback | None, per_image: int | None
) -> float | None:
    """MMR's diversity in [0, 1] (None: none), for a nearest query of one encoder only."""
    if diversity is None:
        return None
    if isinstance(diversity, bool) or not isinstance(diversity, int | float) or not 0 <= diversity <= 1:
        raise InvalidInputError(f"diversity must be a number from 0 (plain ranking) to 1, got {diversity!r}")
    if len(names) > 1 or feedback is not None:
        raise InvalidInputError(
            "diversity (MMR) re-ranks one encoder's nearest tiles; it cannot be combined with several "
            "encoders or with like / unlike examples"
        )
    if per_image is not None:
        raise InvalidInputError("choose one way to diversify: diversity (MMR) or per_image, not both")
    return float(diversity)


def check_per_image(per_image: object) -> int | None:
    """``per_image`` as a positive int, or None for no grouping, else ``InvalidInputError``."""
    if per_image is None:
        return None
    if isinstance(per_image, bool) or not isinstance(per_image, int | np.integer) or per_image < 1:
        raise InvalidInputError(
            f"per_image must be a positive integer (hits kept per image), got {per_image!r}"
        )
    return int(per_image)


__all__ = [
    "DEFAULT_TOP_K",
    "MAX_CANDIDATES",
    "MAX_EXAMPLES",
    "MAX_QUERY_TILES",
    "MAX_TOP_K",
    "EncoderInfo",
    "Feedback",
    "IndexStats",
    "SearchEngine",
    "SearchHit",
    "SearchResult",
    "check_diversity",
    "check_feedback",
    "check_per_image",
    "check_top_k",
    "searchable_artifacts",
]
