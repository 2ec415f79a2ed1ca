"""Every supertiny ChatModel as a LangChain chat model, so any backend can drive a LangChain
tool-calling loop (the prototype agent) and any LangChain code can call a tiny model.

``SupertinyChatModel(model=opened_model).bind_tools([...]).invoke(messages)`` returns an AIMessage
with LangChain ``tool_calls``, ``usage_metadata`` and ``response_metadata`` (latency, finish reason,
per-token log-probabilities and their geometric-mean ``confidence``).

``tool_choice`` can only narrow the tools offered (``"none"`` offers none, a tool name offers that one):
a local model cannot be forced to call. Per-call keyword arguments (``max_tokens``, ``temperature``,
``top_p``, ``seed``, ``timeout_s``, ``logprobs``, ``guided``) override the model's fields; ``n`` asks for that many
answers to the same conversation in one request (``generate([messages], n=8)`` has them all).
"""

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from supertiny.errors import InvalidInputError
from supertiny.models.backend import ChatModel, Generation, GenerationOptions

_ROLES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant",
          "system": "system", "developer": "system", "tool": "tool"}
_OPTION_KWARGS = {"max_tokens": "max_new_tokens", "max_new_tokens": "max_new_tokens",
                  "temperature": "temperature", "top_p": "top_p", "seed": "seed",
                  "timeout_s": "timeout_s", "logprobs": "logprobs", "guided": "guided"}


