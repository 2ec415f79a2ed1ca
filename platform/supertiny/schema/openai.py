"""The OpenAI Chat Completions wire format: the request the server accepts, the response and the
stream chunks it returns, and the error body. Unknown request fields OpenAI defines
(``frequency_penalty``, ``presence_penalty`` ...) are accepted and ignored, so unmodified clients work."""

import json
import time
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from supertiny.schema.messages import Message, ToolCall
from supertiny.schema.tools import ToolSpec

# --- request ------------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    """A message as clients send it: content may be a list of text parts; ``developer`` is ``system``."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            kinds = sorted({part.type for part in value if part.type != "text"})
            if kinds:
                raise ValueError(f"only text content is supported, got content parts of type {', '.join(kinds)}")
        return value

    @model_validator(mode="after")
    def _required_by_role(self) -> "ChatMessageIn":
        if self.role in ("system", "developer", "user") and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self

    def to_message(self) -> Message:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text or "" for part in content)
        role = "system" if self.role == "developer" else self.role
        return Message(role=role, content=content, tool_calls=self.tool_calls or None,
                       tool_call_id=self.tool_call_id, name=self.name)


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionName


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``. ``model`` names a route (a stored routing policy)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessageIn] = Field(min_length=1)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    seed: int | None = None
    user: str | None = Field(default=None, max_length=256)
    stop: str | list[str] | None = None
    parallel_tool_calls: StrictBool | None = None  # false: at most one call in the answer
    logprobs: StrictBool | None = None  # per-token log-probabilities of the answer (non-streamed answers)
    # only {"type": "text"}: JSON modes are refused (400) rather than ignored
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)  # accepted; alternatives are not reported

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported")
        return 1

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_format_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") != "text":
            raise ValueError(f"response_format {value.get('type')!r} is not supported: answers are text or tool "
                             "calls (offer a tool whose parameters are the JSON Schema you want)")
        return value

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def chat_messages(self) -> list[Message]:
        return [message.to_message() for message in self.messages]

    def offered_tools(self) -> list[ToolSpec] | None:
        """The tools the model sees: none for ``tool_choice="none"``, only the named one when one is named."""
        if not self.tools or self.tool_choice == "none":
            return None
        if isinstance(self.tool_choice, NamedToolChoice):
            return [tool for tool in self.tools if tool.name == self.tool_choice.function.name]
        return list(self.tools)

    @property
    def call_required(self) -> bool:
        return self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)


# --- response -----------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] = "stop"
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    """What OpenAI returns; ``supertiny`` (an extension clients ignore) says how the route served it."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    supertiny: dict[str, Any] | None = None

    def wire(self) -> dict[str, Any]:
        """The JSON body: ``tool_calls`` only when there are calls, ``content`` always present."""
        body = self.model_dump(mode="json")
        for choice in body["choices"]:
            if choice["message"].get("tool_calls") is None:
                choice["message"].pop("tool_calls", None)
        if body.get("supertiny") is None:
            body.pop("supertiny", None)
        return body


class FunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    supertiny: dict[str, Any] | None = None

    def wire(self) -> str:
        body = self.model_dump(mode="json", exclude_none=True)
        for choice in body["choices"]:
            choice.setdefault("finish_reason", None)
        return json.dumps(body, ensure_ascii=False)


class ChunkWriter:
    """Builds the chunks of one streamed completion exactly as OpenAI streams them: a first chunk with
    the role, content deltas, each tool call as a header (index, id, name) and argument fragments, a
    last chunk with the finish reason, and a usage chunk with no choices when the client asked."""

    def __init__(self, completion_id: str, model: str, created: int | None = None, argument_piece: int = 32):
        self.id = completion_id
        self.model = model
        self.created = created or int(time.time())
        self.argument_piece = argument_piece
        self._started = False

    def _chunk(self, delta: Delta, finish_reason: str | None = None, **extra: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                   choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)], **extra)

    def start(self) -> Iterator[ChatCompletionChunk]:
        if not self._started:
            self._started = True
            yield self._chunk(Delta(role="assistant", content=""))

    def content(self, text: str) -> Iterator[ChatCompletionChunk]:
        yield from self.start()
        if text:
            yield self._chunk(Delta(content=text))

    def tool_calls(self, calls: list[ToolCall]) -> Iterator[ChatCompletionChunk]:
        yield from self.start()
        for index, call in enumerate(calls):
            header = ToolCallDelta(index=index, id=call.id, type="function",
                                   function=FunctionDelta(name=call.function.name, arguments=""))
            yield self._chunk(Delta(tool_calls=[header]))
            arguments = call.function.arguments
            for start in range(0, len(arguments), self.argument_piece):
                piece = arguments[start:start + self.argument_piece]
                fragment = ToolCallDelta(index=index, function=FunctionDelta(arguments=piece))
                yield self._chunk(Delta(tool_calls=[fragment]))

    def finish(self, finish_reason: str, usage: Usage | None = None,
               supertiny: dict[str, Any] | None = None) -> Iterator[ChatCompletionChunk]:
        yield from self.start()
        yield self._chunk(Delta(), finish_reason=finish_reason, supertiny=supertiny)
        if usage is not None:
            yield ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[], usage=usage)


# --- errors -------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail

    @classmethod
    def of(cls, message: str, type: str, param: str | None = None, code: str | None = None) -> "ErrorResponse":
        return cls(error=ErrorDetail(message=message, type=type, param=param, code=code))


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "supertiny"
    supertiny: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
