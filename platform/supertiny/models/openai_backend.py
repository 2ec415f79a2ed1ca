"""The ``openai`` backend: any OpenAI-compatible chat completions endpoint (a cloud LLM, ``vllm serve``,
a llama.cpp server, another supertiny server) through langchain-openai's ChatOpenAI.

The location is the base URL (``http://host:8000/v1``; a URL without a path gets ``/v1``). Config keys:

- ``model`` (required): the model name the endpoint serves.
- ``api_key``, or ``api_key_env``: the variable holding it (default ``OPENAI_API_KEY``); local servers
  that want no key get ``"not-needed"``.
- ``timeout_s`` (default 120) and ``max_retries`` (default 2): per request; ``GenerationOptions.timeout_s``
  overrides the timeout of one call.
- ``max_concurrency``: parallel requests in ``generate_batch`` (default 4).
- ``name``: the name the model reports (default: ``model``).

Calls the server returns as ``tool_calls`` are used as they are; a server that returns them as text
(no tool parser configured) is parsed like a local model's answer. ``Generation.text`` of a native call
is rendered as ``<tool_call>`` blocks, so every backend's text parses the same way.
"""

import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from supertiny.errors import BackendTimeoutError, InvalidInputError, ModelError, SupertinyError
from supertiny.models.backend import (
    Capabilities,
    ChatModel,
    Generation,
    GenerationOptions,
    backend_config,
    finish_reason,
    parse_answer,
)
from supertiny.models.parsing import ParseResult
from supertiny.schema import Message, ParsedCall, ToolCall, ToolCallFunction
from supertiny.schema.messages import MessageLike, message_dicts
from supertiny.schema.tools import ToolLike, tool_dicts

CONFIG_KEYS = ("model", "api_key", "api_key_env", "timeout_s", "max_retries", "max_concurrency", "name")


class OpenAIBackend:
    name = "openai"
    hf_weights = False
    description = "an OpenAI-compatible chat endpoint (cloud LLM, vllm serve, llama.cpp, supertiny)"

    def open(self, location: str, config: dict[str, Any]) -> "OpenAIChatModel":
        return OpenAIChatModel(location, config)


class OpenAIChatModel(ChatModel):
    """A model behind an OpenAI-compatible endpoint; ``.llm`` is the underlying LangChain ChatOpenAI."""

    backend = "openai"

    def __init__(self, base_url: str, config: dict[str, Any]):
        config = backend_config("openai", config, CONFIG_KEYS)
        if not config.get("model"):
            raise InvalidInputError("the openai backend needs a model name (config key 'model')")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidInputError(f"not an http(s) URL: {base_url!r}", hint="e.g. http://localhost:8000/v1")
        self.base_url = base_url.rstrip("/") + ("/v1" if parts.path in ("", "/") else "")
        self.model_name = str(config["model"])
        self.name = str(config.get("name") or self.model_name)
        self.timeout_s = float(config.get("timeout_s", 120))
        self.max_concurrency = int(config.get("max_concurrency", 4))
        self.api_key_env = str(config.get("api_key_env", "OPENAI_API_KEY"))
        api_key = config.get("api_key") or os.environ.get(self.api_key_env) or "not-needed"

        from langchain_openai import ChatOpenAI

        self.llm = ChatOpenAI(
            model=self.model_name,
            base_url=self.base_url,
            api_key=api_key,
            timeout=self.timeout_s,
            max_retries=int(config.get("max_retries", 2)),
            use_responses_api=False,
            stream_usage=True,
        )

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(local=False, logprobs=True, token_access=False, batching=True, tokenizer=False,
                            max_concurrency=self.max_concurrency, engine=f"OpenAI-compatible endpoint {self.base_url}")

    def generate(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
                 options: GenerationOptions | None = None) -> Generation:
        options = options or GenerationOptions()
        request = self._request(tools, options)
        conversation = _langchain_messages(messages)
        started = time.perf_counter()
        try:
            answer = self.llm.invoke(conversation, **request)
        except Exception as exc:
            raise self._error(exc, options) from exc
        return _generation(answer, tools, time.perf_counter() - started)

    def generate_batch(self, conversations: Sequence[tuple[Sequence[MessageLike], Sequence[ToolLike] | None]],
                       options: GenerationOptions | None = None) -> list[Generation]:
        """Answer several conversations with up to ``max_concurrency`` requests in flight."""
        with ThreadPoolExecutor(max_workers=max(1, self.max_concurrency)) as pool:
            return list(pool.map(lambda conversation: self.generate(*conversation, options), conversations))

    def stream(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
               options: GenerationOptions | None = None) -> Iterator[str | Generation]:
        options = options or GenerationOptions()
        request = self._request(tools, options)
        conversation = _langchain_messages(messages)
        started = time.perf_counter()
        answer = None
        try:
            for chunk in self.llm.stream(conversation, **request):
                answer = chunk if answer is None else answer + chunk
                if isinstance(chunk.content, str) and chunk.content:
                    yield chunk.content
        except Exception as exc:
            raise self._error(exc, options) from exc
        if answer is None:
            raise ModelError(f"the endpoint {self.base_url} streamed no answer")
        yield _generation(answer, tools, time.perf_counter() - started)

    def close(self) -> None:
        client = getattr(self.llm, "root_client", None)
        if client is not None:
            client.close()

    def _request(self, tools: Sequence[ToolLike] | None, options: GenerationOptions) -> dict[str, Any]:
        request: dict[str, Any] = {"max_tokens": options.max_new_tokens, "temperature": options.temperature}
        if options.top_p != 1.0:
            request["top_p"] = options.top_p
        if options.seed is not None:
            request["seed"] = options.seed
        if options.stop:
            request["stop"] = list(options.stop)
        if options.logprobs:
            request["logprobs"] = True
        if options.timeout_s is not None:
            request["timeout"] = options.timeout_s
        openai_tools = tool_dicts(tools)
        if openai_tools:
            request["tools"] = openai_tools
        return request

    def _error(self, exc: Exception, options: GenerationOptions) -> SupertinyError:
        import httpx
        import openai

        where = f"the OpenAI-compatible endpoint {self.base_url}"
        if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException | TimeoutError):
            timeout = options.timeout_s if options.timeout_s is not None else self.timeout_s
            return BackendTimeoutError(f"{where} did not answer within {timeout:g}s")
        if isinstance(exc, openai.APIConnectionError | httpx.TransportError):
            return ModelError(f"cannot reach {where}: {_root_cause(exc)}")
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return ModelError(f"{where} refused the API key (HTTP {exc.status_code})",
                              hint=f"set {self.api_key_env} or the api_key option")
        if isinstance(exc, openai.APIStatusError):
            detail = re.sub(r"^Error code: \d+ - ", "", _one_line(exc.message))
            return ModelError(f"{where} answered HTTP {exc.status_code}: {detail}")
        return ModelError(f"{where} gave an unusable answer: {type(exc).__name__}: {_one_line(str(exc))}")


