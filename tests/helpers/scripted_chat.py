"""A LangChain chat model that answers from a script: failure injection and agent-loop tests only.
Tests of real generation use the tiny in-process transformers models."""

import itertools
import time
from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult


class ScriptedChatModel(BaseChatModel):
    """``respond(messages, kwargs) -> AIMessage`` decides each answer."""

    respond: Callable[[list[BaseMessage], dict[str, Any]], AIMessage]
    delay_s: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools, **kwargs):
        return self.bind(tools=tools, **kwargs)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        if self.delay_s:
            time.sleep(self.delay_s)
        message = self.respond(messages, kwargs)
        message.usage_metadata = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
        return ChatResult(generations=[ChatGeneration(message=message)])


_ids = itertools.count()


def call(name: str, **args: Any) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call_{next(_ids)}"}])


def weather_oracle(messages, kwargs) -> AIMessage:
    """Answers toy-weather tasks right by reading the city and unit from the question."""
    question = messages[-1].content
    city = question.split(" in ")[1]
    unit = question.split(" in ")[2].rstrip("?")
    return call("get_weather", city=city, unit=unit)
