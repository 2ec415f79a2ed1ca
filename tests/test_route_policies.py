"""Each policy kind routes as specified, and a failing tier falls back to the other."""

import collections
import dataclasses
import uuid

import pydantic
import pytest
from helpers.chat_models import (
    BROKEN_CALL,
    GOOD_CALL,
    SCHEMA_BREAKING_CALL,
    WEATHER_TOOL,
    ScriptedModel,
    broken,
)
from supertiny.errors import BackendTimeoutError, InvalidInputError, ModelError
from supertiny.models.backend import Capabilities, GenerationOptions, parse_answer
from supertiny.policy.kinds import canary_bucket
from supertiny.policy.policy_store import ActivePolicy, policy_kind
from supertiny.policy.pool import ModelPool
from supertiny.policy.router import Router, RouteRequest
from supertiny.registry import get_policies
from supertiny.schema import Message, ToolSpec
from supertiny.schema.messages import message_dicts

TOOLS = [ToolSpec.model_validate(WEATHER_TOOL)]


def active(kind: str, **params) -> ActivePolicy:
    policy = policy_kind(kind)
    return ActivePolicy(id=1, route="weather", version=1, kind=kind, params=policy.parse_params(params), policy=policy)


def request(tools=TOOLS, request_id: str | None = None, **options) -> RouteRequest:
    return RouteRequest(request_id=request_id or uuid.uuid4().hex,
                        messages=[Message(role="user", content="Weather in Paris?")], tools=tools,
                        options=GenerationOptions(max_new_tokens=32, **options))


def router(*models: ScriptedModel) -> Router:
    pool = ModelPool(lambda name: (_ for _ in ()).throw(ModelError(f"no model {name}")))
    for model in models:
        pool.add(model.name, model)
    return Router(pool)


def test_register_policies_registers_every_builtin_kind():
    assert {"tiny", "llm", "cascade", "hybrid-token", "canary", "shadow"} <= set(get_policies())


def test_tiny_and_llm_policies_use_their_model():
    small, large = ScriptedModel("small", GOOD_CALL), ScriptedModel("large", GOOD_CALL)
    route = router(small, large)
    tiny = route.route(active("tiny", tiny="small", llm="large"), request())
    assert (tiny.role, tiny.model, tiny.escalated) == ("tiny", "small", False)
    assert tiny.generation.message.tool_calls[0].function.name == "get_weather"
    llm = route.route(active("llm", llm="large"), request())
    assert (llm.role, llm.model) == ("llm", "large")
    assert (small.calls, large.calls) == (1, 1)


def test_cascade_accepts_a_valid_confident_tiny_answer():
    small, large = ScriptedModel("small", GOOD_CALL, probability=0.9), ScriptedModel("large", GOOD_CALL)
    outcome = router(small, large).route(active("cascade", tiny="small", llm="large", threshold=0.5), request())
    assert (outcome.role, outcome.escalated, large.calls) == ("tiny", False, 0)
    assert outcome.confidence == pytest.approx(0.9)
    assert outcome.log_detail()["tiny"]["valid"] is True


@pytest.mark.parametrize(
    ("tiny_text", "probability", "reason"),
    [
        (BROKEN_CALL, 0.99, "invalid_call"),  # the call does not parse
        (SCHEMA_BREAKING_CALL, 0.99, "schema"),  # city must be a string
        ('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>', 0.99, "schema"),  # unknown function
        (GOOD_CALL, 0.2, "low_confidence"),
    ],
)
def test_cascade_escalates(tiny_text, probability, reason):
    small, large = ScriptedModel("small", tiny_text, probability=probability), ScriptedModel("large", GOOD_CALL)
    outcome = router(small, large).route(active("cascade", tiny="small", llm="large", threshold=0.5), request())
    assert (outcome.role, outcome.model, outcome.escalated, outcome.reason) == ("llm", "large", True, reason)
    assert outcome.generation.parse.calls[0].arguments == {"city": "Paris"}
    assert outcome.log_detail()["tiny"]["problem"] in (reason, None)


