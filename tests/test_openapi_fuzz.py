"""The server against its own OpenAPI document: schemathesis generates requests from it (valid ones and ones
that break it) and every answer must be documented and conform: no 5xx, no undocumented status, content
type or body. Routes answer with scripted models, so the bound is the number of examples, not model time."""

import hashlib

import pytest
import schemathesis
from helpers.chat_models import GOOD_CALL, ScriptedModel
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from supertiny.config import Settings
from supertiny.policy.policy_store import set_policy
from supertiny.policy.pool import ModelPool
from supertiny.serve.app import ServeOptions, create_app

CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory):
    from supertiny.store.session import open_store

    home = tmp_path_factory.mktemp("fuzz")
    settings_ = Settings(home=home, database_url=f"sqlite:///{home}/fuzz.db")
    store = open_store(settings_)
    pool = ModelPool(lambda name: (_ for _ in ()).throw(FileNotFoundError(name)))
    pool.add("caller", ScriptedModel("caller", GOOD_CALL, probability=0.95), concurrency=64)
    pool.add("talker", ScriptedModel("talker", "It is sunny."), concurrency=64)
    set_policy(store, "weather", "cascade", {"tiny": "talker", "llm": "caller", "threshold": 0.5})
    app = create_app(settings_, ServeOptions(log_flush_interval_s=0.05), store=store, pool=pool)
    yield app
    app.state.log_writer.close(10)


EXAMPLES = {"POST /v1/chat/completions": 300}  # the other operations take no body: a few examples each


def test_every_answer_is_documented_and_conforms(fuzzed_app):
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert {operation.label for operation in operations} >= {"POST /v1/chat/completions", "GET /v1/models"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES.get(operation.label, 20), deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), database=None)
        def call(case):
            if isinstance(case.body, dict) and int(hashlib.sha256(repr(case.body).encode()).hexdigest(), 16) % 2:
                case.body["model"] = "weather"  # half the chat requests reach a real route
            case.call_and_validate(checks=CHECKS)

        call()


def test_a_streamed_answer_conforms_to_the_documented_events(fuzzed_app):
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    operation = api["/v1/chat/completions"]["POST"]
    case = operation.Case(body={"model": "weather", "stream": True,
                                "messages": [{"role": "user", "content": "Weather in Paris?"}]},
                          media_type="application/json")
    response = case.call_and_validate(checks=CHECKS)
    assert response.headers["content-type"][0].startswith("text/event-stream")
    assert response.text.rstrip().endswith("data: [DONE]")
