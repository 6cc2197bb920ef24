from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Fusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_RRF: _ClassVar[Fusion]
    FUSION_DBSF: _ClassVar[Fusion]
FUSION_RRF: Fusion
FUSION_DBSF: Fusion

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("dataset", "labels", "split", "exclude_image_ids", "exclude_slide_ids", "exclude_patient_ids")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SLIDE_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_PATIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    split: str
    exclude_image_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_slide_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_patient_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dataset: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., split: _Optional[str] = ..., exclude_image_ids: _Optional[_Iterable[str]] = ..., exclude_slide_ids: _Optional[_Iterable[str]] = ..., exclude_patient_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Grouping(_message.Message):
    __slots__ = ("per_image",)
    PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    per_image: int
    def __init__(self, per_image: _Optional[int] = ...) -> None: ...

class Feedback(_message.Message):
    __slots__ = ("like", "unlike", "like_images", "unlike_images", "strategy")
    class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        AVERAGE_VECTOR: _ClassVar[Feedback.Strategy]
        BEST_SCORE: _ClassVar[Feedback.Strategy]
        SUM_SCORES: _ClassVar[Feedback.Strategy]
    AVERAGE_VECTOR: Feedback.Strategy
    BEST_SCORE: Feedback.Strategy
    SUM_SCORES: Feedback.Strategy
    LIKE_FIELD_NUMBER: _ClassVar[int]
    UNLIKE_FIELD_NUMBER: _ClassVar[int]
    LIKE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    UNLIKE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    like: _containers.RepeatedScalarFieldContainer[str]
    unlike: _containers.RepeatedScalarFieldContainer[str]
    like_images: _containers.RepeatedScalarFieldContainer[bytes]
    unlike_images: _containers.RepeatedScalarFieldContainer[bytes]
    strategy: Feedback.Strategy
    def __init__(self, like: _Optional[_Iterable[str]] = ..., unlike: _Optional[_Iterable[str]] = ..., like_images: _Optional[_Iterable[bytes]] = ..., unlike_images: _Optional[_Iterable[bytes]] = ..., strategy: _Optional[_Union[Feedback.Strategy, str]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("image", "point_id", "vector", "encoder", "top_k", "filter", "grouping", "include_same_image", "mpp", "exact", "encoders", "fusion", "feedback", "diversity")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    POINT_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    GROUPING_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SAME_IMAGE_FIELD_NUMBER: _ClassVar[int]
    MPP_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    ENCODERS_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    point_id: str
    vector: Vector
    encoder: str
    top_k: int
    filter: Filter
    grouping: Grouping
    include_same_image: bool
    mpp: float
    exact: bool
    encoders: _containers.RepeatedScalarFieldContainer[str]
    fusion: Fusion
    feedback: Feedback
    diversity: float
    def __init__(self, image: _Optional[bytes] = ..., point_id: _Optional[str] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., encoder: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., grouping: _Optional[_Union[Grouping, _Mapping]] = ..., include_same_image: _Optional[bool] = ..., mpp: _Optional[float] = ..., exact: _Optional[bool] = ..., encoders: _Optional[_Iterable[str]] = ..., fusion: _Optional[_Union[Fusion, str]] = ..., feedback: _Optional[_Union[Feedback, _Mapping]] = ..., diversity: _Optional[float] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x", "y", "w", "h")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    H_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    w: int
    h: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., w: _Optional[int] = ..., h: _Optional[int] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "payload", "query_tile", "found_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    QUERY_TILE_FIELD_NUMBER: _ClassVar[int]
    FOUND_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    payload: _struct_pb2.Struct
    query_tile: int
    found_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., query_tile: _Optional[int] = ..., found_by: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "encoder", "took_ms", "query_boxes", "encoders", "fusion", "query_image")
    HITS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    QUERY_BOXES_FIELD_NUMBER: _ClassVar[int]
    ENCODERS_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_IMAGE_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    encoder: str
    took_ms: float
    query_boxes: _containers.RepeatedCompositeFieldContainer[Box]
    encoders: _containers.RepeatedScalarFieldContainer[str]
    fusion: str
    query_image: QueryImage
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., encoder: _Optional[str] = ..., took_ms: _Optional[float] = ..., query_boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., encoders: _Optional[_Iterable[str]] = ..., fusion: _Optional[str] = ..., query_image: _Optional[_Union[QueryImage, _Mapping]] = ...) -> None: ...

class QueryImage(_message.Message):
    __slots__ = ("width", "height", "grid_tiles", "tissue_tiles", "searched", "mpp", "mpp_source")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    GRID_TILES_FIELD_NUMBER: _ClassVar[int]
    TISSUE_TILES_FIELD_NUMBER: _ClassVar[int]
    SEARCHED_FIELD_NUMBER: _ClassVar[int]
    MPP_FIELD_NUMBER: _ClassVar[int]
    MPP_SOURCE_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    grid_tiles: int
    tissue_tiles: int
    searched: int
    mpp: float
    mpp_source: str
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., grid_tiles: _Optional[int] = ..., tissue_tiles: _Optional[int] = ..., searched: _Optional[int] = ..., mpp: _Optional[float] = ..., mpp_source: _Optional[str] = ...) -> None: ...

class ListEncodersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EncoderInfo(_message.Message):
    __slots__ = ("name", "kind", "method", "architecture", "dim", "input_size", "orientation_pooling", "trained_on", "data", "training", "points", "is_default")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    ORIENTATION_POOLING_FIELD_NUMBER: _ClassVar[int]
    TRAINED_ON_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    method: str
    architecture: str
    dim: int
    input_size: int
    orientation_pooling: int
    trained_on: str
    data: _struct_pb2.Struct
    training: _struct_pb2.Struct
    points: int
    is_default: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., method: _Optional[str] = ..., architecture: _Optional[str] = ..., dim: _Optional[int] = ..., input_size: _Optional[int] = ..., orientation_pooling: _Optional[int] = ..., trained_on: _Optional[str] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., training: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., points: _Optional[int] = ..., is_default: _Optional[bool] = ...) -> None: ...

class ListEncodersResponse(_message.Message):
    __slots__ = ("encoders",)
    ENCODERS_FIELD_NUMBER: _ClassVar[int]
    encoders: _containers.RepeatedCompositeFieldContainer[EncoderInfo]
    def __init__(self, encoders: _Optional[_Iterable[_Union[EncoderInfo, _Mapping]]] = ...) -> None: ...

class GetIndexStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VectorStats(_message.Message):
    __slots__ = ("dim", "points")
    DIM_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    dim: int
    points: int
    def __init__(self, dim: _Optional[int] = ..., points: _Optional[int] = ...) -> None: ...

class DatasetStats(_message.Message):
    __slots__ = ("points", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    POINTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    points: int
    labels: _containers.ScalarMap[str, int]
    def __init__(self, points: _Optional[int] = ..., labels: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetIndexStatsResponse(_message.Message):
    __slots__ = ("collection", "points", "vectors", "datasets", "searchable_encoders")
    class VectorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: VectorStats
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[VectorStats, _Mapping]] = ...) -> None: ...
    class DatasetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: DatasetStats
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[DatasetStats, _Mapping]] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    SEARCHABLE_ENCODERS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    points: int
    vectors: _containers.MessageMap[str, VectorStats]
    datasets: _containers.MessageMap[str, DatasetStats]
    searchable_encoders: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., points: _Optional[int] = ..., vectors: _Optional[_Mapping[str, VectorStats]] = ..., datasets: _Optional[_Mapping[str, DatasetStats]] = ..., searchable_encoders: _Optional[_Iterable[str]] = ...) -> None: ...

