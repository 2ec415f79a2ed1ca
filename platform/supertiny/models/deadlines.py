"""Request deadlines inside an in-process forward pass: a stopping criterion that ends each row of a batch at
its own deadline between two decoding steps, and pre-hooks on the decoder layers that abort the pass itself
(a long prefill included) once every row of the batch is past its deadline."""

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any


def deadline_criterion(deadlines: list[float | None]) -> Any:
    import torch
    from transformers import StoppingCriteria

    class Deadline(StoppingCriteria):
        """Stops each row once its own deadline (a ``time.monotonic()`` instant, or None) has passed; ``expired``
        holds the rows it stopped."""

        def __init__(self) -> None:
            self.expired: set[int] = set()

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            now = time.monotonic()
            self.expired.update(row for row, deadline in enumerate(deadlines)
                                if deadline is not None and now > deadline)
            return torch.tensor([row in self.expired for row in range(input_ids.shape[0])], dtype=torch.bool,
                                device=input_ids.device)

    return Deadline()


class PastDeadline(Exception):
    """Raised between two decoder layers once every row of the running batch is past its deadline."""


class DeadlineHooks:
    """Forward pre-hooks on a model's decoder layers that abort the forward pass once the running batch's
    deadline has passed: a long prefill stops within one layer of its time limit instead of running to the end."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.thread: int | None = None  # only the generating thread's passes (others may share the weights)

    def __call__(self, module: Any, args: Any) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline and threading.get_ident() == self.thread:
            raise PastDeadline

    @contextlib.contextmanager
    def until(self, deadlines: list[float | None]) -> Iterator[None]:
        """Abort this thread's forward passes after the last of ``deadlines`` (never, when any of them is None)."""
        self.thread = threading.get_ident()
        self.deadline = None if None in deadlines else max(deadline for deadline in deadlines if deadline is not None)
        try:
            yield
        finally:
            self.deadline = self.thread = None


def install_deadline_hooks(model: Any) -> DeadlineHooks:
    import torch

    hooks = DeadlineHooks()
    stacks = [module for module in model.modules() if isinstance(module, torch.nn.ModuleList) and len(module)]
    for layer in max(stacks, key=len, default=[model]):  # the decoder layers; the whole model when none is found
        layer.register_forward_pre_hook(hooks)
    return hooks
