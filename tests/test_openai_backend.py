"""The openai backend against a real local HTTP server speaking the OpenAI chat completions API."""

import json
import socket
import threading
import time

import pytest
from helpers.chat_inputs import WEATHER_TOOL
from supertiny.errors import BackendTimeoutError, ModelError
from supertiny.models.backend import GenerationOptions
from supertiny.models.openai_backend import OpenAIBackend

LOGPROBS = [-0.01, -0.2, -0.05]


def _completion(body: dict, message: dict, finish_reason: str) -> dict:
    choice = {"index": 0, "message": message, "finish_reason": finish_reason}
    if body.get("logprobs"):
        choice["logprobs"] = {"content": [{"token": f"t{i}", "logprob": value, "bytes": None, "top_logprobs": []}
                                          for i, value in enumerate(LOGPROBS)]}
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": [choice],
        "usage": {"prompt_tokens": 31, "completion_tokens": len(LOGPROBS), "total_tokens": 31 + len(LOGPROBS)},
    }


def _app():
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()
    app.state.requests = []

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        import asyncio

        body = await request.json()
        app.state.requests.append(body)
        question = body["messages"][-1].get("content") or ""
        if "sleep" in question:
            await asyncio.sleep(3)
        if "broken" in question:
            return JSONResponse({"error": {"message": "the model crashed\nstack trace"}}, status_code=500)
        if body.get("stream"):
            def events():
                for piece in ["It is ", "sunny ", "today."]:
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                end = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}
                yield f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        if "weather" in question and body.get("tools"):
            call = {"id": "call_abc", "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            return _completion(body, message, "tool_calls")
        if "as text" in question:
            text = '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```'
            return _completion(body, {"role": "assistant", "content": text}, "stop")
        return _completion(body, {"role": "assistant", "content": "Hello there."}, "stop")

    return app


@pytest.fixture(scope="module")
def server():
    import uvicorn

    app = _app()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield app, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()


def _open(url: str, **config):
    return OpenAIBackend().open(url, {"model": "teacher", "max_retries": 0, **config})


def test_native_tool_calls_round_trip_into_the_generation(server):
    app, url = server
    model = _open(url)
    generation = model.generate([{"role": "user", "content": "weather in Paris?"}], [WEATHER_TOOL])

    assert generation.finish_reason == "tool_calls"
    assert generation.message.content is None
    [call] = generation.message.tool_calls
    assert call.id == "call_abc" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert generation.parse.ok and generation.parse.calls[0].arguments == {"city": "Paris"}
    assert generation.text == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert (generation.prompt_tokens, generation.completion_tokens) == (31, 3)
    assert generation.token_logprobs == LOGPROBS and 0 < generation.confidence < 1
    assert generation.latency_s > 0

    sent = app.state.requests[-1]
    assert sent["model"] == "teacher" and sent["tools"] == [WEATHER_TOOL] and sent["logprobs"] is True
    assert sent["messages"] == [{"role": "user", "content": "weather in Paris?"}]


def test_plain_answer_has_no_calls_and_respects_options(server):
    app, url = server
    model = _open(url)
    options = GenerationOptions(max_new_tokens=17, temperature=0.5, seed=7, logprobs=False, stop=["\n\n"])
    generation = model.generate([{"role": "user", "content": "hello"}], [WEATHER_TOOL], options)

    assert generation.text == "Hello there." and generation.message.content == "Hello there."
    assert generation.message.tool_calls is None and generation.finish_reason == "stop"
    assert generation.token_logprobs is None
    sent = app.state.requests[-1]
    assert sent.get("max_completion_tokens", sent.get("max_tokens")) == 17
    assert (sent["temperature"], sent["seed"], sent["stop"]) == (0.5, 7, ["\n\n"])
    assert "logprobs" not in sent


def test_calls_the_server_returns_as_text_are_parsed(server):
    _, url = server
    generation = _open(url).generate([{"role": "user", "content": "answer as text"}], [WEATHER_TOOL])
    assert generation.parse.format == "json_fence"
    assert generation.message.tool_calls[0].function.name == "get_weather"
    assert generation.finish_reason == "tool_calls"


def test_a_full_tool_conversation_is_sent_in_openai_format(server):
    app, url = server
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    _open(url).generate(messages, [WEATHER_TOOL])
    sent = app.state.requests[-1]["messages"]
    assert [message["role"] for message in sent] == ["system", "user", "assistant", "tool"]
    assert sent[2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert sent[3] == {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}


def test_stream_yields_deltas_then_the_generation(server):
    _, url = server
    parts = list(_open(url).stream([{"role": "user", "content": "hello"}], None))
    *deltas, generation = parts
    assert deltas == ["It is ", "sunny ", "today."]
    assert generation.text == "It is sunny today." and generation.completion_tokens == 3


def test_generate_batch_keeps_the_order(server):
    _, url = server
    conversations = [([{"role": "user", "content": "weather?"}], [WEATHER_TOOL]),
                     ([{"role": "user", "content": "hello"}], None)]
    first, second = _open(url, max_concurrency=2).generate_batch(conversations)
    assert first.finish_reason == "tool_calls" and second.text == "Hello there."


def test_unreachable_endpoint_is_a_one_line_model_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(ModelError) as info:
        _open(f"http://127.0.0.1:{port}/v1").generate([{"role": "user", "content": "hi"}])
    assert not isinstance(info.value, BackendTimeoutError)
    message = str(info.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "cannot reach" in message


def test_http_error_is_a_one_line_model_error(server):
    _, url = server
    with pytest.raises(ModelError, match=r"answered HTTP 500: the model crashed$"):
        _open(url).generate([{"role": "user", "content": "broken"}])


def test_slow_server_is_a_backend_timeout(server):
    _, url = server
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError, match=r"did not answer within 0\.5s"):
        _open(url).generate([{"role": "user", "content": "sleep"}], options=GenerationOptions(timeout_s=0.5))
    assert time.monotonic() - started < 2.5


def test_missing_model_name_is_an_input_error():
    from supertiny.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="needs a model name"):
        OpenAIBackend().open("http://127.0.0.1:1/v1", {})
