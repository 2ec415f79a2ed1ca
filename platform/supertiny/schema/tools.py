"""Tools in the OpenAI format, and a tool call as the parser reads it from a model's text."""

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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
