"""Chat messages in the OpenAI format (what the server speaks and what trainers read), and messages given as
either a :class:`Message` or an OpenAI dict turned into plain OpenAI dicts."""

import json
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from supertiny.errors import InvalidInputError
from supertiny.schema.tools import ParsedCall


class ToolCallFunction(BaseModel):
    name: str
    arguments: str = "{}"  # a JSON string, exactly as OpenAI returns it


class ToolCall(BaseModel):
    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    type: Literal["function"] = "function"
    function: ToolCallFunction

    @classmethod
    def from_parsed(cls, call: ParsedCall) -> "ToolCall":
        return cls(function=ToolCallFunction(name=call.name, arguments=call.arguments_json()))

    def parsed(self) -> ParsedCall:
        arguments = json.loads(self.function.arguments or "{}")
        return ParsedCall(name=self.function.name, arguments=arguments if isinstance(arguments, dict) else {})


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def openai(self) -> dict[str, Any]:
        """The message as an OpenAI chat message dict (what chat templates and trainers read)."""
        return self.model_dump(exclude_none=True)


MessageLike = Message | dict[str, Any]


def message_dicts(messages: Sequence[MessageLike]) -> list[dict[str, Any]]:
    """Messages as OpenAI chat dicts; tool-call arguments given as objects become JSON strings."""
    out = []
    for message in messages:
        if isinstance(message, Message):
            out.append(message.openai())
            continue
        if not isinstance(message, dict) or "role" not in message:
            raise InvalidInputError(f"a message must be a Message or a dict with a role, got {message!r:.80}")
        message = dict(message)
        if message.get("tool_calls"):
            message["tool_calls"] = [_tool_call_dict(call) for call in message["tool_calls"]]
        out.append(message)
    return out


def _tool_call_dict(call: Any) -> dict[str, Any]:
    if isinstance(call, ToolCall):
        return call.model_dump()
    call = dict(call)
    function = dict(call.get("function") or {})
    if not isinstance(function.get("arguments", ""), str):
        function["arguments"] = json.dumps(function["arguments"], ensure_ascii=False)
    call["function"] = function
    return call
