"""The server against unmodified clients (the official openai SDK and LangChain's ChatOpenAI), with a
live uvicorn in a background thread: tool calls, streaming, routing, fallback, hot policy changes,
request logging and metrics."""

import concurrent.futures
import json
import time

import httpx
import openai
import pytest
import sqlalchemy as sa
from helpers.chat_models import BROKEN_CALL, GOOD_CALL, WEATHER_TOOL, ScriptedModel, broken
from supertiny.config import Settings
from supertiny.models.transformers_backend import TransformersChatModel
from supertiny.policy.policy_store import set_policy
from supertiny.policy.pool import ModelPool
from supertiny.serve.app import ServeOptions, create_app
from supertiny.serve.background import BackgroundServer
from supertiny.store.tables import RequestLog

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL_TOKENS = len(GOOD_CALL.split())  # scripted models count words as tokens
TTL = 0.2


@pytest.fixture(scope="module")
def tiny_pair(tiny_model_dir, tiny_teacher_dir):
    return TransformersChatModel.load(tiny_model_dir), TransformersChatModel.load(tiny_teacher_dir)


@pytest.fixture
def server(sqlite_store, tiny_pair, tmp_path):
    pool = ModelPool(lambda name: (_ for _ in ()).throw(FileNotFoundError(name)))
    for name, model in (("student", tiny_pair[0]), ("teacher", tiny_pair[1])):
        pool.add(name, model)
    for model in (ScriptedModel("caller", GOOD_CALL, probability=0.95), ScriptedModel("unsure", GOOD_CALL, 0.1),
                  ScriptedModel("sloppy", BROKEN_CALL, probability=0.99), broken("broken"),
                  ScriptedModel("slow", GOOD_CALL, delay_s=5), ScriptedModel("twice", f"{GOOD_CALL}\n{GOOD_CALL}"),
                  ScriptedModel("chatty", "It is sunny."), ScriptedModel("reluctant", _calls_when_told)):
        pool.add(model.name, model, concurrency=64)
    options = ServeOptions(policy_ttl_s=TTL, key_ttl_s=TTL, log_flush_interval_s=0.02, max_tokens_limit=512)
    app = create_app(Settings(home=tmp_path, database_url=sqlite_store.url), options, store=sqlite_store, pool=pool)
    set_policy(sqlite_store, "weather", "tiny", {"tiny": "caller"})
    with BackgroundServer(app) as live:
        live.app = app
        live.store = sqlite_store
        yield live
    pool.close()


def _calls_when_told(messages) -> str:
    last = messages[-1]
    content = last.content if hasattr(last, "content") else last["content"]
    return GOOD_CALL if "Answer only with a call" in (content or "") else "It is sunny."


def client(server, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=60)


def logs(server) -> list[RequestLog]:
    assert server.app.state.log_writer.flush(20)
    with server.store.session() as session:
        return list(session.scalars(sa.select(RequestLog).order_by(RequestLog.id)))


