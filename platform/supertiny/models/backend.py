"""The backend interface: chat messages + tools (OpenAI format) + options in, an assistant message
with parsed tool calls, token counts, latency and per-token log-probabilities out.

A backend (registered through ``register_backends``) opens a model from a location (an HF
directory, a GGUF file, an endpoint URL) into a :class:`ChatModel`.
"""

import abc
import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from supertiny.errors import ContextLengthError, InvalidInputError
from supertiny.models.guided_calls import read_guided_answer
from supertiny.models.parsing import ParseResult, parse_tool_calls
from supertiny.schema import Message, ToolCall
from supertiny.schema.messages import MessageLike
from supertiny.schema.tools import ToolLike


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend can do; callers ask this, never which backend a model is.

    - ``local``: the weights live in this process (memory counts here; one request uses the CPU's cores).
    - ``logprobs``: answers carry per-token log-probabilities (the cascade's confidence).
    - ``token_access``: ``.model`` and ``.tokenizer`` are in-process torch objects (hybrid-token, trainers).
    - ``batching``: concurrent requests are batched by the backend or its engine, so callers should keep
      up to ``max_concurrency`` requests in flight instead of serialising them.
    - ``tokenizer``: ``.tokenizer`` is a Hugging Face tokenizer (token texts of log-probabilities).
    - ``token_continuation``: ``continue_tokens(prompt_ids, ...)`` continues a token sequence with each token's
      top log-probabilities (token-level hybrid decoding through an engine).
    - ``max_concurrency``: requests worth having in flight at once.
    - ``engine``: a short label of what runs the model (``transformers``, ``vllm http://...``).
    - ``guided``: ``GenerationOptions.guided`` is honoured: the answer is decoded under the tools' JSON Schemas
      (see :mod:`supertiny.models.guided_calls`).
    """

    local: bool
    logprobs: bool
    token_access: bool = False
    batching: bool = False
    tokenizer: bool = False
    token_continuation: bool = False
    max_concurrency: int = 1
    engine: str = ""
    guided: bool = False


@dataclasses.dataclass
class GenerationOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = True
    stop: Sequence[str] = ()
    timeout_s: float | None = None
    max_prompt_tokens: int | None = None  # a caller's cap below the model's context (a route's policy)
    # with tools offered, decode the answer under their JSON Schemas (models whose capabilities say ``guided``)
    guided: bool = False
    # with guided: the request must call (tool_choice "required" or a named tool), so the schema has no reply
    call_required: bool = False


@dataclasses.dataclass
class Generation:
    """One answer of a model."""

    text: str  # the raw completion text
    message: Message  # role "assistant": content and/or tool_calls, parsed from text
    parse: ParseResult
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str = "stop"  # "stop" | "length" | "tool_calls"
    token_ids: list[int] | None = None
    # natural log-probability of each generated token under the model's (untempered) distribution
    token_logprobs: list[float] | None = None

    @property
    def confidence(self) -> float | None:
        """Geometric-mean token probability of the answer, or None without log-probabilities."""
        return answer_confidence(self.token_logprobs, "mean")

    def confidences(self) -> dict[str, float | None]:
        """The answer's confidence by every measure of :data:`CONFIDENCE_MEASURES`."""
        return {measure: answer_confidence(self.token_logprobs, measure) for measure in CONFIDENCE_MEASURES}


# How sure a model is of an answer, from its tokens' log-probabilities: ``mean``, the geometric-mean token
# probability; ``joint``, the probability of the whole answer (their product: a long answer needs every token
# sure); ``min``, the probability of its least likely token.
CONFIDENCE_MEASURES = ("mean", "joint", "min")


def answer_confidence(token_logprobs: Sequence[float | None] | None, measure: str) -> float | None:
    """The confidence of an answer with these token log-probabilities (None for a missing one: probability 0)
    by ``measure``; None without any."""
    if not token_logprobs:
        return None
    values = [value if value is not None else -math.inf for value in token_logprobs]
    if measure == "mean":
        return math.exp(sum(values) / len(values))
    if measure == "joint":
        return math.exp(sum(values))
    if measure == "min":
        return math.exp(min(values))
    raise InvalidInputError(f"unknown confidence measure {measure!r}", hint=f"one of {', '.join(CONFIDENCE_MEASURES)}")


def backend_config(backend: str, config: dict[str, Any] | None, known: Sequence[str]) -> dict[str, Any]:
    """A copy of ``config``, refused with one message naming the known keys when it has others."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise InvalidInputError(f"unknown {backend} backend option(s) {', '.join(unknown)}",
                                hint=f"known: {', '.join(known)}")
    return config


class ChatModel(abc.ABC):
    """An opened model that answers chat messages with tools."""

    name: str
    backend: str

    @property
    def capabilities(self) -> Capabilities:
        """What this model can do (see :class:`Capabilities`); the default promises the least: one request
        at a time, nothing in-process."""
        return Capabilities(local=False, logprobs=False, engine=getattr(self, "backend", ""))

    @abc.abstractmethod
    def generate(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
                 options: GenerationOptions | None = None) -> Generation:
        """Answer one conversation."""

    def generate_batch(self, conversations: Sequence[tuple[Sequence[MessageLike], Sequence[ToolLike] | None]],
                       options: GenerationOptions | None = None) -> list[Generation]:
        """Answer several conversations; backends that batch natively override this."""
        return [self.generate(messages, tools, options) for messages, tools in conversations]

    def generate_samples(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
                         options: GenerationOptions | None = None, n: int = 1) -> list[Generation]:
        """``n`` answers to one conversation. Engines share the prompt's prefill between them; this default
        asks ``n`` times, each with its own seed (``options.seed + i``) so the samples differ reproducibly."""
        options = options or GenerationOptions()
        if n < 1:
            raise InvalidInputError("n must be at least 1")
        return [self.generate(messages, tools, dataclasses.replace(
            options, seed=None if options.seed is None else options.seed + index)) for index in range(n)]

    def stream(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
               options: GenerationOptions | None = None) -> Iterator[str | Generation]:
        """Yield text deltas as they are produced, then the final :class:`Generation`."""
        generation = self.generate(messages, tools, options)
        if generation.text:
            yield generation.text
        yield generation

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Release memory or connections."""


class Backend(Protocol):
    name: str
    description: str
    # the model versions it opens are weights transformers loads (an HF directory or a GGUF in one): the
    # trainers and compressors read them
    hf_weights: bool

    def open(self, location: str, config: dict[str, Any]) -> ChatModel:
        """Open the model at ``location`` (a directory, file or URL) with backend-specific config."""
        ...


def parse_answer(text: str, tools: Sequence[ToolLike] | None) -> tuple[ParseResult, Message]:
    """The assistant message for a model's raw answer.

    Calls are looked for only when tools were offered. The message carries the calls as OpenAI tool
    calls and the remaining text as content (None when the answer was only calls); an answer whose
    calls cannot be read keeps the whole text as content, and the parse result says why.
    """
    parse = parse_tool_calls(text) if tools else ParseResult(calls=[], content=text, ok=True)
    if parse.ok and parse.calls:
        tool_calls = [ToolCall.from_parsed(call) for call in parse.calls]
        return parse, Message(role="assistant", content=parse.content, tool_calls=tool_calls)
    return parse, Message(role="assistant", content=text)


def guided_answer(text: str) -> tuple[ParseResult, Message]:
    """The assistant message of an answer decoded under :func:`supertiny.models.guided_calls.answer_schema`."""
    parse = read_guided_answer(text)
    if parse.ok and parse.calls:
        return parse, Message(role="assistant", content=None,
                              tool_calls=[ToolCall.from_parsed(call) for call in parse.calls])
    return parse, Message(role="assistant", content=parse.content if parse.ok else text)


def require_guided(model: Any, name: str, role: str = "a model") -> None:
    """InvalidInputError, before any work, when ``model`` (a ChatModel, or any other chat model) cannot decode
    guided tool calls (``Capabilities.guided``)."""
    if isinstance(model, ChatModel) and model.capabilities.guided:
        return
    where = (model.capabilities.engine or model.backend) if isinstance(model, ChatModel) else type(model).__name__
    raise InvalidInputError(f"--guided needs {role} that decodes under JSON Schemas; {name} runs on {where}",
                            hint=f"serve it on an engine first: supertiny engine start {name}")


def check_context_length(name: str, context_length: int | None, prompt_tokens: int, max_new_tokens: int,
                         max_prompt_tokens: int | None = None) -> None:
    """ContextLengthError (400 ``context_length_exceeded``) when the prompt and the tokens asked for do not fit
    the model's context, or the prompt is longer than the caller's ``max_prompt_tokens``: refused before any
    work, as OpenAI does, instead of holding the model for nothing."""
    if max_prompt_tokens and prompt_tokens > max_prompt_tokens:
        raise ContextLengthError(f"this route takes prompts of at most {max_prompt_tokens} tokens; this one has "
                                 f"{prompt_tokens} (messages and tools)", hint="shorten the messages")
    if context_length and prompt_tokens + max_new_tokens > context_length:
        raise ContextLengthError(
            f"{name}'s maximum context length is {context_length} tokens; this request asks for "
            f"{prompt_tokens + max_new_tokens} ({prompt_tokens} in the messages and tools, {max_new_tokens} for the "
            "answer)", hint="shorten the messages or lower max_tokens")


def finish_reason(parse: ParseResult, hit_max_tokens: bool) -> str:
    """``length`` when the token budget ran out (even if calls parsed), else ``tool_calls`` or ``stop``."""
    if hit_max_tokens:
        return "length"
    return "tool_calls" if parse.ok and parse.calls else "stop"


def cut_at_stops(deltas: Iterable[str], stops: list[str]) -> Iterator[str]:
    """Pass text deltas through, ending just before the first stop string (which may span deltas)."""
    if not stops:
        yield from (delta for delta in deltas if delta)
        return
    hold = max(len(stop) for stop in stops) - 1
    pending, done = "", False
    for delta in deltas:  # keep draining after a stop so the generation thread never blocks
        if done:
            continue
        pending += delta
        cut = _first_stop(pending, stops)
        if cut is not None:
            if pending[:cut]:
                yield pending[:cut]
            done = True
        elif len(pending) > hold:
            yield pending[: len(pending) - hold]
            pending = pending[len(pending) - hold:]
    if not done and pending:
        yield pending


def _first_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(stop) for stop in stops if stop in text]
    return min(positions) if positions else None


def truncate_at_stops(text: str, stops: list[str]) -> str:
    cut = _first_stop(text, stops)
    return text if cut is None else text[:cut]