def test_cascade_threshold_zero_accepts_any_valid_answer_and_required_calls_escalate_text():
    small, large = ScriptedModel("small", GOOD_CALL, probability=0.01), ScriptedModel("large", GOOD_CALL)
    route = router(small, large)
    assert route.route(active("cascade", tiny="small", llm="large", threshold=0), request()).role == "tiny"
    chatty = ScriptedModel("chatty", "It is sunny.", probability=0.99)
    route = router(chatty, large)
    policy = active("cascade", tiny="chatty", llm="large", threshold=0.5)
    assert route.route(policy, request()).role == "tiny"  # a text answer is a valid answer ...
    forced = request()
    forced.call_required = True
    assert route.route(policy, forced).reason == "no_call"  # ... unless a call was required


def test_cascade_threshold_applies_to_the_routes_confidence_measure():
    small, large = ScriptedModel("small", GOOD_CALL, probability=0.9), ScriptedModel("large", GOOD_CALL)
    route = router(small, large)
    by_mean = route.route(active("cascade", tiny="small", llm="large", threshold=0.5, confidence="mean"), request())
    joint = route.route(active("cascade", tiny="small", llm="large", threshold=0.5, confidence="joint"), request())
    assert (by_mean.role, joint.role, joint.reason) == ("tiny", "llm", "low_confidence")
    tiny = joint.log_detail()["tiny"]
    assert joint.log_detail()["confidence_measure"] == "joint"
    assert joint.confidence == pytest.approx(tiny["confidences"]["joint"]) and joint.confidence < 0.5
    assert tiny["confidences"]["mean"] == pytest.approx(0.9) == tiny["confidences"]["min"]
    with pytest.raises(pydantic.ValidationError, match="'mean', 'joint', 'min', 'agreement' or 'learned'"):
        active("cascade", tiny="small", llm="large", confidence="median")


def test_the_cascade_offers_every_confidence_measure():
    from typing import get_args

    from supertiny.policy.kinds import GATE_MEASURES, CascadeParams

    assert get_args(CascadeParams.model_fields["confidence"].annotation) == GATE_MEASURES


class SampledModel(ScriptedModel):
    """Answers ``text`` greedily and the next of ``sampled`` (in turn) at any temperature above 0."""

    def __init__(self, name: str, text: str, sampled: list[str], **kwargs):
        super().__init__(name, text, **kwargs)
        self.sampled = collections.deque(sampled)
        self.seen_options: list[GenerationOptions] = []

    def generate(self, messages, tools=None, options: GenerationOptions | None = None):
        options = options or GenerationOptions()
        self.seen_options.append(options)
        if options.temperature > 0:
            self.sampled.rotate(-1)
            return dataclasses.replace(super().generate(messages, tools, options), text=self.sampled[-1],
                                       parse=(parsed := parse_answer(self.sampled[-1], tools))[0], message=parsed[1])
        return super().generate(messages, tools, options)


OTHER_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>'


@pytest.mark.parametrize(("sampled", "role", "agreement"), [
    ([GOOD_CALL, GOOD_CALL, GOOD_CALL, OTHER_CALL], "tiny", 0.75),  # three of four samples make the same call
    ([GOOD_CALL, OTHER_CALL, OTHER_CALL, "It is sunny."], "llm", 0.25),
])
def test_the_agreement_gate_samples_the_tiny_model_and_thresholds_the_share_that_agrees(sampled, role, agreement):
    small = SampledModel("small", GOOD_CALL, sampled, probability=0.01)  # token probabilities play no part
    large = ScriptedModel("large", GOOD_CALL)
    outcome = router(small, large).route(active("cascade", tiny="small", llm="large", threshold=0.5,
                                                confidence="agreement", samples=4, sample_temperature=0.9), request())
    assert (outcome.role, outcome.confidence) == (role, pytest.approx(agreement))
    assert outcome.log_detail()["tiny"]["confidences"]["agreement"] == pytest.approx(agreement)
    assert [options.temperature for options in small.seen_options] == [0.0, 0.9, 0.9, 0.9, 0.9]
    assert small.seen_options[-1].logprobs is False