class GetTileRequest(_message.Message):
    __slots__ = ("point_id", "size", "view", "format")
    class View(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TILE: _ClassVar[GetTileRequest.View]
        SOURCE: _ClassVar[GetTileRequest.View]
    TILE: GetTileRequest.View
    SOURCE: GetTileRequest.View
    POINT_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    point_id: str
    size: int
    view: GetTileRequest.View
    format: str
    def __init__(self, point_id: _Optional[str] = ..., size: _Optional[int] = ..., view: _Optional[_Union[GetTileRequest.View, str]] = ..., format: _Optional[str] = ...) -> None: ...

class GetTileResponse(_message.Message):
    __slots__ = ("image", "media_type", "width", "height", "box")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    media_type: str
    width: int
    height: int
    box: Box
    def __init__(self, image: _Optional[bytes] = ..., media_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., box: _Optional[_Union[Box, _Mapping]] = ...) -> None: ...

class SearchSlidesRequest(_message.Message):
    __slots__ = ("image", "slide_id", "encoder", "top_k", "filter", "tiles_per_slide", "mpp", "exact")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SLIDE_ID_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    TILES_PER_SLIDE_FIELD_NUMBER: _ClassVar[int]
    MPP_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    slide_id: str
    encoder: str
    top_k: int
    filter: Filter
    tiles_per_slide: int
    mpp: float
    exact: bool
    def __init__(self, image: _Optional[bytes] = ..., slide_id: _Optional[str] = ..., encoder: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., tiles_per_slide: _Optional[int] = ..., mpp: _Optional[float] = ..., exact: _Optional[bool] = ...) -> None: ...

class SlideHit(_message.Message):
    __slots__ = ("slide_id", "score", "dataset", "label", "patient_id", "tiles")
    SLIDE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    slide_id: str
    score: float
    dataset: str
    label: str
    patient_id: str
    tiles: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, slide_id: _Optional[str] = ..., score: _Optional[float] = ..., dataset: _Optional[str] = ..., label: _Optional[str] = ..., patient_id: _Optional[str] = ..., tiles: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class SearchSlidesResponse(_message.Message):
    __slots__ = ("slides", "encoder", "took_ms", "query_boxes", "query_image")
    SLIDES_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    QUERY_BOXES_FIELD_NUMBER: _ClassVar[int]
    QUERY_IMAGE_FIELD_NUMBER: _ClassVar[int]
    slides: _containers.RepeatedCompositeFieldContainer[SlideHit]
    encoder: str
    took_ms: float
    query_boxes: _containers.RepeatedCompositeFieldContainer[Box]
    query_image: QueryImage
    def __init__(self, slides: _Optional[_Iterable[_Union[SlideHit, _Mapping]]] = ..., encoder: _Optional[str] = ..., took_ms: _Optional[float] = ..., query_boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., query_image: _Optional[_Union[QueryImage, _Mapping]] = ...) -> None: ...

class GetHeatmapRequest(_message.Message):
    __slots__ = ("image", "point_id", "slide_id", "encoder", "size", "best", "mpp")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    POINT_ID_FIELD_NUMBER: _ClassVar[int]
    SLIDE_ID_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    MPP_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    point_id: str
    slide_id: str
    encoder: str
    size: int
    best: int
    mpp: float
    def __init__(self, image: _Optional[bytes] = ..., point_id: _Optional[str] = ..., slide_id: _Optional[str] = ..., encoder: _Optional[str] = ..., size: _Optional[int] = ..., best: _Optional[int] = ..., mpp: _Optional[float] = ...) -> None: ...

class GetHeatmapResponse(_message.Message):
    __slots__ = ("image", "media_type", "width", "height", "best_boxes", "best_scores")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BEST_BOXES_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORES_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    media_type: str
    width: int
    height: int
    best_boxes: _containers.RepeatedCompositeFieldContainer[Box]
    best_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, image: _Optional[bytes] = ..., media_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., best_boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., best_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class CreateSnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("name", "size", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    data: bytes
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
