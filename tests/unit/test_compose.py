"""docker-compose.yml and Dockerfile, checked without Docker: services, pinned images, GPU, settings names."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from histo.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
HISTO_VAR = re.compile(r"\bHISTO_[A-Z0-9_]+\b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "NAME=value" form
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside an annotation (``Model`` or ``Model | None``), if any."""
    candidates = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def settings_paths(model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every field path of the settings model: ("home",), ("redis",), ("redis", "url"), …"""
    paths: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        paths.add(path)
        nested = _nested_model(field.annotation)
        if nested is not None:
            paths |= settings_paths(nested, path)
    return paths


def setting_of(variable: str) -> tuple[str, ...]:
    """``HISTO_QDRANT__URL`` -> ("qdrant", "url") (names are case-insensitive)."""
    return tuple(variable.removeprefix("HISTO_").lower().split("__"))


def _image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_settings_paths_know_nested_fields() -> None:
    paths = settings_paths()
    assert {("home",), ("redis", "url"), ("qdrant", "url"), ("grpc", "port")} <= paths
    assert (
        setting_of("HISTO_TILING__TILE_SIZE") == ("tiling", "tile_size") and ("tiling", "tile_size") in paths
    )


def test_the_five_services_are_there(compose: dict[str, Any]) -> None:
    assert {"qdrant", "redis", "search", "web", "worker"} <= set(compose["services"])


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert isinstance(image, str), f"service {name} has no image name (a built image needs a tag too)"
        assert _image_is_pinned(image), f"service {name}: image {image!r} is not pinned to a version"
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().upper().startswith("FROM "):
            image = line.split()[1]
            assert _image_is_pinned(image), f"Dockerfile base image {image!r} is not pinned"
            assert re.search(r":\d+\.\d+\.\d+", image), (
                f"pin the base image to a patch release, not {image!r}"
            )


def test_qdrant_can_add_named_vectors(compose: dict[str, Any]) -> None:
    """Adding a named vector to an existing collection (a new encoder) needs Qdrant 1.18 or later."""
    image = compose["services"]["qdrant"]["image"]
    match = re.fullmatch(r"qdrant/qdrant:v(\d+)\.(\d+)\.(\d+)", image)
    assert match, f"pin qdrant to an exact release such as qdrant/qdrant:v1.20.0, not {image!r}"
    assert tuple(map(int, match.groups())) >= (1, 18, 0)


def test_the_worker_reserves_a_gpu(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert worker["command"][:2] == ["histocli", "worker"]


def test_search_serves_grpc_on_loopback_only(compose: dict[str, Any]) -> None:
    search = compose["services"]["search"]
    assert search["command"][:2] == ["histocli", "serve"]
    assert "127.0.0.1:50051:50051" in search["ports"]
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"service {name} publishes {port} beyond loopback"


def test_web_serves_the_page_through_the_search_service(compose: dict[str, Any]) -> None:
    web = compose["services"]["web"]
    assert web["command"] == ["histocli", "web", "--server", "search:50051"]
    assert "127.0.0.1:8080:8080" in web["ports"] and _environment(web)["HISTO_WEB__PORT"] == "8080"
    assert "/api/health" in " ".join(web["healthcheck"]["test"])
    # GetTile reads tiles from the data set files: the search service sees them where ingestion did
    assert "${DATA_DIR:-./data}:/data:ro" in compose["services"]["search"]["volumes"]
    assert "8080" in DOCKERFILE.read_text().split("EXPOSE", 1)[1].splitlines()[0]


def test_histo_services_are_configured_only_by_known_histo_variables(compose: dict[str, Any]) -> None:
    paths = settings_paths()
    histo_services = [s for s in compose["services"].values() if str(s.get("image", "")).startswith("histo:")]
    assert len(histo_services) >= 2
    for service in histo_services:
        env = _environment(service)
        assert env, "histo services are configured through HISTO_* variables"
        for variable in env:
            assert variable.startswith("HISTO_"), f"{variable}: histo reads only HISTO_* variables"
    used = set(HISTO_VAR.findall(COMPOSE.read_text())) | set(HISTO_VAR.findall(DOCKERFILE.read_text()))
    assert used
    unknown = sorted(v for v in used if setting_of(v) not in paths)
    assert not unknown, f"not fields of histo.settings.Settings: {unknown}"


def test_metrics_ports_are_served_and_published_on_loopback(compose: dict[str, Any]) -> None:
    services = compose["services"]
    search, worker = _environment(services["search"]), _environment(services["worker"])
    assert search["HISTO_METRICS__SEARCH_PORT"] == "9464" and search["HISTO_METRICS__HOST"] == "0.0.0.0"
    assert "127.0.0.1:9464:9464" in services["search"]["ports"]
    # a worker's metrics stay inside the compose network: `--scale worker=N` cannot share a host port
    assert worker["HISTO_METRICS__WORKER_PORT"] == "9465" and worker["HISTO_METRICS__HOST"] == "0.0.0.0"
    assert [str(p) for p in services["worker"]["expose"]] == ["9465"] and "ports" not in services["worker"]
    # the page serves /metrics on its own, published port
    assert "127.0.0.1:8080:8080" in services["web"]["ports"]
    exposed = DOCKERFILE.read_text().split("EXPOSE", 1)[1].splitlines()[0].split()
    assert {"9464", "9465"} <= set(exposed)


def test_snapshots_live_in_their_own_volume_under_histo_home(compose: dict[str, Any]) -> None:
    """``histocli index snapshot`` writes to HISTO_HOME/snapshots by default (cli/index_ops.py)."""
    assert "snapshots" in compose["volumes"]
    home = compose["x-histo-env"]["HISTO_HOME"]
    for name in ("search", "cli"):
        assert f"snapshots:{home}/snapshots" in compose["services"][name]["volumes"], name
    assert f"mkdir -p {home}/snapshots" in DOCKERFILE.read_text()  # the new volume starts owned by histo
