"""One Settings object, read from ``HISTO_*`` environment variables.

Nested values use ``__``: ``HISTO_TILING__TILE_SIZE=256``. ``get_settings()`` is called only at
the entry points (CLI, gRPC service, Celery worker); library code takes plain arguments.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from histo.embed_batcher import Batching
from histo.store.base import DEFAULT_QUANTIZATION, IndexOptions, Quantization


class TilingSettings(BaseModel):
    """How images become tiles; the same values feed ``histo.data.tiling.TilingConfig``."""

    tile_size: int = Field(224, ge=16, le=4096)
    stride: int | None = Field(None, ge=1, description="defaults to tile_size (no overlap)")
    target_mpp: float | None = Field(None, gt=0, description="resample to this µm/px when known")
    min_tissue: float = Field(0.5, ge=0.0, le=1.0)


class ImageSettings(BaseModel):
    """Limits on decoded images: our own bomb limit instead of Pillow's silent default."""

    max_pixels: int = Field(250_000_000, ge=1)


class QdrantSettings(BaseModel):
    """Empty ``url`` means the embedded store under ``HISTO_HOME``; set it for a Qdrant server.
    ``quantization`` and ``payload_m`` shape a collection when it is created (``IndexOptions``)."""

    url: str | None = None
    api_key: SecretStr | None = None
    collection: str = "histo"
    quantization: Quantization = DEFAULT_QUANTIZATION
    #: Candidates rescored with the float vectors, as a multiple of the limit (quantized indexes).
    oversampling: float = Field(2.0, ge=1.0, le=64.0)
    payload_m: int | None = Field(None, ge=1, le=512)

    def index_options(self) -> IndexOptions:
        return IndexOptions(self.quantization, self.oversampling, self.payload_m)


class RedisSettings(BaseModel):
    """Celery broker; a killed worker's batch is redelivered after ``visibility_timeout`` seconds."""

    url: str = "redis://127.0.0.1:6379/0"
    visibility_timeout: int = Field(3600, ge=1)


class GrpcSettings(BaseModel):
    """The search service; ``workers``, ``embed_batch`` and ``embed_wait_ms`` also serve the page's
    in-process engine. Many RPC threads are cheap: one waiting for an upload's embedding idles,
    and enough others stay free for id and vector queries (``histo.embed_batcher``)."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    token: SecretStr | None = None
    max_message_mb: int = Field(32, ge=1, le=1024)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Threads answering calls.
    workers: int = Field(64, ge=1, le=1024)
    #: Most tiles in one forward pass of concurrent image queries; 0 embeds on the calling thread.
    embed_batch: int = Field(32, ge=0, le=4096)
    #: How long the embedding worker waits for more queries to batch with the first.
    embed_wait_ms: float = Field(5.0, ge=0.0, le=1000.0)

    def batching(self) -> Batching | None:
        """How a server embeds queries (``histo.embed_batcher``); None: on the calling thread."""
        if not self.embed_batch:
            return None
        return Batching(self.embed_batch, self.embed_wait_ms)


class WebSettings(BaseModel):
    """``histocli web``: where the page listens and the token that protects ``/api`` when set.
    Upload and pixel limits are the gRPC service's (``grpc.max_message_mb``, ``images.max_pixels``)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: SecretStr | None = None


class LogSettings(BaseModel):
    """How the search service, the page and the workers log: ``text`` lines for people, or ``json``
    (one object per line: time, level, logger, message, request_id) for a log collector."""

    format: Literal["text", "json"] = "text"


class MetricsSettings(BaseModel):
    """Prometheus metrics (``histo.prometheus``). The search service and a worker serve ``/metrics`` on
    a port of their own, 0 = off: a process on a shared host binds nothing it was not asked to, and
    two of them never fight over a default port; docker-compose.yml turns both on. The page serves
    ``/metrics`` on its own port, always."""

    host: str = "127.0.0.1"
    search_port: int = Field(0, ge=0, le=65535)
    worker_port: int = Field(0, ge=0, le=65535)


class Settings(BaseSettings):
    """Everything histo can be configured with; all state lives under ``home``."""

    model_config = SettingsConfigDict(env_prefix="HISTO_", env_nested_delimiter="__", extra="ignore")

    home: Path = Path(".histo")
    tiling: TilingSettings = TilingSettings()
    images: ImageSettings = ImageSettings()
    qdrant: QdrantSettings = QdrantSettings()
    redis: RedisSettings = RedisSettings()
    grpc: GrpcSettings = GrpcSettings()
    web: WebSettings = WebSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    #: Where each data set lives now, when it moved since ingestion (the index records the folder
    #: it was ingested from): ``HISTO_DATA_ROOTS='{"bach": "/data/bach"}'``.
    data_roots: dict[str, Path] = Field(default_factory=dict)

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def encoders_dir(self) -> Path:
        return self.home / "encoders"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; only entry points call this."""
    return Settings()
