"""Chat messages in the OpenAI format (what the server speaks and what trainers read)."""

import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
