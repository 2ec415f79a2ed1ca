"""The models a router serves with: opened once each (through ``open_model``), with a bounded number
of requests in flight per model so local models are not oversubscribed."""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from supertiny.errors import BackendTimeoutError
from supertiny.models.backend import ChatModel

Opener = Callable[[str], ChatModel]


class ModelPool:
    """Model name -> opened :class:`ChatModel`, plus a serving slot semaphore per model.

    ``local_concurrency`` bounds the requests one in-process model runs at once (a CPU model uses every
    core for one request); models behind an HTTP endpoint get ``remote_concurrency``.
    """

    def __init__(self, opener: Opener, local_concurrency: int = 1, remote_concurrency: int = 64):
        self._opener = opener
        self.local_concurrency = max(1, local_concurrency)
        self.remote_concurrency = max(1, remote_concurrency)
        self._models: dict[str, ChatModel] = {}
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_store(cls, store: Any, **kwargs: Any) -> "ModelPool":
        """A pool that opens registered model names (or model directories) from ``store``."""
        def opener(name: str) -> ChatModel:
            from supertiny.models.loading import open_model

            return open_model(store, name)

        return cls(opener, **kwargs)

    def add(self, name: str, model: ChatModel, concurrency: int | None = None) -> None:
        """Serve ``model`` under ``name`` (tests and embedding applications)."""
        with self._lock:
            self._models[name] = model
            self._slots[name] = threading.BoundedSemaphore(concurrency or self._concurrency_of(model))

    def get(self, name: str) -> ChatModel:
        """The opened model ``name``; concurrent first requests open it once."""
        model = self._models.get(name)
        if model is not None:
            return model
        with self._lock:
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:
            model = self._models.get(name)
            if model is None:
                model = self._opener(name)
                with self._lock:
                    self._models[name] = model
                    self._slots.setdefault(name, threading.BoundedSemaphore(self._concurrency_of(model)))
        return model

    def loaded(self) -> list[str]:
        return sorted(self._models)

    @contextlib.contextmanager
    def slot(self, names: str | list[str], timeout_s: float | None) -> Iterator[None]:
        """Hold a serving slot of each model named (in a fixed order, so two holders never deadlock)."""
        wanted = sorted({names} if isinstance(names, str) else set(names))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        held: list[threading.BoundedSemaphore] = []
        try:
            for name in wanted:
                self.get(name)
                semaphore = self._slots[name]
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
        local = getattr(model, "backend", "") in ("transformers", "llama.cpp", "vllm")
        return self.local_concurrency if local else self.remote_concurrency