def test_openai_client_gets_tool_calls_as_openai_returns_them(server):
    answer = client(server).chat.completions.create(model="weather", messages=QUESTION, tools=[WEATHER_TOOL])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert answer.model == "weather" and answer.usage.total_tokens == answer.usage.prompt_tokens + CALL_TOKENS
    row = logs(server)[-1]
    assert (row.request_id, row.route, row.served_by, row.status, row.policy_version) == \
        (answer.id, "weather", "caller", 200, 1)
    assert row.response["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert row.request["messages"] == QUESTION and row.latency_ms > 0 and row.completion_tokens == CALL_TOKENS


def test_openai_client_streams_tool_calls_as_openai_streams_them(server):
    stream = client(server).chat.completions.create(model="weather", messages=QUESTION, tools=[WEATHER_TOOL],
                                                     stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [delta for chunk in chunks if chunk.choices for delta in chunk.choices[0].delta.tool_calls or []]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    assert json.loads("".join(delta.function.arguments or "" for delta in deltas)) == {"city": "Paris"}
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == CALL_TOKENS
    assert len(logs(server)) == 1


def test_text_streams_live_from_a_real_tiny_model_and_matches_the_plain_answer(server):
    set_policy(server.store, "chat", "tiny", {"tiny": "student"})
    api = client(server)
    plain = api.chat.completions.create(model="chat", messages=QUESTION, max_tokens=12)
    streamed = list(api.chat.completions.create(model="chat", messages=QUESTION, max_tokens=12, stream=True))
    pieces = [chunk.choices[0].delta.content for chunk in streamed if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == plain.choices[0].message.content
    assert plain.choices[0].finish_reason == "length" and plain.usage.completion_tokens == 12
    scored = api.chat.completions.create(model="chat", messages=QUESTION, max_tokens=12, logprobs=True)
    tokens = scored.choices[0].logprobs.content
    assert len(tokens) == 12 and all(token.logprob <= 0 for token in tokens)
    assert "".join(token.token for token in tokens) == scored.choices[0].message.content


def test_langchain_bind_tools_works_unchanged(server):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str, unit: str = "celsius") -> str:
        """Current weather of a city."""
        return "sunny"

    llm = ChatOpenAI(model="weather", base_url=server.base_url, api_key="unused", max_retries=0)
    bound = llm.bind_tools([get_weather])
    answer = bound.invoke("What is the weather in Paris?")
    assert answer.tool_calls[0]["name"] == "get_weather" and answer.tool_calls[0]["args"] == {"city": "Paris"}
    merged = None
    for chunk in bound.stream("What is the weather in Paris?"):
        merged = chunk if merged is None else merged + chunk
    assert merged.tool_calls[0]["name"] == "get_weather" and merged.tool_calls[0]["args"] == {"city": "Paris"}


def test_models_health_and_metrics(server):
    set_policy(server.store, "chat", "cascade", {"tiny": "student", "llm": "teacher"})
    models = client(server).models.list()
    assert sorted(model.id for model in models.data) == ["chat", "weather"]
    client(server).chat.completions.create(model="weather", messages=QUESTION, tools=[WEATHER_TOOL])
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["database"] == "ok"
    memory = health["model_memory"]
    resident = {model["name"]: model for model in memory["models_resident"]}
    assert resident["student"]["bytes"] > 0 and resident["caller"]["bytes"] == 0  # an in-process model, a scripted one
    assert 0 < memory["used_bytes"] <= memory["budget_bytes"]
    text = httpx.get(f"{server.url}/metrics").text
    assert 'supertiny_requests_total{route="weather",status="200"} 1.0' in text
    assert 'supertiny_tier_share{route="weather",tier="tiny"} 1.0' in text
    assert "supertiny_request_latency_seconds_bucket" in text and "supertiny_request_log_pending" in text


def test_a_policy_change_applies_without_restart(server):
    api = client(server)
    first = api.chat.completions.create(model="weather", messages=QUESTION, tools=[WEATHER_TOOL])
    set_policy(server.store, "weather", "llm", {"llm": "unsure"})
    time.sleep(TTL + 0.05)
    second = api.chat.completions.create(model="weather", messages=QUESTION, tools=[WEATHER_TOOL])
    assert (first.supertiny["served_by"], first.supertiny["policy_version"]) == ("caller", 1)
    assert (second.supertiny["served_by"], second.supertiny["policy_version"]) == ("unsure", 2)


def test_cascade_escalations_are_answered_and_logged(server):
    set_policy(server.store, "weather", "cascade", {"tiny": "sloppy", "llm": "caller", "threshold": 0.5})
    set_policy(server.store, "unsure", "cascade", {"tiny": "unsure", "llm": "caller", "threshold": 0.5})
    time.sleep(TTL + 0.05)
    api = client(server)
    invalid = api.chat.completions.create(model="weather", messages=QUESTION, tools=[WEATHER_TOOL])
    low = api.chat.completions.create(model="unsure", messages=QUESTION, tools=[WEATHER_TOOL])
    assert invalid.choices[0].message.tool_calls and invalid.supertiny["reason"] == "invalid_call"
    assert low.supertiny["escalated"] and low.supertiny["reason"] == "low_confidence"
    rows = {row.request_id: row for row in logs(server)}
    assert rows[invalid.id].escalated and rows[invalid.id].served_by == "caller"
    assert rows[low.id].confidence == pytest.approx(0.1) and rows[low.id].detail["tiny"]["valid"] is True
    text = httpx.get(f"{server.url}/metrics").text
    assert 'supertiny_escalations_total{reason="low_confidence",route="unsure"} 1.0' in text


def test_hybrid_token_reports_the_llm_share(server):
    set_policy(server.store, "hybrid", "hybrid-token", {"tiny": "student", "llm": "teacher", "threshold": 1.01})
    answer = client(server).chat.completions.create(model="hybrid", messages=QUESTION, tools=[WEATHER_TOOL],
                                                    max_tokens=10)
    assert answer.supertiny["llm_token_share"] == 1.0 and answer.supertiny["tier"] == "hybrid"
    row = logs(server)[-1]
    assert row.llm_token_share == 1.0 and row.detail["sources"] == "L" * row.completion_tokens


def test_shadow_agreement_is_logged(server):
    set_policy(server.store, "shadowed", "shadow", {"primary": "caller", "shadow": "unsure"})
    answer = client(server).chat.completions.create(model="shadowed", messages=QUESTION, tools=[WEATHER_TOOL])
    assert answer.supertiny["served_by"] == "caller"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not [row for row in logs(server) if row.request_id == answer.id]:
        time.sleep(0.05)  # the shadow's entry is written once the shadow has answered
    row = next(row for row in logs(server) if row.request_id == answer.id)
    assert row.detail["shadow"]["agree"] is True and row.detail["shadow"]["model"] == "unsure"


def test_a_failing_tier_falls_back_and_the_log_says_so(server):
    set_policy(server.store, "weather", "tiny", {"tiny": "broken", "llm": "caller"})
    time.sleep(TTL + 0.05)
    answer = client(server).chat.completions.create(model="weather", messages=QUESTION, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.tool_calls and answer.supertiny["fallback"] is True
    row = logs(server)[-1]
    assert row.served_by == "caller" and row.detail["fallback"]["role"] == "tiny"
    assert "broken crashed" in row.detail["fallback"]["error"]


def test_when_every_tier_fails_the_client_gets_502_or_504(server):
    set_policy(server.store, "down", "tiny", {"tiny": "broken"})
    set_policy(server.store, "stuck", "tiny", {"tiny": "slow", "timeout_s": 0.2})
    api = client(server)
    with pytest.raises(openai.APIStatusError) as failed:
        api.chat.completions.create(model="down", messages=QUESTION)
    assert failed.value.status_code == 502 and failed.value.body["type"] == "server_error"
    with pytest.raises(openai.APIStatusError) as timed_out:
        api.chat.completions.create(model="stuck", messages=QUESTION)
    assert timed_out.value.status_code == 504
    with pytest.raises(openai.APIError, match="no model could answer"):
        list(api.chat.completions.create(model="down", messages=QUESTION, stream=True))
    assert [row.status for row in logs(server)] == [502, 504, 502]


BAD_REQUESTS = [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "must be a JSON object"),
    ({"model": "weather"}, 400, "messages", "missing required parameter 'messages'"),
    ({"model": "weather", "messages": "hello"}, 400, "messages", "invalid value"),
    ({"model": "weather", "messages": []}, 400, "messages", "at least 1 item"),
    ({"model": "weather", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role", ""),
    ({"model": "weather", "messages": QUESTION, "temperature": "hot"}, 400, "temperature", ""),
    ({"model": "weather", "messages": QUESTION, "n": 2}, 400, "n", "only n=1"),
    ({"model": "weather", "messages": QUESTION, "max_tokens": 100000}, 400, "max_tokens", "at most 512"),
    ({"model": "weather", "messages": QUESTION, "tools": [{"type": "retrieval"}]}, 400, "tools.0.type", ""),
    ({"model": "weather", "messages": QUESTION,
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": "city"}}}]},
     400, "tools.0.function.parameters", "not a valid JSON Schema"),
    ({"model": "weather", "messages": QUESTION, "tools": [WEATHER_TOOL],
      "tool_choice": {"type": "function", "function": {"name": "nope"}}}, 400, "tool_choice", "not in tools"),
    ({"model": "weather", "messages": [{"role": "user"}]}, 400, "messages.0", "needs content"),
    ({"model": "weather", "messages": [*QUESTION, {"role": "tool", "content": "12C"}]}, 400, "messages.1",
     "needs the tool_call_id"),
    ({"model": "weather", "messages": QUESTION,
      "tools": [{"type": "function", "function": {"name": "bad name!/x", "parameters": {"type": "object"}}}]},
     400, "tools.0.function.name", "invalid tool name"),
    ({"model": "weather", "messages": QUESTION, "stream": "yes"}, 400, "stream", ""),
    ({"model": "weather", "messages": QUESTION, "response_format": {"type": "json_object"}}, 400,
     "response_format", "not supported"),
    ({"model": "nowhere", "messages": QUESTION}, 404, None, "does not exist"),
    (b'{"model": "weather", "messages": ' + b"[" * 1500 + b"]" * 1500 + b"}", 400, None, "nests deeper than 64"),
    ({"model": "weather", "messages": QUESTION, "extra": json.loads("[" * 500 + "]" * 500)}, 400, None,
     "nests deeper than 64"),
    ({"model": "weather", "messages": QUESTION, "tools": [{"type": "function", "function": {
        "name": "deep", "parameters": json.loads('{"type": "object", "properties": {"a": ' * 20 + "{}" + "}}" * 20)}}]},
     400, "tools.0.function.parameters", "nests deeper than 32"),
]


@pytest.mark.parametrize(("body", "status", "param", "message"), BAD_REQUESTS)
def test_malformed_requests_get_openai_style_4xx(server, body, status, param, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.base_url}/chat/completions", content=content,
                          headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and message in error["message"]
    if param is not None:
        assert error["param"] == param
    assert error["code"] == ("model_not_found" if status == 404 else error["code"]) and error["code"]
    ok = client(server).chat.completions.create(model="weather", messages=QUESTION)  # nothing crashed
    assert ok.choices[0].message.content or ok.choices[0].message.tool_calls


def test_parallel_tool_calls_false_keeps_one_call(server):
    set_policy(server.store, "two", "tiny", {"tiny": "twice"})
    api = client(server)
    both = api.chat.completions.create(model="two", messages=QUESTION, tools=[WEATHER_TOOL])
    one = api.chat.completions.create(model="two", messages=QUESTION, tools=[WEATHER_TOOL], parallel_tool_calls=False)
    assert len(both.choices[0].message.tool_calls) == 2 and len(one.choices[0].message.tool_calls) == 1
    streamed = [chunk for chunk in api.chat.completions.create(model="two", messages=QUESTION, tools=[WEATHER_TOOL],
                                                               parallel_tool_calls=False, stream=True)]
    assert {call.index for chunk in streamed for call in chunk.choices[0].delta.tool_calls or []} == {0}


def test_tool_choice_required_is_a_call_or_a_clear_error(server):
    api = client(server)
    set_policy(server.store, "told", "tiny", {"tiny": "reluctant"})
    free = api.chat.completions.create(model="told", messages=QUESTION, tools=[WEATHER_TOOL])
    assert free.choices[0].message.content == "It is sunny." and free.choices[0].finish_reason == "stop"
    for tool_choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        forced = api.chat.completions.create(model="told", messages=QUESTION, tools=[WEATHER_TOOL],
                                             tool_choice=tool_choice)
        assert forced.choices[0].finish_reason == "tool_calls" and forced.choices[0].message.tool_calls
    detail = logs(server)[-1].detail
    assert detail["call_required"]["asked_again"] and detail["call_required"]["first_answer"] == "no_call"
    set_policy(server.store, "never", "cascade", {"tiny": "chatty", "llm": "chatty", "threshold": 0})
    with pytest.raises(openai.APIStatusError) as refused:
        api.chat.completions.create(model="never", messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="required")
    assert refused.value.status_code == 502 and refused.value.code == "tool_call_required"
    assert "answered without a valid one twice" in refused.value.message
    assert logs(server)[-1].status == 502


def test_unknown_endpoints_and_methods_answer_openai_style(server):
    missing = httpx.get(f"{server.url}/v1/embeddings")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    wrong_method = httpx.get(f"{server.base_url}/chat/completions")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    with pytest.raises(openai.NotFoundError) as caught:
        client(server).chat.completions.create(model="nowhere", messages=QUESTION)
    assert caught.value.code == "model_not_found"


def test_api_keys_are_required_once_one_exists_and_revoking_them_never_opens_the_server(server):
    from supertiny.serve.auth import create_key, revoke_key

    open_client = client(server)
    assert open_client.chat.completions.create(model="weather", messages=QUESTION)
    row, secret = create_key(server.store, "ci")
    assert secret.startswith("sk-st-") and row.key_hash != secret and secret not in row.key_hash
    time.sleep(TTL + 0.05)
    with pytest.raises(openai.AuthenticationError):
        open_client.chat.completions.create(model="weather", messages=QUESTION)
    with pytest.raises(openai.AuthenticationError):
        client(server, secret[:-2] + "xx").chat.completions.create(model="weather", messages=QUESTION)
    assert httpx.get(f"{server.base_url}/models").status_code == 401
    keyed = client(server, secret)
    answer = keyed.chat.completions.create(model="weather", messages=QUESTION)
    assert [model.id for model in keyed.models.list().data] == ["weather"]
    assert next(row for row in logs(server) if row.request_id == answer.id).api_key_id == row.id
    create_key(server.store, "other")
    revoke_key(server.store, "ci")
    time.sleep(TTL + 0.05)
    with pytest.raises(openai.AuthenticationError):
        keyed.chat.completions.create(model="weather", messages=QUESTION)
    revoke_key(server.store, "other")  # no active key left: the server stays closed
    time.sleep(TTL + 0.05)
    for api_key in ("unused", secret):
        with pytest.raises(openai.AuthenticationError):
            client(server, api_key).chat.completions.create(model="weather", messages=QUESTION)


@pytest.mark.parametrize("mode", ["open", "required"])
def test_the_auth_setting_is_explicit(sqlite_store, tiny_pair, mode):
    from supertiny.serve.auth import create_key

    if mode == "open":
        create_key(sqlite_store, "ignored")
    set_policy(sqlite_store, "weather", "tiny", {"tiny": "student"})
    pool = ModelPool(lambda name: (_ for _ in ()).throw(FileNotFoundError(name)))
    pool.add("student", tiny_pair[0])
    app = create_app(Settings(database_url=sqlite_store.url), ServeOptions(auth=mode), store=sqlite_store, pool=pool)
    with BackgroundServer(app) as running:
        status = httpx.post(f"{running.base_url}/chat/completions", timeout=60,
                            json={"model": "weather", "messages": QUESTION, "max_tokens": 2}).status_code
    assert status == (200 if mode == "open" else 401)


def test_64_concurrent_clients_get_answers_and_every_request_is_logged_once(server):
    set_policy(server.store, "chat", "tiny", {"tiny": "student"})
    api = client(server)

    def one(index: int) -> str:
        tools = [WEATHER_TOOL] if index % 2 else None
        stream = index % 4 == 3
        if stream:
            chunks = list(api.chat.completions.create(model="chat", messages=QUESTION, tools=tools, max_tokens=6,
                                                      stream=True))
            return chunks[0].id
        return api.chat.completions.create(model="chat", messages=QUESTION, tools=tools, max_tokens=6).id

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        ids = list(pool.map(one, range(64)))
    assert len(set(ids)) == 64
    rows = logs(server)
    assert sorted(row.request_id for row in rows) == sorted(ids)
    assert {row.status for row in rows} == {200}


def test_a_route_caps_prompt_length_before_any_model_work(server):
    set_policy(server.store, "short", "tiny", {"tiny": "student", "max_prompt_tokens": 64})
    api = client(server)
    assert api.chat.completions.create(model="short", messages=QUESTION, max_tokens=2).choices
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(model="short", messages=[{"role": "user", "content": "weather " * 200}],
                                    max_tokens=2)
    assert refused.value.code == "context_length_exceeded" and "at most 64 tokens" in refused.value.message
    set_policy(server.store, "uncapped", "tiny", {"tiny": "student"})
    with pytest.raises(openai.BadRequestError) as too_long:  # the model's own context (2048) without a cap
        api.chat.completions.create(model="uncapped", messages=[{"role": "user", "content": "x " * 3000}],
                                    max_tokens=2)
    assert too_long.value.code == "context_length_exceeded" and "maximum context length is 2048" in \
        too_long.value.message
    assert [row.status for row in logs(server)[-3:]] == [200, 400, 400]
