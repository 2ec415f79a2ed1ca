"""Pydantic wire types shared by every stage: tools, tool calls, chat messages."""

from supertiny.schema.messages import Message, ToolCall, ToolCallFunction
from supertiny.schema.tools import FunctionSpec, ParsedCall, ToolSpec

__all__ = ["FunctionSpec", "Message", "ParsedCall", "ToolCall", "ToolCallFunction", "ToolSpec"]
