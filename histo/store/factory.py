"""``open_store``: the one place that picks a backend from plain settings values."""

from __future__ import annotations

import os

from pydantic import SecretStr

from histo.errors import InvalidInputError
from histo.store.base import DEFAULT_COLLECTION, IndexOptions, VectorStore


def open_store(
    *,
    url: str | None = None,
    api_key: str | SecretStr | None = None,
    path: str | os.PathLike[str] | None = None,
    collection: str = DEFAULT_COLLECTION,
    timeout: float = 10.0,
    prefer_grpc: bool = False,
    options: IndexOptions | None = None,
) -> VectorStore:
    """Open the store the settings describe.

    ``url`` set (``HISTO_QDRANT__URL``): a Qdrant server through qdrant-client; ``":memory:"``
    gives qdrant-client's in-memory local mode (tests only). Otherwise the embedded Qdrant Edge
    shard in ``path`` (the caller passes ``settings.index_dir``), owned by this process until
    ``close()``. ``options`` (quantization, ...) shape a collection created through this store.

    Raises ``StoreUnavailableError`` when the server cannot be reached and ``StoreLockedError``
    when another process owns the embedded index.
    """
    if url is not None and url.strip():
        from histo.store.server import ServerStore

        if url.strip() == ":memory:":
            return ServerStore.in_memory(collection, options)
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        return ServerStore.connect(
            url.strip(), key or None, collection, timeout=timeout, prefer_grpc=prefer_grpc, options=options
        )
    if path is None:
        raise InvalidInputError(
            "no vector store configured: give a folder for the embedded index (HISTO_HOME) "
            "or a Qdrant server URL (HISTO_QDRANT__URL)"
        )
    from histo.store.edge import EdgeStore

    return EdgeStore(path, collection, options=options)