def test_the_agreement_gate_samples_nothing_for_an_answer_that_escalates_anyway():
    small = SampledModel("small", BROKEN_CALL, [GOOD_CALL])
    outcome = router(small, ScriptedModel("large", GOOD_CALL)).route(
        active("cascade", tiny="small", llm="large", threshold=0.5, confidence="agreement"), request())
    assert (outcome.role, outcome.reason, small.calls) == ("llm", "invalid_call", 1)


def test_the_agreement_gate_escalates_when_the_tiny_model_cannot_sample():
    class GreedyOnly(ScriptedModel):
        def generate_samples(self, messages, tools=None, options=None, n=1):
            raise ModelError("sampling crashed")

    outcome = router(GreedyOnly("small", GOOD_CALL), ScriptedModel("large", GOOD_CALL)).route(
        active("cascade", tiny="small", llm="large", threshold=0.5, confidence="agreement"), request())
    assert (outcome.role, outcome.reason, outcome.generation.text) == ("llm", "no_confidence", GOOD_CALL)


def test_cascade_without_logprobs_escalates_when_a_threshold_is_set():
    small = ScriptedModel("small", GOOD_CALL, logprobs=False)
    outcome = router(small, ScriptedModel("large", GOOD_CALL)).route(
        active("cascade", tiny="small", llm="large", threshold=0.5), request())
    assert outcome.reason == "no_confidence"


def test_cascade_serves_the_rejected_tiny_answer_when_the_llm_fails():
    small = ScriptedModel("small", GOOD_CALL, probability=0.1)
    outcome = router(small, broken("large")).route(active("cascade", tiny="small", llm="large", threshold=0.5),
                                                   request())
    assert (outcome.role, outcome.model) == ("tiny", "small")
    assert outcome.fallback["role"] == "llm" and "large crashed" in outcome.fallback["error"]
    assert outcome.log_detail()["fallback"]["model"] == "large"


def test_cascade_with_fallback_off_fails_instead_of_serving_the_rejected_answer():
    small = ScriptedModel("small", GOOD_CALL, probability=0.1)
    with pytest.raises(ModelError, match="large crashed"):
        router(small, broken("large")).route(
            active("cascade", tiny="small", llm="large", threshold=0.99, fallback=False), request())


def test_cascade_escalates_when_the_tiny_model_fails():
    outcome = router(broken("small"), ScriptedModel("large", GOOD_CALL)).route(
        active("cascade", tiny="small", llm="large"), request())
    assert (outcome.role, outcome.reason, outcome.fallback["role"]) == ("llm", "tiny_failed", "tiny")


@pytest.mark.parametrize("kind", ["tiny", "llm"])
def test_a_failing_tier_falls_back_to_the_other(kind):
    served = "llm" if kind == "tiny" else "tiny"
    models = {"tiny": broken("small"), "llm": ScriptedModel("large", GOOD_CALL)} if kind == "tiny" else \
        {"tiny": ScriptedModel("small", GOOD_CALL), "llm": broken("large")}
    outcome = router(*models.values()).route(active(kind, tiny="small", llm="large"), request())
    assert outcome.role == served and outcome.fallback["role"] == kind
    assert outcome.generation.parse.calls


def test_a_timeout_falls_back_and_says_it_timed_out():
    slow = ScriptedModel("small", GOOD_CALL, delay_s=5)
    outcome = router(slow, ScriptedModel("large", GOOD_CALL)).route(
        active("tiny", tiny="small", llm="large", timeout_s=0.2), request())
    assert outcome.role == "llm" and outcome.fallback["timed_out"] is True


def test_no_fallback_when_disabled_or_when_every_tier_fails():
    with pytest.raises(ModelError, match="small crashed"):
        router(broken("small"), ScriptedModel("large")).route(
            active("tiny", tiny="small", llm="large", fallback=False), request())
    with pytest.raises(ModelError, match="no model could answer"):
        router(broken("small"), broken("large")).route(active("tiny", tiny="small", llm="large"), request())
    with pytest.raises(BackendTimeoutError):
        router(ScriptedModel("small", delay_s=5)).route(active("tiny", tiny="small", timeout_s=0.1), request())


