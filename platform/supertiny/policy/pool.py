"""The models a router serves with: opened once each (through ``open_model``: on the model's engine when
one runs), with a bounded number of requests in flight per model, as many as the model says it batches."""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from supertiny.errors import BackendTimeoutError
from supertiny.models.backend import ChatModel


class ModelPool:
    """Model name -> opened :class:`ChatModel`, plus a serving slot semaphore per model.

    An in-process model gets as many slots as it declares it can batch (``capabilities.max_concurrency``:
    1 without dynamic batching, its batch size with it), or ``local_concurrency`` where that is set; models
    behind an engine or another OpenAI-compatible endpoint get ``remote_concurrency``.
    ``get(name, in_process=True)`` opens the model in this process even when an engine serves it (token-level
    decoding needs its weights here).
    """

    def __init__(self, opener: Callable[..., ChatModel], local_concurrency: int | None = None,
                 remote_concurrency: int = 64):
        self._opener = opener
        self.local_concurrency = None if local_concurrency is None else max(1, local_concurrency)
        self.remote_concurrency = max(1, remote_concurrency)
        self._models: dict[tuple[str, bool], ChatModel] = {}
        self._slots: dict[tuple[str, bool], threading.BoundedSemaphore] = {}
        self._loading: dict[tuple[str, bool], threading.Lock] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_store(cls, store: Any, **kwargs: Any) -> "ModelPool":
        """A pool that opens registered model names (or model directories) from ``store``."""
        def opener(name: str, in_process: bool = False) -> ChatModel:
            from supertiny.runtime.loading import open_model

            return open_model(store, name, in_process=in_process)

        return cls(opener, **kwargs)

    def add(self, name: str, model: ChatModel, concurrency: int | None = None) -> None:
        """Serve ``model`` under ``name`` (tests and embedding applications)."""
        with self._lock:
            for key in ((name, False), (name, True)):
                self._models[key] = model
                self._slots[key] = threading.BoundedSemaphore(concurrency or self._concurrency_of(model))

    def get(self, name: str, in_process: bool = False) -> ChatModel:
        """The opened model ``name``; concurrent first requests open it once."""
        key = (name, in_process)
        model = self._models.get(key)
        if model is not None:
            return model
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            model = self._models.get(key)
            if model is None:
                model = self._opener(name, in_process) if in_process else self._opener(name)
                with self._lock:
                    self._models[key] = model
                    self._slots.setdefault(key, threading.BoundedSemaphore(self._concurrency_of(model)))
        return model

    def forget(self, name: str, model: ChatModel) -> None:
        """Drop ``model`` (its engine stopped answering): the next ``get`` opens ``name`` anew, on a restarted
        engine or, once the engine is stopped for good, in-process."""
        from supertiny.runtime.loading import forget_model

        with self._lock:
            for key in [key for key, cached in self._models.items() if key[0] == name and cached is model]:
                del self._models[key]
                self._slots.pop(key, None)
        forget_model(model)

    def loaded(self) -> list[str]:
        return sorted({name for name, _ in self._models})

    @contextlib.contextmanager
    def slot(self, names: str | list[str], timeout_s: float | None, in_process: bool = False) -> Iterator[None]:
        """Hold a serving slot of each model named (in a fixed order, so two holders never deadlock)."""
        wanted = sorted({names} if isinstance(names, str) else set(names))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        held: list[threading.BoundedSemaphore] = []
        try:
            for name in wanted:
                self.get(name, in_process)
                semaphore = self._slots[(name, in_process)]
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not semaphore.acquire(timeout=remaining):
                    raise BackendTimeoutError(f"{name} is busy: no serving slot within {timeout_s:g}s")
                held.append(semaphore)
            yield
        finally:
            for semaphore in held:
                semaphore.release()

    def close(self) -> None:
        """Forget the models (``open_model`` keeps its own process-wide cache, so nothing is closed here)."""
        with self._lock:
            self._models.clear()

    def _concurrency_of(self, model: ChatModel) -> int:
        capabilities = model.capabilities
        if capabilities.local:
            return self.local_concurrency or capabilities.max_concurrency
        return self.remote_concurrency
