"""``POST /v1/chat/completions``: parse and check the request, route it, answer as OpenAI does (JSON or
SSE), and log it once. Model work runs in worker threads; the event loop only parses and writes."""

import contextlib
import dataclasses
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio.to_thread
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from supertiny.errors import InvalidInputError, SupertinyError
from supertiny.models.backend import GenerationOptions
from supertiny.policy.policy_store import ActivePolicy
from supertiny.policy.router import Outcome, RouteRequest
from supertiny.schema.openai import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkWriter,
    TokenLogprob,
    Usage,
)
from supertiny.serve.auth import AuthenticationError
from supertiny.serve.errors import RequestFieldError, RouteNotFoundError, error_body, error_response, validation_error
from supertiny.serve.request_log import LogEntry

log = logging.getLogger("supertiny.serve")
UNKNOWN_ROUTE = "_unknown"  # the metrics label of requests that named no route (bounded cardinality)
MAX_SCHEMA_DEPTH = 32  # a tool's parameters schema; jsonschema checks it recursively
# OpenAI's function-name pattern, plus dots: namespaced function names (BFCL's `math.factorial`) are common
TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}")


@dataclasses.dataclass
class _Request:
    """What is known of one request so far; ``finish`` logs it and counts it, once."""

    state: Any
    request_id: str
    started: float
    api_key_id: int | None = None
    route: str = ""
    known_route: bool = False
    policy: ActivePolicy | None = None
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)
    done: bool = False

    def finish(self, status: int, outcome: Outcome | None = None, response: dict[str, Any] | None = None,
               error: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        latency = time.perf_counter() - self.started
        self.state.metrics.observe(self.route if self.known_route else UNKNOWN_ROUTE, status, latency, outcome)
        entry = LogEntry(
            request_id=self.request_id, route=self.route, request=self.payload, response=response,
            policy_id=self.policy.id if self.policy else None,
            policy_version=self.policy.version if self.policy else None, api_key_id=self.api_key_id,
            latency_ms=round(latency * 1000, 3), status=status, error=error,
        )
        if outcome is not None:
            generation = outcome.generation
            entry.served_by = outcome.model
            entry.confidence = outcome.confidence
            entry.escalated = outcome.escalated
            entry.llm_token_share = outcome.llm_token_share
            entry.prompt_tokens = generation.prompt_tokens
            entry.completion_tokens = generation.completion_tokens
            entry.detail = outcome.log_detail()
            if outcome.shadow is not None:
                route, metrics, writer = self.route, self.state.metrics, self.state.log_writer

                def log_with_shadow(future: Any) -> None:
                    try:
                        shadow = future.result()
                    except BaseException as exc:  # cancelled at shutdown
                        shadow = {"error": f"{type(exc).__name__}: {exc}"}
                    metrics.observe_shadow(route, shadow)
                    entry.detail = {**(entry.detail or {}), "shadow": shadow}
                    writer.submit(entry)

                outcome.shadow.add_done_callback(log_with_shadow)
                return
        self.state.log_writer.submit(entry)


def _parse_body(body: bytes, limit: int, max_depth: int) -> dict[str, Any]:
    if len(body) > limit:
        raise RequestFieldError(f"request body of {len(body)} bytes is larger than the limit of {limit}",
                                code="request_too_large")
    try:
        payload = json.loads(body)
    except RecursionError:
        raise RequestFieldError(f"the request body nests deeper than {max_depth} levels",
                                code="too_deeply_nested") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestFieldError(f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise RequestFieldError("the request body must be a JSON object", code="invalid_json")
    if nesting_depth(payload, max_depth) > max_depth:
        raise RequestFieldError(f"the request body nests deeper than {max_depth} levels", code="too_deeply_nested")
    return payload


def nesting_depth(value: Any, limit: int) -> int:
    """How deep ``value`` nests (objects and arrays), counted without recursion; stops counting past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_tool_choice(chat: ChatCompletionRequest) -> None:
    from supertiny.schema.openai import NamedToolChoice

    if isinstance(chat.tool_choice, NamedToolChoice):
        names = {tool.name for tool in chat.tools or []}
        if chat.tool_choice.function.name not in names:
            raise RequestFieldError(f"tool_choice names {chat.tool_choice.function.name!r}, which is not in tools",
                                    param="tool_choice", code="invalid_value")
    elif chat.tool_choice == "required" and not chat.tools:
        raise RequestFieldError('tool_choice "required" needs tools', param="tool_choice", code="invalid_value")


def _check_tools(chat: ChatCompletionRequest) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    from supertiny.models.tool_schemas import normalize_json_schema

    seen: set[str] = set()
    for index, tool in enumerate(chat.tools or []):
        param = f"tools.{index}.function"
        if not TOOL_NAME.fullmatch(tool.name):
            raise RequestFieldError(f"invalid tool name {tool.name!r}: letters, digits, '_', '-' and '.' only",
                                    param=f"{param}.name", code="invalid_value")
        if tool.name in seen:
            raise RequestFieldError(f"two tools are named {tool.name!r}", param=f"{param}.name", code="duplicate_tool")
        seen.add(tool.name)
        if nesting_depth(tool.function.parameters, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
            raise RequestFieldError(f"the parameters schema of tool {tool.name!r} nests deeper than "
                                    f"{MAX_SCHEMA_DEPTH} levels", param=f"{param}.parameters", code="too_deeply_nested")
        try:
            Draft202012Validator.check_schema(normalize_json_schema(tool.function.parameters))
        except SchemaError as exc:
            raise RequestFieldError(f"the parameters of tool {tool.name!r} are not a valid JSON Schema: {exc.message}",
                                    param=f"{param}.parameters", code="invalid_tool_schema") from exc


def _route_request(state: Any, request_id: str, routing_id: str, chat: ChatCompletionRequest) -> RouteRequest:
    options = state.options
    max_tokens = chat.max_new_tokens or options.default_max_tokens
    if max_tokens > options.max_tokens_limit:
        param = "max_completion_tokens" if chat.max_completion_tokens else "max_tokens"
        raise RequestFieldError(f"{param} is {max_tokens}; this server allows at most {options.max_tokens_limit}",
                                param=param)
    generation_options = GenerationOptions(
        max_new_tokens=max_tokens, temperature=chat.temperature or 0.0, top_p=chat.top_p or 1.0, seed=chat.seed,
        logprobs=True, stop=chat.stop_sequences, timeout_s=options.request_timeout_s,
    )
    return RouteRequest(request_id=routing_id, messages=chat.chat_messages(), tools=chat.offered_tools(),
                        options=generation_options, call_required=chat.call_required)


def _at_most_one_call(chat: ChatCompletionRequest, outcome: Outcome) -> None:
    """``parallel_tool_calls: false``: the answer keeps its first call only (the log says how many it had)."""
    message = outcome.generation.message
    if chat.parallel_tool_calls is False and message.tool_calls and len(message.tool_calls) > 1:
        outcome.detail["calls_dropped"] = len(message.tool_calls) - 1
        outcome.generation.message = message.model_copy(update={"tool_calls": message.tool_calls[:1]})


def _extension(request: _Request, outcome: Outcome) -> dict[str, Any]:
    return {
        "request_id": request.request_id, "route": request.route, "policy_version": outcome.policy.version,
        "kind": outcome.policy.kind, "served_by": outcome.model, "tier": outcome.role,
        "escalated": outcome.escalated, "reason": outcome.reason, "confidence": outcome.confidence,
        "llm_token_share": outcome.llm_token_share, "fallback": outcome.fallback is not None,
        "model_ms": round(outcome.model_s * 1000, 3),
        **({"decoding": outcome.detail["decoding"]} if outcome.detail.get("decoding") else {}),
    }


def _logprobs(state: Any, outcome: Outcome) -> ChoiceLogprobs | None:
    """The answer's token log-probabilities, with the token text when the serving model has a tokenizer."""
    generation = outcome.generation
    if not generation.token_logprobs:
        return None
    tokenizer = None
    if outcome.role != "hybrid":
        with contextlib.suppress(Exception):
            model = state.models.get(outcome.model)
            tokenizer = model.tokenizer if model.capabilities.tokenizer else None  # type: ignore[attr-defined]
    ids = generation.token_ids or []
    tokens = []
    for index, logprob in enumerate(generation.token_logprobs):
        text = tokenizer.decode([ids[index]]) if tokenizer is not None and index < len(ids) else ""
        tokens.append(TokenLogprob(token=text, logprob=logprob, bytes=list(text.encode()) if text else None))
    return ChoiceLogprobs(content=tokens)


def _completion(request: _Request, chat: ChatCompletionRequest, outcome: Outcome) -> ChatCompletion:
    generation = outcome.generation
    message = AssistantMessage(content=generation.message.content, tool_calls=generation.message.tool_calls or None)
    logprobs = _logprobs(request.state, outcome) if chat.logprobs else None
    return ChatCompletion(
        id=request.request_id, model=chat.model,
        choices=[Choice(message=message, finish_reason=generation.finish_reason, logprobs=logprobs)],
        usage=Usage.of(generation.prompt_tokens, generation.completion_tokens),
        supertiny=_extension(request, outcome),
    )


def _headers(request: _Request, outcome: Outcome | None = None) -> dict[str, str]:
    headers = {"x-request-id": request.request_id}
    if outcome is not None:
        headers["x-supertiny-served-by"] = outcome.model
        headers["x-supertiny-model-ms"] = f"{outcome.model_s * 1000:.3f}"
    return headers


async def chat_completions(http_request: Request) -> Response:
    state = http_request.app.state
    request = _Request(state=state, request_id=f"chatcmpl-{uuid.uuid4().hex}", started=time.perf_counter())
    authorization = http_request.headers.get("authorization")
    try:
        try:
            known, request.api_key_id = state.keys.peek(authorization)  # the cache answers without a thread hop
            if not known:
                request.api_key_id = await run_in_threadpool(state.keys.check, authorization)
        except AuthenticationError as exc:  # counted, not logged: unauthenticated clients cannot fill the log
            state.metrics.observe(UNKNOWN_ROUTE, exc.http_status, time.perf_counter() - request.started)
            return error_response(exc, headers={"www-authenticate": "Bearer"})
        body = await http_request.body()
        try:
            request.payload = _parse_body(body, state.options.max_body_bytes, state.options.max_json_depth)
        except RequestFieldError:
            request.payload = {"raw": body[:2000].decode("utf-8", "replace")}
            raise
        request.route = str(request.payload.get("model") or "")[:200]
        try:
            chat = ChatCompletionRequest.model_validate(request.payload)
        except ValidationError as exc:
            raise validation_error(list(exc.errors(include_url=False))) from None
        known, request.policy = state.policies.peek(chat.model)
        if not known:
            request.policy = await run_in_threadpool(state.policies.active_policy, chat.model)
        if request.policy is None:
            raise RouteNotFoundError(f"the model {chat.model!r} does not exist: no route of this server has an "
                                     "active policy of that name", hint="GET /v1/models lists the routes")
        request.known_route = True
        _check_tool_choice(chat)
        _check_tools(chat)
        routing_id = http_request.headers.get("x-request-id", "")[:200] or request.request_id
        route_request = _route_request(state, request.request_id, routing_id, chat)
        if chat.stream:
            # the first item (the routing, and the first delta or the whole answer) before any header is sent:
            # a request that fails there gets its real status, not a 200 stream holding an error
            items = state.router.route_stream(request.policy, route_request)
            first = await anyio.to_thread.run_sync(next, items, None, limiter=state.limiter)
            return _stream_response(state, request, chat, first, items)
        outcome = await anyio.to_thread.run_sync(state.router.route, request.policy, route_request,
                                                 limiter=state.limiter)
        _at_most_one_call(chat, outcome)
        body_out = _completion(request, chat, outcome).wire()
        request.finish(200, outcome, body_out)
        return JSONResponse(body_out, headers=_headers(request, outcome))
    except SupertinyError as exc:
        request.finish(exc.http_status, error=str(exc))
        return error_response(exc, headers=_headers(request))
    except Exception as exc:
        log.exception("chat completion %s failed", request.request_id)
        request.finish(500, error=f"{type(exc).__name__}: {exc}"[:2000])
        return error_response(exc, headers=_headers(request))


def _stream_response(state: Any, request: _Request, chat: ChatCompletionRequest, first: str | Outcome | None,
                     items: Iterator[str | Outcome]) -> Response:
    from sse_starlette import EventSourceResponse, ServerSentEvent

    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)

    def events() -> Iterator[ServerSentEvent]:
        writer = ChunkWriter(request.request_id, chat.model)
        outcome: Outcome | None = None
        try:
            for item in itertools.chain([] if first is None else [first], items):
                if isinstance(item, str):
                    for chunk in writer.content(item):
                        yield ServerSentEvent(data=chunk.wire())
                else:
                    outcome = item
                    _at_most_one_call(chat, outcome)
            if outcome is None:  # pragma: no cover - route_stream always ends with an outcome
                raise InvalidInputError("the router produced no answer")
            message = outcome.generation.message
            if not outcome.streamed and message.content:
                for chunk in writer.content(message.content):
                    yield ServerSentEvent(data=chunk.wire())
            if message.tool_calls:
                for chunk in writer.tool_calls(message.tool_calls):
                    yield ServerSentEvent(data=chunk.wire())
            generation = outcome.generation
            usage = Usage.of(generation.prompt_tokens, generation.completion_tokens)
            for chunk in writer.finish(generation.finish_reason, usage if include_usage else None,
                                       supertiny=_extension(request, outcome)):
                yield ServerSentEvent(data=chunk.wire())
            # logged before the end marker: a client that has read [DONE] finds its request in the log
            request.finish(200, outcome, _completion(request, chat, outcome).wire())
            yield ServerSentEvent(data="[DONE]")
        except SupertinyError as exc:  # after the headers: an error event, then the end marker
            request.finish(exc.http_status, error=str(exc))
            yield ServerSentEvent(data=json.dumps(error_body(exc)[1]))
            yield ServerSentEvent(data="[DONE]")
        except Exception as exc:
            log.exception("streamed chat completion %s failed", request.request_id)
            request.finish(500, error=f"{type(exc).__name__}: {exc}"[:2000])
            yield ServerSentEvent(data=json.dumps(error_body(exc)[1]))
            yield ServerSentEvent(data="[DONE]")
        finally:
            if not request.done:  # the client went away mid-stream
                request.finish(499, outcome, error="client closed the stream")

    return EventSourceResponse(events(), sep="\n", headers=_headers(request))