def test_a_model_that_cannot_be_opened_falls_back():
    outcome = router(ScriptedModel("large", GOOD_CALL)).route(active("tiny", tiny="missing", llm="large"), request())
    assert outcome.role == "llm" and "no model missing" in outcome.fallback["error"]


def test_client_errors_do_not_fall_back():
    small = ScriptedModel("small", fail=InvalidInputError("the chat template cannot render these messages"))
    large = ScriptedModel("large")
    with pytest.raises(InvalidInputError):
        router(small, large).route(active("tiny", tiny="small", llm="large"), request())
    assert large.calls == 0


def test_canary_splits_by_percent_deterministically_per_request_id():
    route = router(ScriptedModel("new"), ScriptedModel("old"))
    policy = active("canary", a="new", b="old", percent=20)
    served = collections.Counter(route.route(policy, request(request_id=f"req-{index}")).model for index in range(500))
    assert 0.14 < served["new"] / 500 < 0.26
    again = [route.route(policy, request(request_id="req-7")).model for _ in range(3)]
    assert len(set(again)) == 1 and again[0] == ("new" if canary_bucket("req-7") < 20 else "old")
    assert {route.route(active("canary", a="new", b="old", percent=100), request()).model for _ in range(20)} == {"new"}
    assert {route.route(active("canary", a="new", b="old", percent=0), request()).model for _ in range(20)} == {"old"}


def test_shadow_serves_the_primary_and_logs_agreement_in_the_background():
    primary = ScriptedModel("large", GOOD_CALL)
    route = router(primary, ScriptedModel("same", GOOD_CALL), ScriptedModel("other", SCHEMA_BREAKING_CALL))
    agreeing = route.route(active("shadow", primary="large", shadow="same"), request())
    assert agreeing.model == "large" and agreeing.generation.parse.calls
    assert agreeing.shadow.result(timeout=10)["agree"] is True
    disagreeing = route.route(active("shadow", primary="large", shadow="other"), request())
    result = disagreeing.shadow.result(timeout=10)
    assert result["agree"] is False and result["valid"] is False and result["model"] == "other"
    route.close()


def test_a_failing_shadow_never_fails_the_request():
    route = router(ScriptedModel("large", GOOD_CALL), broken("bad"))
    outcome = route.route(active("shadow", primary="large", shadow="bad"), request())
    assert outcome.model == "large" and "bad crashed" in outcome.shadow.result(timeout=10)["error"]


def test_params_are_validated_per_kind():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        active("cascade", tiny="a")  # llm missing
    with pytest.raises(ValidationError):
        active("canary", a="x", b="y", percent=120)
    with pytest.raises(ValidationError):
        active("tiny", tiny="x", treshold=0.5)  # unknown (misspelt) param


def test_route_stream_streams_live_without_tools_and_buffers_with_tools():
    route = router(ScriptedModel("small", GOOD_CALL))
    items = list(route.route_stream(active("tiny", tiny="small"), request(tools=None)))
    assert items[0] == GOOD_CALL and items[-1].streamed is True
    items = list(route.route_stream(active("tiny", tiny="small"), request()))
    assert len(items) == 1 and items[0].streamed is False and items[0].generation.parse.calls


def test_a_plugin_policy_kind_is_looked_up_through_the_registry(register_plugin, sqlite_store):
    import supertiny
    from supertiny.policy.base import Decision, Policy
    from supertiny.policy.kinds import LlmParams
    from supertiny.policy.policy_store import PolicyStore, set_policy

    class Alternate(Policy):
        """Odd request ids to the LLM, even ones to the tiny model."""

        name = "alternate"
        description = "test kind"
        params_model = LlmParams

        def decide(self, params, context):
            return Decision(role="llm" if int(context.request_id) % 2 else "tiny")

    class Plugin:
        @supertiny.hookimpl
        def register_policies(self, register):
            register(Alternate())

    register_plugin(Plugin())
    set_policy(sqlite_store, "weather", "alternate", {"llm": "large", "tiny": "small"})
    policy = PolicyStore(sqlite_store).active_policy("weather")
    route = router(ScriptedModel("small"), ScriptedModel("large"))
    served = [route.route(policy, request(request_id=str(index))).model for index in range(3)]
    assert served == ["small", "large", "small"]


