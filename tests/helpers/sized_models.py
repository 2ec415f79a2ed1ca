"""Scripted in-process models of a stated size, and an opener that counts what it opens: the model cache's
tests."""

import threading
import time

from supertiny.models.backend import Capabilities

from helpers.chat_models import GOOD_CALL, ScriptedModel


class SizedModel(ScriptedModel):
    """A scripted in-process model that says how much memory it holds and records being closed."""

    def __init__(self, name: str, size: int = 100, text: str = GOOD_CALL, local: bool = True,
                 on_generate=None):
        super().__init__(name, text)
        self.resident_bytes = size
        self.local = local
        self.closed = False
        self.on_generate = on_generate

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(local=self.local, logprobs=True, max_concurrency=4)

    def generate(self, messages, tools=None, options=None):
        assert not self.closed, f"{self.name} answered after it was closed"
        if self.on_generate is not None:
            self.on_generate(self)
        return super().generate(messages, tools, options)

    def close(self) -> None:
        self.closed = True


class Opener:
    """Opens SizedModels by key, counting the opens and remembering each model."""

    def __init__(self, size: int = 100, delay_s: float = 0.0):
        self.size = size
        self.delay_s = delay_s
        self.opened: list[str] = []
        self.models: list[SizedModel] = []
        self._lock = threading.Lock()

    def __call__(self, name: str, size: int | None = None):
        def open_it() -> SizedModel:
            time.sleep(self.delay_s)
            model = SizedModel(name, self.size if size is None else size)
            with self._lock:
                self.opened.append(name)
                self.models.append(model)
            return model
        return open_it


class SizedBackend:
    """A backend opening SizedModels (config ``size``: bytes); ``on_generate`` is handed to each model."""

    name = "sized-test"
    description = "scripted models of a stated size (tests)"
    hf_weights = False

    def __init__(self):
        self.opened: list[SizedModel] = []
        self.on_generate = None

    def open(self, location, config):
        model = SizedModel(config.get("name", location), int(config.get("size", 100)), on_generate=self.on_generate)
        self.opened.append(model)
        return model