def _langchain_messages(messages: Sequence[MessageLike]) -> list[Any]:
    from langchain_core.messages import convert_to_messages

    try:
        return convert_to_messages(message_dicts(messages))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"cannot send these messages: {_one_line(str(exc))}") from exc


def _generation(answer: Any, tools: Sequence[ToolLike] | None, latency_s: float) -> Generation:
    """A Generation from ChatOpenAI's AIMessage (or the sum of its streamed chunks)."""
    content = answer.content if isinstance(answer.content, str) else "".join(
        block.get("text", "") if isinstance(block, dict) else str(block) for block in answer.content)
    metadata = answer.response_metadata or {}
    if answer.tool_calls or answer.invalid_tool_calls:
        parse, message = _native_calls(answer, content)
        text = _render_calls(content, parse.calls)
    else:
        text = content
        parse, message = parse_answer(text, tools)
    logprobs = None
    if isinstance(metadata.get("logprobs"), dict) and metadata["logprobs"].get("content"):
        logprobs = [float(token["logprob"]) for token in metadata["logprobs"]["content"]]
    usage = answer.usage_metadata or {}
    return Generation(
        text=text,
        message=message,
        parse=parse,
        prompt_tokens=int(usage.get("input_tokens", 0)),
        completion_tokens=int(usage.get("output_tokens", len(logprobs or []))),
        latency_s=latency_s,
        finish_reason=finish_reason(parse, metadata.get("finish_reason") == "length"),
        token_logprobs=logprobs,
    )


def _native_calls(answer: Any, content: str) -> tuple[ParseResult, Message]:
    if answer.invalid_tool_calls:
        errors = "; ".join(f"{call.get('name')}: {call.get('error')}" for call in answer.invalid_tool_calls)
        parse = ParseResult(calls=[], content=content, ok=False, reason=f"unreadable tool call: {errors}",
                            format="openai")
        return parse, Message(role="assistant", content=content)
    calls = [ParsedCall(name=call["name"], arguments=call["args"]) for call in answer.tool_calls]
    tool_calls = [
        ToolCall(function=ToolCallFunction(name=call.name, arguments=call.arguments_json()),
                 **({"id": raw["id"]} if raw.get("id") else {}))
        for call, raw in zip(calls, answer.tool_calls, strict=True)
    ]
    parse = ParseResult(calls=calls, content=content or None, ok=True, format="openai")
    return parse, Message(role="assistant", content=content or None, tool_calls=tool_calls)


def _render_calls(content: str, calls: list[ParsedCall]) -> str:
    blocks = [f"<tool_call>\n{json.dumps(call.model_dump(), ensure_ascii=False)}\n</tool_call>"
              for call in calls]
    return "\n".join([content, *blocks] if content else blocks)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return _one_line(str(exc)) or type(exc).__name__


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