class GuidedModel(ScriptedModel):
    """Answers in the guided JSON shape when asked to decode guided, as an engine's grammar would make it."""

    capabilities = Capabilities(local=False, logprobs=True, guided=True)

    def __init__(self, name: str):
        super().__init__(name, GOOD_CALL)
        self.seen: list[tuple[bool, str]] = []
        self.call_required: list[bool] = []

    def generate(self, messages, tools=None, options=None):
        from supertiny.models.backend import guided_answer

        generation = super().generate(messages, tools, options)
        last = message_dicts(messages)[-1]
        self.seen.append((options.guided, last["content"]))
        self.call_required.append(options.call_required)
        if not options.guided:
            return generation
        text = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
        generation.parse, generation.message = guided_answer(text)
        generation.text = text
        return generation


def test_a_role_named_guided_decodes_under_the_tools_schemas_and_the_log_says_how_each_decoded():
    from supertiny.models.guided_calls import GUIDED_INSTRUCTION

    small, large = ScriptedModel("small", BROKEN_CALL), GuidedModel("large")
    route = router(small, large)
    policy = active("cascade", tiny="small", llm="large", guided="llm")
    outcome = route.route(policy, request())
    assert (outcome.role, outcome.escalated) == ("llm", True)
    assert outcome.generation.message.tool_calls[0].function.name == "get_weather"
    assert large.seen == [(True, f"Weather in Paris?\n\n{GUIDED_INSTRUCTION}")]
    assert outcome.log_detail()["decoding"] == {"llm": "guided"}
    # without tools there is nothing to decode under: the LLM answers freely, and the log says nothing of it
    plain = route.route(active("llm", llm="large", guided="llm"), request(tools=None))
    assert large.seen[-1] == (False, "Weather in Paris?") and "decoding" not in plain.log_detail()


def test_a_guided_role_answers_a_request_that_must_call_under_a_schema_without_the_reply():
    large = GuidedModel("large")
    route = router(large)
    route.route(active("llm", llm="large", guided="llm"), dataclasses.replace(request(), call_required=True))
    route.route(active("llm", llm="large", guided="llm"), request())
    route.route(active("llm", llm="large"), dataclasses.replace(request(), call_required=True))
    assert large.call_required == [True, False, False]


def test_a_guided_role_whose_model_cannot_decode_guided_answers_freely_and_the_log_says_why():
    small = ScriptedModel("small", GOOD_CALL)
    outcome = router(small).route(active("tiny", tiny="small", guided=["tiny"]), request())
    assert outcome.generation.parse.calls
    assert outcome.log_detail()["decoding"] == {"tiny": "free: small runs on scripted"}


def test_guided_names_roles_of_the_policy():
    from pydantic import ValidationError

    assert active("canary", a="x", b="y", percent=5, guided="a, b").params.guided == ["a", "b"]
    with pytest.raises(ValidationError, match="guided names 'llm', not a role of this policy"):
        active("tiny", tiny="x", guided="llm")


def test_a_guided_shadow_logs_its_own_decoding_and_leaves_the_served_answers_alone():
    served, shadow = ScriptedModel("served", GOOD_CALL), GuidedModel("shadowing")
    outcome = router(served, shadow).route(active("shadow", primary="served", shadow="shadowing", guided="shadow"),
                                           request())
    detail = outcome.shadow.result(timeout=10)
    assert detail["decoding"] == "guided" and detail["agree"] is True
    assert "decoding" not in outcome.log_detail()


def test_a_hybrid_token_policy_refuses_guided():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="token by token"):
        active("hybrid-token", tiny="a", llm="b", guided="llm")
