"""Vector store facade: one ``VectorStore`` protocol, two backends (DESIGN.md §1, §3).

* ``EdgeStore``: the embedded default, a ``qdrant-edge-py`` shard on disk owned by one process.
* ``ServerStore``: a Qdrant server through ``qdrant-client`` (its local mode stands in for tests).

``open_store(url=..., path=...)`` picks one. Backends are imported lazily, so importing this
package does not load either engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from histo.store.base import (
    DEFAULT_COLLECTION,
    FILTER_FIELDS,
    Hit,
    Leg,
    Point,
    Record,
    SearchFilter,
    VectorStore,
)
from histo.store.factory import open_store

if TYPE_CHECKING:
    from histo.store.edge import EdgeStore
    from histo.store.server import ServerStore

__all__ = [
    "DEFAULT_COLLECTION",
    "FILTER_FIELDS",
    "EdgeStore",
    "Hit",
    "Leg",
    "Point",
    "Record",
    "SearchFilter",
    "ServerStore",
    "VectorStore",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name == "EdgeStore":
        from histo.store.edge import EdgeStore

        return EdgeStore
    if name == "ServerStore":
        from histo.store.server import ServerStore

        return ServerStore
    raise AttributeError(f"module 'histo.store' has no attribute {name!r}")
