"""Dynamic batching for in-process models: requests that arrive together share one forward pass.

Each caller's ``submit`` blocks while a single worker thread gathers the requests waiting at that moment
(after a short window for more to arrive), runs the compatible ones as one batch, and hands every caller
its own answer. Requests are compatible when they sample the same way (temperature, top-p, stop strings,
log-probabilities, and the seed when sampling) and their prompts are of a similar length (a long prompt would
pad every row of its batch to its length); each keeps its own token budget and deadline. Decoding reads every
weight once per step whatever the batch, so a batch of 8 costs far less than 8 single requests.

Work that would hold the model for long (a very long prompt's prefill) is submitted as steps instead
(``submit_steps``): the worker runs one step of it, then one batch of the other requests, and so on, so the
other requests keep their latency while the long one advances.
"""

import collections
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from supertiny.errors import BackendTimeoutError
from supertiny.models.backend import Generation, GenerationOptions
from supertiny.schema.tools import ToolLike

LENGTH_CLASS_CHARS = 2048  # prompts up to this long batch together; longer ones by powers of two


@dataclasses.dataclass
class BatchRequest:
    """One caller's request, waiting for its answer."""

    prompt: str
    tools: Sequence[ToolLike] | None
    options: GenerationOptions
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    deadline: float | None = None  # time.monotonic() instant its time limit ends (from options.timeout_s)

    def __post_init__(self) -> None:
        if self.deadline is None and self.options.timeout_s is not None:
            self.deadline = time.monotonic() + self.options.timeout_s

    @property
    def group(self) -> tuple[Any, ...]:
        options = self.options
        sampled = options.temperature > 0
        length_class = (len(self.prompt) // LENGTH_CLASS_CHARS).bit_length()
        return (sampled, options.temperature if sampled else 0.0, options.top_p if sampled else 1.0,
                options.seed if sampled else None, options.logprobs, tuple(stop for stop in options.stop if stop),
                length_class)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


# one answer per request, in order: a Generation, or the exception that request gets (its deadline passed)
RunBatch = Callable[[list[BatchRequest]], list[Any]]


class DynamicBatcher:
    """Gathers concurrent requests into batches of at most ``max_batch_size`` for ``run``."""

    def __init__(self, run: RunBatch, max_batch_size: int, window_s: float = 0.01, name: str = "model"):
        self._run = run
        self.name = name
        self.max_batch_size = max(1, max_batch_size)
        self.window_s = max(0.0, window_s)
        self._waiting: collections.deque[BatchRequest] = collections.deque()
        self._stepwise: collections.deque[tuple[Generator[None, None, Any], concurrent.futures.Future]] = \
            collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self.batches = 0  # batches run so far (with ``rows``, the mean batch size)
        self.rows = 0
        self._worker = threading.Thread(target=self._loop, name=f"supertiny-batcher-{name}", daemon=True)
        self._worker.start()

    def submit(self, prompt: str, tools: Sequence[ToolLike] | None, options: GenerationOptions) -> Generation:
        """Answer one prompt, batched with whatever else is waiting; blocks until it is answered."""
        request = BatchRequest(prompt, tools, options)
        with self._ready:
            if self._closed:
                raise RuntimeError("the model was closed")
            self._waiting.append(request)
            self._ready.notify()
        return request.future.result()

    def submit_steps(self, steps: Generator[None, None, Generation]) -> Generation:
        """Answer a request that runs as ``steps`` (each ``next`` does one bounded piece of model work; the
        generator's return value is the answer), one step between two batches of the other requests."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the model was closed")
            self._stepwise.append((steps, future))
            self._ready.notify()
        return future.result()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._worker.join(timeout=5)
        while self._waiting:
            self._waiting.popleft().future.set_exception(RuntimeError("the model was closed"))
        while self._stepwise:
            steps, future = self._stepwise.popleft()
            steps.close()
            future.set_exception(RuntimeError("the model was closed"))

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._stepwise and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                stepwise = self._stepwise.popleft() if self._stepwise else None
            if stepwise is not None:
                self._advance(*stepwise)
            if self._waiting:
                self._run_batch(self._next_batch())

    def _advance(self, steps: Generator[None, None, Any], future: concurrent.futures.Future) -> None:
        try:
            next(steps)
        except StopIteration as finished:
            future.set_result(finished.value)
            return
        except BaseException as exc:
            future.set_exception(exc)
            return
        with self._ready:
            self._stepwise.append((steps, future))

    def _run_batch(self, batch: list[BatchRequest]) -> None:
        if not batch:
            return
        self.batches += 1
        self.rows += len(batch)
        try:
            generations = self._run(batch)
        except BaseException as exc:  # every caller of the batch gets the error
            for request in batch:
                request.future.set_exception(exc)
            return
        for request, generation in zip(batch, generations, strict=True):
            if isinstance(generation, BaseException):
                request.future.set_exception(generation)
            else:
                request.future.set_result(generation)

    def _next_batch(self) -> list[BatchRequest]:
        """The oldest waiting request and those compatible with it (after a short window for more)."""
        if self.window_s and len(self._waiting) < self.max_batch_size:
            time.sleep(self.window_s)  # requests sent together arrive within a few ms of each other
        with self._ready:
            now = time.monotonic()
            for request in [request for request in self._waiting if request.expired(now)]:
                self._waiting.remove(request)  # its time ran out while it waited: no work for nothing
                request.future.set_exception(BackendTimeoutError(
                    f"{self.name} did not answer within the request's time limit (busy with earlier requests)"))
            if not self._waiting:
                return []
            group = self._waiting[0].group  # the oldest request decides, so no request waits forever
            batch, rest = [], collections.deque()
            while self._waiting:
                request = self._waiting.popleft()
                if len(batch) < self.max_batch_size and request.group == group:
                    batch.append(request)
                else:
                    rest.append(request)
            self._waiting.extend(rest)
        return batch
