"""Open a model by registered name or by path, once per process.

``open_model(store, "qwen2.5-coder-0.5b-instruct")`` looks the name up in ``model_versions`` and
opens it on its running engine (``supertiny engine start``) when it has one, else through the registered
backend of that row; a path to an HF directory or a ``.gguf`` file
that is not registered opens with the ``transformers`` backend. Opened models are cached per
(name, location, config): the server, the router and the evaluator share one copy in memory.
"""

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

from supertiny.errors import NotFoundError
from supertiny.models.backend import ChatModel
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


_cache: dict[tuple[str, str, str, str], ChatModel] = {}
_locks: dict[tuple[str, str, str, str], threading.Lock] = {}
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


def open_model(store: Store, name_or_path: str | Path, *, in_process: bool = False, **overrides: Any) -> ChatModel:
    """The opened model for a registered name or a path, from the process-wide cache when there: through its
    engine when one runs, else in-process (``in_process=True`` always opens it in-process).

    ``overrides`` are merged over the registered backend config (e.g. ``dtype="float32"``) and are
    part of the cache key."""
    from supertiny.registry import lookup

    where = resolve_model(store, name_or_path, in_process=in_process, **overrides)
    with _guard:
        if where.key in _cache:
            return _cache[where.key]
        lock = _locks.setdefault(where.key, threading.Lock())
    with lock:  # one load per key; other keys load in parallel
        if where.key in _cache:
            return _cache[where.key]
        backend = lookup("backend", where.backend)
        model = backend.open(where.location, dict(where.config))
        _cache[where.key] = model
        return model


def forget_model(model: ChatModel) -> None:
    """Drop ``model`` from the cache (its engine went away): the next ``open_model`` resolves it anew."""
    with _guard:
        for key in [key for key, cached in _cache.items() if cached is model]:
            del _cache[key]
            _locks.pop(key, None)


def cached_models() -> list[tuple[str, ChatModel]]:
    """(name, model) of every model opened in this process."""
    with _guard:
        return [(key[0], model) for key, model in _cache.items()]


def close_models() -> None:
    """Close and forget every cached model (tests, server shutdown)."""
    with _guard:
        models = list(_cache.values())
        _cache.clear()
        _locks.clear()
    for model in models:
        model.close()
