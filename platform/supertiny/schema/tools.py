"""Tools in the OpenAI format (and tools given as a :class:`ToolSpec`, an OpenAI tool dict or a bare function
dict turned into OpenAI tool dicts), and a tool call as the parser reads it from a model's text."""

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from supertiny.errors import InvalidInputError


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolSpec(BaseModel):
    """``{"type": "function", "function": {"name", "description", "parameters"}}`` as OpenAI has it."""

    type: Literal["function"] = "function"
    function: FunctionSpec

    @property
    def name(self) -> str:
        return self.function.name

    def openai(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ParsedCall(BaseModel):
    """One function call with its arguments decoded."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


ToolLike = ToolSpec | dict[str, Any]


def tool_dicts(tools: Sequence[ToolLike] | None) -> list[dict[str, Any]] | None:
    """Tools as OpenAI tool dicts (``{"type": "function", "function": {...}}``); None when there are none.

    Bare function dicts (``{"name", "description", "parameters"}``, as BFCL has them) are wrapped.
    """
    if not tools:
        return None
    out = []
    for tool in tools:
        if isinstance(tool, ToolSpec):
            out.append(tool.openai())
        elif isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            out.append(tool)
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str):
            out.append({"type": "function", "function": tool})
        else:
            raise InvalidInputError(f"a tool must be a ToolSpec or an OpenAI tool dict, got {tool!r:.80}")
    return out
