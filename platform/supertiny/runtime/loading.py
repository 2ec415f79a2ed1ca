"""Open a model by registered name or by path, through the process-wide model cache.

``open_model(store, "qwen2.5-coder-0.5b-instruct")`` looks the name up in ``model_versions`` and
opens it on its running engine (``supertiny engine start``) when it has one, else through the registered
backend of that row; a path to an HF directory or a ``.gguf`` file
that is not registered opens with the ``transformers`` backend. Opened models live in one process-wide
:class:`~supertiny.runtime.model_cache.ModelCache`, keyed by (name, backend, location, config): the server, the
router, the evaluator and the demo share one copy in memory, within one memory budget.
"""

import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supertiny.errors import NotFoundError
from supertiny.models.backend import ChatModel
from supertiny.runtime.model_cache import Lease, ModelCache
from supertiny.runtime.model_memory import location_bytes, return_freed_memory
from supertiny.store.engine import Store


@dataclasses.dataclass(frozen=True)
class ModelLocation:
    """Where a model lives and which backend opens it."""

    name: str
    backend: str
    location: str
    config: dict[str, Any]

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.name, self.backend, self.location, json.dumps(self.config, sort_keys=True, default=str)


_cache: ModelCache | None = None
_guard = threading.Lock()


def resolve_model(store: Store, name_or_path: str | Path, *, in_process: bool = False,
                  **overrides: Any) -> ModelLocation:
    """Where ``name_or_path`` lives: a registered model (on its running engine, if it has one, unless
    ``in_process`` or ``overrides`` ask for the in-process backend), else an HF directory or a ``.gguf`` file."""
    from supertiny.engine.manager import engine_location
    from supertiny.models.versions import backend_options, find_model_version, get_model_version

    text = str(name_or_path)
    row = find_model_version(store, text)
    if row is not None:
        engine = None if in_process or overrides else engine_location(store, row)
        if engine is not None:
            url, config = engine
            return ModelLocation(row.name, "vllm", url, config)
        config = {"name": row.name, **backend_options(row.config), **overrides}
        return ModelLocation(row.name, row.backend, row.path, config)
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        path = path.resolve()
        return ModelLocation(str(path), "transformers", str(path), dict(overrides))
    if path.is_file() and path.suffix.lower() == ".gguf":
        path = path.resolve()
        config = {"gguf_file": str(path), **overrides}
        return ModelLocation(str(path), "transformers", str(path.parent), config)
    if path.exists():
        raise NotFoundError(f"{text} is neither a registered model, an HF model directory nor a .gguf file")
    get_model_version(store, text)  # raises NotFoundError with the closest registered name
    raise NotFoundError(f"unknown model {text!r}")  # pragma: no cover - get_model_version raised


def model_cache() -> ModelCache:
    """The process-wide model cache (created on first use, with the default budget)."""
    global _cache
    with _guard:
        if _cache is None:
            _cache = ModelCache()
        return _cache


def set_model_cache(cache: ModelCache | None) -> ModelCache | None:
    """Make ``cache`` the process-wide model cache (None: a fresh default one on next use); returns the one
    it replaces, without closing its models."""
    global _cache
    with _guard:
        previous, _cache = _cache, cache
        return previous


def open_model(store: Store, name_or_path: str | Path, *, in_process: bool = False, **overrides: Any) -> ChatModel:
    """The opened model for a registered name or a path, from the process-wide cache when there: through its
    engine when one runs, else in-process (``in_process=True`` always opens it in-process).

    ``overrides`` are merged over the registered backend config (e.g. ``dtype="float32"``) and are
    part of the cache key. The model is not leased: the cache may close it once the memory budget needs its
    room; use :func:`lease_model` while using it."""
    where = resolve_model(store, name_or_path, in_process=in_process, **overrides)
    return model_cache().open(where.key, _opener(where), name=where.name, size_hint=_size_hint(where))


def lease_model(store: Store, name_or_path: str | Path, *, in_process: bool = False, **overrides: Any) -> Lease:
    """A lease on the model :func:`open_model` gives: ``with lease_model(store, name) as model:`` keeps it
    open, never evicted, until the block ends."""
    where = resolve_model(store, name_or_path, in_process=in_process, **overrides)
    return model_cache().lease(where.key, _opener(where), name=where.name, size_hint=_size_hint(where))


def _opener(where: ModelLocation) -> Callable[[], ChatModel]:
    def open_with_backend() -> ChatModel:
        from supertiny.registry import lookup

        return lookup("backend", where.backend).open(where.location, dict(where.config))

    return open_with_backend


def _size_hint(where: ModelLocation) -> Callable[[], int]:
    return lambda: location_bytes(where.location, where.config)


def forget_model(model: ChatModel) -> None:
    """Drop ``model`` from the cache without closing it (its engine went away): the next ``open_model`` resolves
    it anew."""
    model_cache().forget(model)


def cached_models() -> list[tuple[str, ChatModel]]:
    """(name, model) of every model open in this process's cache."""
    return model_cache().models()


def close_models() -> None:
    """Close and forget every cached model (tests, between demo steps, server shutdown); one in use is closed
    when its lease ends. The freed memory goes back to the system."""
    model_cache().clear()
    return_freed_memory()
