"""Opened models within a memory budget: a thread-safe least-recently-used cache with leases.

``cache.open(key, opener)`` returns the model cached under ``key``, opening it once (concurrent callers of one
key wait for that one load; other keys load in parallel). Each model counts its resident size
(:func:`~supertiny.runtime.model_memory.model_bytes`); when the models would take more than ``budget_bytes``,
the least recently used ones are closed (``model.close()``) and dropped until they fit. A model under a lease
(``with cache.lease(key_or_name) as model:``) is never evicted; when every other model is leased, a new one
still opens, over the budget, with a warning, and the budget is restored as leases end.
"""

import collections
import dataclasses
import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any

from supertiny.errors import NotFoundError
from supertiny.models.backend import ChatModel
from supertiny.runtime.model_memory import format_bytes, memory_budget, model_bytes

log = logging.getLogger("supertiny.models")

Opener = Callable[[], ChatModel]
SizeHint = int | Callable[[], int]


class ModelNotCachedError(NotFoundError):
    """The model asked for is not (or no longer) in the cache."""


@dataclasses.dataclass(eq=False)
class _Entry:
    key: Hashable
    name: str
    model: ChatModel
    size: int
    leases: int = 0
    resident: bool = True  # False once evicted, forgotten or cleared
    close_on_release: bool = False  # cleared while leased: closed when its last lease ends


class Lease:
    """A pin on one cached model: it is neither evicted nor closed until the lease is released. Taken by
    :meth:`ModelCache.lease`; ``with lease as model:`` releases it on exit; :meth:`release` may be called once
    or more."""

    def __init__(self, cache: "ModelCache", entry: _Entry):
        self._cache = cache
        self._entry: _Entry | None = entry
        self.model = entry.model

    def release(self) -> None:
        """End the lease (a second call does nothing)."""
        entry, self._entry = self._entry, None
        if entry is not None:
            self._cache._release(entry)

    def __enter__(self) -> ChatModel:
        return self.model

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


