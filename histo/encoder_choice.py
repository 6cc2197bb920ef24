"""Which loaded encoders a search may use, and which one a query gets when it names none.

* **Refused encoders.** An encoder whose vectors in the index another artifact of its name made
  (it was retrained or replaced after ingestion) is not searched: ``StaleVectorsError`` with the
  command that re-embeds them (``histo.provenance``); asked again every ``ttl_s`` seconds, since a
  Qdrant server may be written by workers while a service runs. With the policy ``warn`` it is
  searched and the reason logged (``--allow-stale``).
* **The default** is the first, in ``preference_order``, of the searchable encoders that have
  vectors for the tiles the query's filter keeps (an explicit default goes first); the answer is
  kept ``ttl_s`` seconds per filter.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from histo.errors import InvalidInputError, StaleVectorsError, UnknownNameError, unknown_name
from histo.provenance import STALE_POLICIES, stale_reasons
from histo.query_checks import DEFAULT_TTL_S, coverage, kept_only
from histo.store.base import SearchFilter, VectorStore

if TYPE_CHECKING:
    from histo.encoders.artifact import ArtifactMeta

log = logging.getLogger("histo.search")

#: Baselines in the order they are preferred as the default encoder (after any trained SSL encoder).
BASELINE_PREFERENCE = ("imagenet", "random", "colorhist")


def preference_order(metas: Mapping[str, ArtifactMeta]) -> list[str]:
    """The order in which encoders are tried as the default: trained SSL encoders first (in
    alphabetical order: which is best depends on the data, and ``histocli evaluate`` tells), then
    the baselines ImageNet, random init and the colour histogram."""

    def rank(name: str) -> tuple[int, int, str]:
        meta = metas[name]
        if meta.kind != "baseline":
            return (0, 0, name)
        order = BASELINE_PREFERENCE.index(meta.method) if meta.method in BASELINE_PREFERENCE else 99
        return (1, order, name)

    return sorted(metas, key=rank)


def default_encoder(metas: Mapping[str, ArtifactMeta]) -> str | None:
    """The first of ``preference_order``, or None without encoders."""
    order = preference_order(metas)
    return order[0] if order else None


def first_with_vectors(store: VectorStore, order: Sequence[str], flt: SearchFilter | None) -> str | None:
    """The first of ``order`` with vectors for the tiles ``flt`` keeps (its data set, labels and
    split); the first of all when the filter keeps every tile, or when none has any there."""
    if not order:
        return None
    kept = kept_only(flt) if flt is not None else SearchFilter()
    if kept.is_empty:
        return order[0]
    return next((name for name in order if coverage(store, kept, [name])[name] > 0), order[0])


class EncoderChoice:
    """The loaded encoders (name -> artifact metadata and digest) of one engine over one store."""

    def __init__(
        self,
        store: VectorStore,
        metas: Mapping[str, ArtifactMeta],
        digests: Mapping[str, str],
        *,
        policy: str = "refuse",
        ttl_s: float = DEFAULT_TTL_S,
        default: str | None = None,
    ) -> None:
        if policy not in STALE_POLICIES:
            raise unknown_name("policy for vectors of another artifact", policy, list(STALE_POLICIES))
        self.store, self.metas, self.digests = store, dict(metas), dict(digests)
        self.policy, self.ttl_s, self.fixed_default = policy, ttl_s, default
        self.stale: dict[str, str] = {}
        self._reported: dict[str, str] = {}
        self._checked = -math.inf
        self._coverage: dict[tuple[Any, ...], tuple[float, str]] = {}
        self.check(force=True)
        if default is not None and default not in self.metas:
            raise self.unknown(default)

    @property
    def searchable(self) -> list[str]:
        """Loaded encoders that are not refused, by name."""
        return sorted(n for n in self.metas if n not in self.stale)

    @property
    def default(self) -> str | None:
        """The encoder a query without a filter gets when it names none."""
        if self.fixed_default is not None and self.fixed_default not in self.stale:
            return self.fixed_default
        return default_encoder({n: self.metas[n] for n in self.searchable})

    def check(self, force: bool = False) -> None:
        """Which encoders' vectors another artifact made: at most every ``ttl_s`` unless ``force``."""
        now = time.monotonic()
        if not force and now - self._checked < self.ttl_s:
            return
        reasons = stale_reasons(self.store, self.digests)
        # found while serving, or searched anyway: a warning; refused at the start: the runtime that
        # built the engine says so itself (histocli serve's "not serving" line, a command's error)
        level = logging.DEBUG if force and self.policy == "refuse" else logging.WARNING
        for name, why in reasons.items():
            if self._reported.get(name) != why:
                log.log(level, "encoder %s: %s", name, why)
        self._reported = reasons
        self.stale = reasons if self.policy == "refuse" else {}
        self._checked = now

    def resolve(self, name: str | None, flt: SearchFilter | None = None) -> str:
        """``name`` if it may search, else why not; without a name, the default for ``flt``."""
        self.check()
        if not name:
            return self.default_for(flt)
        if name in self.stale:
            raise StaleVectorsError(
                f"not searching with {name}: {self.stale[name]} (or search anyway, knowingly: --allow-stale)"
            )
        if name not in self.metas:
            raise self.unknown(name)
        return name

    def default_for(self, flt: SearchFilter | None) -> str:
        """The first searchable encoder, in order of preference, with vectors for the tiles
        ``flt`` keeps (the plain default when the filter keeps every tile or none has any)."""
        fallback = self.default
        if fallback is None:
            why = "; ".join(f"{n}: {r}" for n, r in self.stale.items())
            raise InvalidInputError(
                f"no encoder is searchable: {why}"
                if why
                else f"no encoder is searchable: none of the loaded artifacts is a named vector of the "
                f"index {self.store.description}; ingest with an encoder first (histocli ingest)"
            )
        kept = kept_only(flt) if flt is not None else SearchFilter()
        if kept.is_empty:
            return fallback
        now = time.monotonic()
        cached = self._coverage.get(kept.must)
        if cached is not None and now - cached[0] < self.ttl_s and cached[1] in self.searchable:
            return cached[1]
        order = preference_order({n: self.metas[n] for n in self.searchable})
        order.remove(fallback)  # the default first: an explicit one may not be first by preference
        chosen = first_with_vectors(self.store, [fallback, *order], kept) or fallback
        self._coverage[kept.must] = (now, chosen)
        return chosen

    def unknown(self, name: str) -> InvalidInputError:
        return unknown_encoder(name, self.searchable, self.store)


def unknown_encoder(name: str, known: list[str], store: VectorStore) -> InvalidInputError:
    """The error for an encoder name that is not searchable here, listing those that are."""
    if not known:
        return UnknownNameError(
            f"unknown encoder {name!r}: no encoder is searchable in the index {store.description}; "
            "ingest with an encoder first (histocli ingest)"
        )
    return unknown_name("encoder", name, known)


__all__ = [
    "BASELINE_PREFERENCE",
    "EncoderChoice",
    "default_encoder",
    "first_with_vectors",
    "preference_order",
    "unknown_encoder",
]
