"""Scripted ChatModels for routing tests: a fixed answer, a chosen confidence, injected failures.
Generation itself is tested with the tiny in-process transformers models."""

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from supertiny.errors import BackendTimeoutError, ModelError
from supertiny.models.backend import ChatModel, Generation, GenerationOptions, finish_reason, parse_answer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
GOOD_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
SCHEMA_BREAKING_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": 42}}\n</tool_call>'
BROKEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'


class ScriptedModel(ChatModel):
    """Answers ``text`` (or ``text(messages)``) with every token at probability ``probability``.

    ``fail`` is raised instead of answering; ``delay_s`` is slept first (honouring the timeout the way
    real backends do: a BackendTimeoutError once ``options.timeout_s`` is spent).
    """

    backend = "scripted"

    def __init__(self, name: str, text: str | Callable[[Sequence[Any]], str] = "hello", probability: float = 0.9,
                 fail: Exception | None = None, delay_s: float = 0.0, logprobs: bool = True):
        self.name = name
        self.text = text
        self.probability = probability
        self.fail = fail
        self.delay_s = delay_s
        self.logprobs = logprobs
        self.calls = 0
        self._lock = threading.Lock()

    def generate(self, messages, tools=None, options: GenerationOptions | None = None) -> Generation:
        options = options or GenerationOptions()
        with self._lock:
            self.calls += 1
        started = time.perf_counter()
        if self.delay_s:
            if options.timeout_s is not None and options.timeout_s < self.delay_s:
                time.sleep(options.timeout_s)
                raise BackendTimeoutError(f"{self.name} did not answer within {options.timeout_s:g}s")
            time.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        text = self.text(messages) if callable(self.text) else self.text
        parse, message = parse_answer(text, tools)
        tokens = max(1, len(text.split()))
        return Generation(
            text=text, message=message, parse=parse, prompt_tokens=10, completion_tokens=tokens,
            latency_s=time.perf_counter() - started, finish_reason=finish_reason(parse, False),
            token_logprobs=[math.log(self.probability)] * tokens if self.logprobs else None,
        )


def broken(name: str) -> ScriptedModel:
    return ScriptedModel(name, fail=ModelError(f"{name} crashed"))