class SupertinyChatModel(BaseChatModel):
    """A LangChain chat model backed by a supertiny :class:`ChatModel` (any backend)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: ChatModel
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = True
    timeout_s: float | None = None

    @property
    def _llm_type(self) -> str:
        return "supertiny"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model.name, "backend": self.model.backend,
                "temperature": self.temperature, "max_new_tokens": self.max_new_tokens}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer tools (LangChain tools, pydantic models, typed functions or OpenAI dicts) on every call."""
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools = _chosen_tools(kwargs.pop("tools", None), kwargs.pop("tool_choice", None))
        n = int(kwargs.pop("n", 1) or 1)
        conversation, options = to_openai_messages(messages), self._options(stop, kwargs)
        answers = [self.model.generate(conversation, tools, options)] if n == 1 else \
            self.model.generate_samples(conversation, tools, options, n)
        generations = [ChatGeneration(message=ai_message(generation, self.model),
                                      generation_info={"finish_reason": generation.finish_reason})
                       for generation in answers]
        return ChatResult(
            generations=generations,
            llm_output={"model_name": self.model.name, "token_usage": generations[0].message.usage_metadata},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Text deltas as they come; with tools offered, one chunk at the end (a delta cannot tell
        whether it is prose or the start of a call)."""
        tools = _chosen_tools(kwargs.pop("tools", None), kwargs.pop("tool_choice", None))
        conversation = to_openai_messages(messages)
        options = self._options(stop, kwargs)
        if tools:
            generation = self.model.generate(conversation, tools, options)
            yield ChatGenerationChunk(message=_final_chunk(generation, self.model, streamed_text=False))
            return
        for item in self.model.stream(conversation, None, options):
            if isinstance(item, Generation):
                yield ChatGenerationChunk(message=_final_chunk(item, self.model, streamed_text=True),
                                          generation_info={"finish_reason": item.finish_reason})
            else:
                if run_manager:
                    run_manager.on_llm_new_token(item)
                yield ChatGenerationChunk(message=AIMessageChunk(content=item))

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> GenerationOptions:
        options = GenerationOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                    top_p=self.top_p, seed=self.seed, logprobs=self.logprobs,
                                    timeout_s=self.timeout_s, stop=tuple(stop or ()))
        overrides = {_OPTION_KWARGS[key]: value for key, value in kwargs.items() if key in _OPTION_KWARGS}
        options = dataclasses.replace(options, **overrides)
        if options.guided and not self.model.capabilities.guided:
            raise InvalidInputError(f"{self.model.name} cannot decode guided tool calls on its "
                                    f"{self.model.capabilities.engine or self.model.backend} backend",
                                    hint=f"serve it on an engine: supertiny engine start {self.model.name}")
        return options


def to_openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as OpenAI chat dicts: AI tool calls with JSON-string arguments, tool results
    as role ``tool`` with their ``tool_call_id``."""
    out = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": _text(message.content)})
        elif isinstance(message, HumanMessage):
            out.append({"role": "user", "content": _text(message.content)})
        elif isinstance(message, AIMessage):
            converted: dict[str, Any] = {"role": "assistant", "content": _text(message.content) or None}
            if message.tool_calls:
                converted["tool_calls"] = [
                    {"id": call.get("id") or f"call_{index}", "type": "function",
                     "function": {"name": call["name"],
                                  "arguments": json.dumps(call["args"], ensure_ascii=False)}}
                    for index, call in enumerate(message.tool_calls)
                ]
            elif converted["content"] is None:
                converted["content"] = ""
            out.append(converted)
        elif isinstance(message, ToolMessage):
            content = message.content if isinstance(message.content, str) else _text(message.content)
            out.append({"role": "tool", "tool_call_id": message.tool_call_id, "content": content})
        elif isinstance(message, ChatMessage) and message.role in _ROLES:
            out.append({"role": _ROLES[message.role], "content": _text(message.content)})
        else:
            raise InvalidInputError(f"cannot send a {type(message).__name__} to a supertiny model")
    return out


def ai_message(generation: Generation, chat_model: ChatModel) -> AIMessage:
    """The LangChain AIMessage for a Generation."""
    return AIMessage(
        content=generation.message.content or "",
        tool_calls=[{"name": call.function.name, "args": call.parsed().arguments, "id": call.id,
                     "type": "tool_call"} for call in generation.message.tool_calls or []],
        invalid_tool_calls=_invalid_calls(generation),
        usage_metadata=_usage(generation),
        response_metadata=_metadata(generation, chat_model),
    )


def _final_chunk(generation: Generation, chat_model: ChatModel, streamed_text: bool) -> AIMessageChunk:
    return AIMessageChunk(
        content="" if streamed_text else generation.message.content or "",
        tool_call_chunks=[{"name": call.function.name, "args": call.function.arguments, "id": call.id,
                           "index": index, "type": "tool_call_chunk"}
                          for index, call in enumerate(generation.message.tool_calls or [])],
        invalid_tool_calls=_invalid_calls(generation),
        usage_metadata=_usage(generation),
        response_metadata=_metadata(generation, chat_model),
    )


def _chosen_tools(tools: list[dict[str, Any]] | None, tool_choice: Any) -> list[dict[str, Any]] | None:
    if not tools or tool_choice in (None, "auto", "any", "required", True):
        return tools or None
    if tool_choice in ("none", False):
        return None
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else tool_choice
    chosen = [tool for tool in tools if tool["function"]["name"] == name]
    if not chosen:
        raise InvalidInputError(f"tool_choice names {name!r}, which is not among the bound tools")
    return chosen


def _invalid_calls(generation: Generation) -> list[dict[str, Any]]:
    if generation.parse.ok:
        return []
    return [{"name": None, "args": generation.text, "id": None, "error": generation.parse.reason,
             "type": "invalid_tool_call"}]


def _usage(generation: Generation) -> dict[str, int]:
    return {"input_tokens": generation.prompt_tokens, "output_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens}


def _metadata(generation: Generation, chat_model: ChatModel) -> dict[str, Any]:
    return {
        "model_name": chat_model.name,
        "model_provider": "supertiny",
        "backend": chat_model.backend,
        "finish_reason": generation.finish_reason,
        "latency_s": generation.latency_s,
        "confidence": generation.confidence,
        "token_logprobs": generation.token_logprobs,
        "parse_format": generation.parse.format,
    }


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)
