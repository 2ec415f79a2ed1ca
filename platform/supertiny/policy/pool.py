"""The models a router serves with: opened through a :class:`~supertiny.runtime.model_cache.ModelCache` (by
default the process-wide one ``open_model`` uses: on the model's engine when one runs), leased while they answer,
with a bounded number of requests in flight per model, as many as the model says it batches."""

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from supertiny.errors import BackendTimeoutError, ModelError
from supertiny.models.backend import ChatModel
from supertiny.runtime.loading import model_cache, open_model
from supertiny.runtime.model_cache import Lease, ModelCache, ModelNotCachedError
from supertiny.runtime.model_memory import format_bytes

_pool_ids = itertools.count()


class ModelPool:
    """Model name -> the key of its opened :class:`ChatModel` in ``cache``, plus a serving slot semaphore per
    model.

    An in-process model gets as many slots as it declares it can batch (``capabilities.max_concurrency``:
    1 without dynamic batching, its batch size with it), or ``local_concurrency`` where that is set; models
    behind an engine or another OpenAI-compatible endpoint get ``remote_concurrency``.
    ``get(name, in_process=True)`` opens the model in this process even when an engine serves it (token-level
    decoding needs its weights here). A model the cache evicted opens again on its next use.
    """

    def __init__(self, opener: Callable[..., ChatModel], local_concurrency: int | None = None,
                 remote_concurrency: int = 64, cache: ModelCache | None = None):
        self._opener = opener
        self.cache = cache if cache is not None else model_cache()
        self.local_concurrency = None if local_concurrency is None else max(1, local_concurrency)
        self.remote_concurrency = max(1, remote_concurrency)
        self._id = next(_pool_ids)
        self._keys: dict[tuple[str, bool], Hashable] = {}
        self._added: dict[str, Lease] = {}  # models given with add(): leased for the pool's life
        self._slots: dict[tuple[str, bool], threading.BoundedSemaphore] = {}
        self._loading: dict[tuple[str, bool], threading.Lock] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_store(cls, store: Any, **kwargs: Any) -> "ModelPool":
        """A pool that opens registered model names (or model directories) from ``store``."""
        def opener(name: str, in_process: bool = False) -> ChatModel:
            return open_model(store, name, in_process=in_process)

        return cls(opener, **kwargs)

    def add(self, name: str, model: ChatModel, concurrency: int | None = None) -> None:
        """Serve ``model`` under ``name`` (tests and embedding applications); it stays in the cache, leased,
        until :meth:`close`."""
        lease = self.cache.add((f"pool-{self._id}", name), model, name=name)
        with self._lock:
            previous = self._added.pop(name, None)
            self._added[name] = lease
            for key in ((name, False), (name, True)):
                self._keys[key] = (f"pool-{self._id}", name)
                self._slots[key] = threading.BoundedSemaphore(concurrency or self._concurrency_of(model))
        if previous is not None and previous.model is not model:
            previous.release()

    def get(self, name: str, in_process: bool = False) -> ChatModel:
        """The opened model ``name`` (from the cache; opened when it is not there); concurrent first requests
        open it once."""
        key = (name, in_process)
        model = self._cached(key)
        if model is not None:
            return model
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            model = self._cached(key)
            if model is None:
                model = self._opener(name, in_process) if in_process else self._opener(name)
                cache_key = self._adopt(name, in_process, model)
                with self._lock:
                    self._keys[key] = cache_key
                    self._slots.setdefault(key, threading.BoundedSemaphore(self._concurrency_of(model)))
        return model

    @contextlib.contextmanager
    def lease(self, name: str, in_process: bool = False) -> Iterator[ChatModel]:
        """The model ``name``, leased: the cache does not close it until the block ends."""
        for _ in range(3):  # it may be evicted between opening and leasing when the budget is tight
            model = self.get(name, in_process)
            try:
                held = self.cache.lease(model)
            except ModelNotCachedError:
                continue
            with held:
                yield model
            return
        raise ModelError(f"{name} was closed as soon as it opened, three times: the model memory budget "
                         f"({format_bytes(self.cache.budget_bytes)}) is too small for the models in use")

    def forget(self, name: str, model: ChatModel) -> None:
        """Drop ``model`` (its engine stopped answering): the next ``get`` opens ``name`` anew, on a restarted
        engine or, once the engine is stopped for good, in-process."""
        cache_key = self.cache.key_of(model)
        with self._lock:
            for key in [key for key, cached in self._keys.items() if key[0] == name and cached == cache_key]:
                del self._keys[key]
                self._slots.pop(key, None)
            added = self._added.pop(name, None) if name in self._added and self._added[name].model is model \
                else None
        if added is not None:
            added.release()
        self.cache.forget(model)

    def loaded(self) -> list[str]:
        """The names of the pool's models the cache holds now."""
        with self._lock:
            keys = list(self._keys.items())
        return sorted({name for (name, _), cache_key in keys if cache_key in self.cache})

    def memory(self) -> dict[str, Any]:
        """The cache's budget, bytes in use and resident models."""
        return self.cache.stats()

    @contextlib.contextmanager
    def slot(self, names: str | list[str], timeout_s: float | None,
             in_process: bool = False) -> Iterator[dict[str, ChatModel]]:
        """Lease each model named and hold one of its serving slots (in a fixed order, so two holders never
        deadlock); gives name -> leased model."""
        wanted = sorted({names} if isinstance(names, str) else set(names))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        models: dict[str, ChatModel] = {}
        with contextlib.ExitStack() as held:
            for name in wanted:
                models[name] = model = held.enter_context(self.lease(name, in_process))
                semaphore = self._slot_of((name, in_process), model)
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not semaphore.acquire(timeout=remaining):
                    raise BackendTimeoutError(f"{name} is busy: no serving slot within {timeout_s:g}s")
                held.callback(semaphore.release)
            yield models

    def close(self) -> None:
        """Let the models go: those given with :meth:`add` leave the cache (unclosed: they are the caller's);
        opened ones stay cached for other users until evicted or ``close_models``."""
        with self._lock:
            added = list(self._added.values())
            self._added.clear()
            self._keys.clear()
        for lease in added:
            lease.release()
            self.cache.forget(lease.model)

    def _cached(self, key: tuple[str, bool]) -> ChatModel | None:
        cache_key = self._keys.get(key)
        return None if cache_key is None else self.cache.get(cache_key)

    def _adopt(self, name: str, in_process: bool, model: ChatModel) -> Hashable:
        """The cache key of a model the opener gave: where the opener cached it, else a key of this pool's."""
        cache_key = self.cache.key_of(model)
        if cache_key is None:
            cache_key = (f"pool-{self._id}", name, in_process)
            self.cache.add(cache_key, model, name=name).release()
        return cache_key

    def _slot_of(self, key: tuple[str, bool], model: ChatModel) -> threading.BoundedSemaphore:
        with self._lock:
            return self._slots.setdefault(key, threading.BoundedSemaphore(self._concurrency_of(model)))

    def _concurrency_of(self, model: ChatModel) -> int:
        capabilities = model.capabilities
        if capabilities.local:
            return self.local_concurrency or capabilities.max_concurrency
        return self.remote_concurrency
