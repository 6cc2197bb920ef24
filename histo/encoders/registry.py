"""One registry of encoders (timm style): ``@register_encoder("nnclr")`` in each method file.

Two kinds share it: ``ssl`` methods, which ``histocli train`` turns into artifacts, and
``baseline`` encoders (random init, colour histogram, ImageNet CNN), which need no training.
A fifth method is one new file: CLI listings, the ``ListEncoders`` RPC, the Qdrant named vectors
and the tests parametrised over ``names()`` all pick it up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from histo.errors import InvalidInputError, unknown_name

Kind = Literal["ssl", "baseline"]
F = TypeVar("F", bound=Callable[..., Any])
_MODULES = ("histo.encoders.methods", "histo.encoders.baselines")


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: its name, kind, what builds it and a one-line summary."""

    name: str
    kind: Kind
    factory: Callable[..., Any]
    summary: str
    available: Callable[[], bool]


_REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(
    name: str, kind: Kind = "ssl", summary: str = "", available: Callable[[], bool] = lambda: True
) -> Callable[[F], F]:
    """Class or function decorator that registers a factory under ``name``."""

    def decorate(factory: F) -> F:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise InvalidInputError(f"encoder name {name!r} is registered twice; rename one of them")
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = EncoderSpec(name, kind, factory, summary or (doc[0] if doc else name), available)
        return factory

    return decorate


def _load_all() -> None:
    """Import the modules whose import registers the built-in encoders."""
    for module in _MODULES:
        importlib.import_module(module)


def names(kind: Kind | None = None, only_available: bool = False) -> list[str]:
    """Registered names (of one kind), in registration order."""
    _load_all()
    return [
        s.name
        for s in _REGISTRY.values()
        if (kind is None or s.kind == kind) and (not only_available or s.available())
    ]


def get_spec(name: str) -> EncoderSpec:
    """The spec registered as ``name``; an unknown name lists the known ones."""
    _load_all()
    if name not in _REGISTRY:
        raise unknown_name("encoder", name, list(_REGISTRY))
    return _REGISTRY[name]


def create_encoder(name: str, **kwargs: Any) -> Any:
    """Build the registered encoder ``name`` with keyword overrides of its defaults."""
    spec = get_spec(name)
    if not spec.available():
        raise InvalidInputError(f"encoder {name!r} is not installed here; see `histocli encoders` for why")
    return spec.factory(**kwargs)