class ModelCache:
    """Key -> opened :class:`ChatModel`, least recently used first, within ``budget_bytes`` (default:
    ``SUPERTINY_MODEL_MEMORY``, else half of system memory). ``sizer`` says how many bytes a model holds
    (None: unknown, the size hint given when it was opened counts instead)."""

    def __init__(self, budget_bytes: int | None = None,
                 sizer: Callable[[ChatModel], int | None] = model_bytes):
        self._budget = memory_budget() if budget_bytes is None else max(0, int(budget_bytes))
        self._sizer = sizer
        self._entries: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    @property
    def budget_bytes(self) -> int:
        return self._budget

    @budget_bytes.setter
    def budget_bytes(self, value: int) -> None:
        with self._guard:
            self._budget = max(0, int(value))
            victims = self._evict(0, keep=None)
        self._close(victims)

    @property
    def used_bytes(self) -> int:
        with self._guard:
            return self._used()

    def open(self, key: Hashable, opener: Opener, *, name: str | None = None, size_hint: SizeHint = 0) -> ChatModel:
        """The model under ``key``, opened with ``opener`` when it is not cached. ``size_hint`` (bytes, or a
        function giving them) is the memory made free before opening; the opened model's own size counts after.
        Without a lease the model may be closed once the budget needs its memory."""
        return self._acquire(key, opener, name, size_hint, pin=False).model

    def lease(self, target: Hashable | ChatModel, opener: Opener | None = None, *, name: str | None = None,
              size_hint: SizeHint = 0) -> Lease:
        """A lease on a cached model, taken now: ``target`` is a key, a model name (the most recently used model
        of that name) or the model itself. A key not cached opens with ``opener``; without one, or for a name
        or model not cached, raises ModelNotCachedError."""
        if opener is None or isinstance(target, ChatModel):
            with self._guard:
                entry = self._find(target)
                if entry is None:
                    raise ModelNotCachedError(f"no model {_describe(target)} is open in this process")
                self._touch(entry, pin=True)
            return Lease(self, entry)
        return Lease(self, self._acquire(target, opener, name, size_hint, pin=True))

    def add(self, key: Hashable, model: ChatModel, *, name: str | None = None) -> Lease:
        """Cache ``model``, opened elsewhere, under ``key`` (replacing, unclosed, what was there) and lease it:
        release the lease to let it be evicted like any other."""
        entry = _Entry(key, name or getattr(model, "name", None) or str(key), model, self._size(model, 0), leases=1)
        with self._guard:
            old = self._entries.pop(key, None)
            if old is not None:
                old.resident = False
            self._entries[key] = entry
            victims = self._evict(0, keep=key)
            self._warn_if_over(entry)
        self._close(victims)
        return Lease(self, entry)

    def get(self, key: Hashable) -> ChatModel | None:
        """The model under ``key`` (now the most recently used), or None when it is not cached."""
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._touch(entry, pin=False)
            return entry.model

    def key_of(self, model: ChatModel) -> Hashable | None:
        """The key ``model`` is cached under, or None."""
        with self._guard:
            return next((entry.key for entry in self._entries.values() if entry.model is model), None)

    def forget(self, model: ChatModel) -> None:
        """Drop ``model`` without closing it (its engine went away): the next open of its key opens anew."""
        with self._guard:
            for entry in [entry for entry in self._entries.values() if entry.model is model]:
                del self._entries[entry.key]
                entry.resident = False

    def clear(self) -> None:
        """Close and drop every model; a leased one is dropped now and closed when its last lease ends."""
        with self._guard:
            entries = list(self._entries.values())
            self._entries.clear()
            self._loading.clear()
            for entry in entries:
                entry.resident = False
                entry.close_on_release = entry.leases > 0
        self._close([entry for entry in entries if not entry.close_on_release], "the cache was cleared")

    def models(self) -> list[tuple[str, ChatModel]]:
        """(name, model) of every cached model, least recently used first."""
        with self._guard:
            return [(entry.name, entry.model) for entry in self._entries.values()]

    def stats(self) -> dict[str, Any]:
        """The budget, the bytes in use and each resident model (name, bytes, leases), least recently used first."""
        with self._guard:
            return {"budget_bytes": self._budget, "used_bytes": self._used(),
                    "models_resident": [{"name": entry.name, "bytes": entry.size, "leases": entry.leases}
                                        for entry in self._entries.values()]}

    def __contains__(self, key: object) -> bool:
        with self._guard:
            return key in self._entries

    def __len__(self) -> int:
        with self._guard:
            return len(self._entries)

    # --- internals (self._guard is held where a name says so) ----------------------------------------------

    def _acquire(self, key: Hashable, opener: Opener, name: str | None, size_hint: SizeHint, pin: bool) -> _Entry:
        with self._guard:
            entry = self._entries.get(key)
            if entry is not None:
                return self._touch(entry, pin)
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one load per key; other keys load in parallel
            with self._guard:
                entry = self._entries.get(key)
                if entry is not None:
                    return self._touch(entry, pin)
            hint = size_hint() if callable(size_hint) else size_hint
            if hint > 0:
                with self._guard:
                    victims = self._evict(hint, keep=key)
                self._close(victims)
            model = opener()
            entry = _Entry(key, name or getattr(model, "name", None) or str(key), model, self._size(model, hint),
                           leases=1 if pin else 0)
            with self._guard:
                self._entries[key] = entry
                victims = self._evict(0, keep=key)
                self._warn_if_over(entry)
        self._close(victims)
        return entry

    def _release(self, entry: _Entry) -> None:
        with self._guard:
            entry.leases -= 1
            if entry.resident:
                self._entries.move_to_end(entry.key)
            close_now = not entry.resident and entry.close_on_release and entry.leases == 0
            victims = self._evict(0, keep=None) if entry.leases == 0 else []
        if close_now:
            self._close([entry], "the cache was cleared while it was in use")
        self._close(victims)

    def _find(self, target: Hashable | ChatModel) -> _Entry | None:
        """Guard held. The resident entry of a model, a key or (most recently used first) a name."""
        if isinstance(target, ChatModel):
            return next((entry for entry in self._entries.values() if entry.model is target), None)
        if target in self._entries:
            return self._entries[target]
        if isinstance(target, str):
            return next((entry for entry in reversed(self._entries.values()) if entry.name == target), None)
        return None

    def _touch(self, entry: _Entry, pin: bool) -> _Entry:
        """Guard held. Make ``entry`` the most recently used, and lease it when ``pin``."""
        self._entries.move_to_end(entry.key)
        if pin:
            entry.leases += 1
        return entry

    def _used(self) -> int:
        return sum(entry.size for entry in self._entries.values())

    def _evict(self, extra: int, keep: Hashable | None) -> list[_Entry]:
        """Guard held. Drop unleased models, least recently used first, until ``extra`` more bytes fit; the
        dropped ones are returned to be closed outside the guard."""
        victims = []
        for entry in list(self._entries.values()):
            if self._used() + extra <= self._budget:
                break
            if entry.key == keep or entry.leases > 0 or entry.size <= 0:
                continue
            del self._entries[entry.key]
            entry.resident = False
            victims.append(entry)
        return victims

    def _warn_if_over(self, entry: _Entry) -> None:
        """Guard held. Log when the models take more than the budget even after evicting all they could."""
        used = self._used()
        if used > self._budget:
            log.warning("models take %s, over the model memory budget of %s: %s takes %s and every other model "
                        "left is in use (SUPERTINY_MODEL_MEMORY or --model-memory sets the budget)",
                        format_bytes(used), format_bytes(self._budget), entry.name, format_bytes(entry.size))

    def _size(self, model: ChatModel, hint: int) -> int:
        size = self._sizer(model)
        return max(0, int(hint if size is None else size))

    def _close(self, entries: list[_Entry], why: str = "") -> None:
        for entry in entries:
            log.info("closing model %s (%s): %s", entry.name, format_bytes(entry.size),
                     why or f"least recently used, over the model memory budget of {format_bytes(self._budget)}")
            try:
                entry.model.close()
            except Exception as exc:  # one model that fails to close never stops the others
                log.warning("closing model %s failed: %s", entry.name, exc)


def _describe(target: object) -> str:
    if isinstance(target, tuple) and target:
        return repr(target[0])
    return repr(getattr(target, "name", target))
