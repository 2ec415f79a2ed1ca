"""A cascade gate learned from outcomes: the answer features it reads, its fit, the cascade that serves by it, and
its calibration from evaluations, shadow traffic and the CLI."""

import dataclasses
import datetime as dt
import json
import math
import uuid

import pydantic
import pytest
from click.testing import CliRunner
from helpers.chat_models import GOOD_CALL, WEATHER_TOOL, ScriptedModel
from helpers.gate_outcomes import evaluated_outcomes, examples
from supertiny.cli import cli
from supertiny.errors import InvalidInputError
from supertiny.models.answer_features import answer_features
from supertiny.policy.calibrate import calibrate
from supertiny.policy.kinds import CascadeParams
from supertiny.policy.learned_gate import GateExample, LearnedGate, fit_gate, out_of_fold_confidences
from supertiny.policy.policy_store import active_row, set_policy
from supertiny.schema import Message
from supertiny.store.tables import RequestLog
from test_route_policies import SampledModel, active, request, router

TAX_TOOL = {"type": "function", "function": {"name": "compute_tax", "description": "Tax owed on a yearly income.",
                                             "parameters": {"type": "object",
                                                            "properties": {"income": {"type": "number"}}}}}
MADE_UP_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "London"}}\n</tool_call>'
USER = [{"role": "system", "content": "Paris London"}, {"role": "user", "content": "Weather in Paris?"}]


def generation(text: str, tools: list[dict], probability: float | None = 0.5):
    model = ScriptedModel("m", text, probability=probability or 0.5, logprobs=probability is not None)
    return model.generate(USER, tools)


def test_answer_features_say_where_the_values_come_from_and_whether_the_call_is_about_the_request():
    good = answer_features(USER, [WEATHER_TOOL], generation(GOOD_CALL, [WEATHER_TOOL]))
    assert (good["calls"], good["no_call"], good["tools"], good["grounding"]) == (1.0, 0.0, 1.0, 1.0)
    assert good["relevance"] == pytest.approx(1 / 3, abs=1e-3)  # weather of {weather, current, city}
    assert good["mean_logprob"] == pytest.approx(math.log(0.5), abs=1e-3) == good["min_logprob"]
    # a value the user never wrote (the system prompt does not count), and an unrelated function
    assert answer_features(USER, [WEATHER_TOOL], generation(MADE_UP_CALL, [WEATHER_TOOL]))["grounding"] == 0.0
    tax_call = '<tool_call>\n{"name": "compute_tax", "arguments": {"income": 5}}\n</tool_call>'
    unrelated = answer_features(USER, [TAX_TOOL], generation(tax_call, [TAX_TOOL]))
    assert (unrelated["relevance"], unrelated["grounding"]) == (0.0, 0.0)
    # the weather tool left out while an unrelated one is called
    passed_over = answer_features(USER, [TAX_TOOL, WEATHER_TOOL], generation(tax_call, [TAX_TOOL, WEATHER_TOOL]))
    assert passed_over["other_relevance"] == pytest.approx(1 / 3, abs=1e-3) and good["other_relevance"] == 0.0
    text = answer_features([Message(role="user", content="Hi")], [WEATHER_TOOL],
                           generation("Hello!", [WEATHER_TOOL], probability=None))
    assert (text["no_call"], text["grounding"], text["relevance"]) == (1.0, 1.0, 0.0)
    assert "mean_logprob" not in text  # no log-probabilities, no confidence features


def test_the_gate_learns_where_escalating_helps_not_only_where_the_tiny_model_fails():
    gate = fit_gate(examples(), ["grounding", "tools"])
    fixable = gate.confidence({"grounding": 0.0, "tools": 1})  # tiny wrong, LLM right
    hopeless = gate.confidence({"grounding": 0.0, "tools": 3})  # both wrong: escalating buys nothing
    fine = gate.confidence({"grounding": 1.0, "tools": 1})  # both right: escalating buys nothing either
    better = gate.confidence({"grounding": 1.0, "tools": 3})  # escalating would break a right answer
    assert fixable < 0.1 and 0.4 < hopeless < 0.6 and 0.4 < fine < 0.6 and better > 0.9
    assert gate.confidence({"grounding": 1.0}) is None  # a missing feature: no confidence
    stored = LearnedGate.model_validate(json.loads(gate.model_dump_json()))
    assert stored.confidence({"grounding": 0.0, "tools": 1}) == pytest.approx(fixable)
    with pytest.raises(pydantic.ValidationError, match="needs 2 centers"):
        LearnedGate.model_validate({**gate.model_dump(), "center": [0.0]})


def test_out_of_fold_confidences_score_each_example_by_a_gate_that_never_saw_it():
    rows = examples()
    scored = out_of_fold_confidences(rows, ["grounding", "tools"])
    assert len(scored) == len(rows) and all(0 <= value <= 1 for value in scored)
    fixable = [value for value, row in zip(scored, rows, strict=True) if row.llm_correct and not row.tiny_correct]
    kept = [value for value, row in zip(scored, rows, strict=True) if row.tiny_correct]
    ordered = sum(low < high for low in fixable for high in kept) / (len(fixable) * len(kept))
    assert ordered > 0.9  # the noise (a few flipped outcomes) is all that is out of order
    # where no example knows the LLM's outcome (shadow traffic), the LLM counts as right: finite weights
    shadowed = fit_gate([dataclasses.replace(row, llm_correct=None) for row in rows], ["grounding"])
    assert all(math.isfinite(weight) for weight in shadowed.llm_weights)
    with pytest.raises(InvalidInputError, match="at least 10 answers with outcomes") as raised:
        out_of_fold_confidences(rows[:9], ["grounding"])
    assert "more tasks" in raised.value.hint


def grounding_gate() -> dict:
    return fit_gate(examples(), ["grounding"]).model_dump()


def test_a_learned_cascade_serves_grounded_answers_and_escalates_made_up_ones():
    large = ScriptedModel("large", GOOD_CALL)
    for text, role in ((GOOD_CALL, "tiny"), (MADE_UP_CALL, "llm")):
        outcome = router(ScriptedModel("small", text), large).route(
            active("cascade", tiny="small", llm="large", threshold=0.5, confidence="learned", gate=grounding_gate()),
            request())
        tiny = outcome.log_detail()["tiny"]
        assert outcome.role == role and tiny["confidences"]["learned"] == pytest.approx(outcome.confidence)
        assert tiny["features"]["grounding"] == (1.0 if role == "tiny" else 0.0)
    with pytest.raises(pydantic.ValidationError, match="needs a fitted gate"):
        CascadeParams(tiny="small", llm="large", threshold=0.5, confidence="learned")
    # threshold 0 serves every valid answer, gate or not: the route to calibrate from
    assert CascadeParams(tiny="small", llm="large", threshold=0, confidence="learned").gate is None


def test_a_learned_gate_on_agreement_samples_the_tiny_model():
    gate = fit_gate([GateExample(features={"agreement": index % 5 / 4}, tiny_correct=index % 5 >= 3,
                                 llm_correct=True) for index in range(40)], ["agreement"])
    small = SampledModel("small", GOOD_CALL, [GOOD_CALL, MADE_UP_CALL, MADE_UP_CALL, MADE_UP_CALL])
    outcome = router(small, ScriptedModel("large", GOOD_CALL)).route(active(
        "cascade", tiny="small", llm="large", threshold=0.5, confidence="learned", gate=gate.model_dump()), request())
    tiny = outcome.log_detail()["tiny"]
    assert (outcome.role, tiny["confidences"]["agreement"]) == ("llm", 0.25)
    assert sum(options.temperature > 0 for options in small.seen_options) == 4
    # threshold 0 serves every valid answer: nothing to sample for
    served = router(small, ScriptedModel("large", GOOD_CALL)).route(active(
        "cascade", tiny="small", llm="large", threshold=0, confidence="learned", gate=gate.model_dump()), request())
    assert served.role == "tiny" and sum(options.temperature > 0 for options in small.seen_options) == 4


def test_calibrating_a_learned_cascade_fits_its_gate_and_chooses_the_threshold_out_of_fold(sqlite_store):
    evaluated_outcomes(sqlite_store)
    set_policy(sqlite_store, "weather", "cascade", {"tiny": "small", "llm": "large", "threshold": 0,
                                                   "confidence": "learned"})
    result = calibrate(sqlite_store, "weather", llm_budget=0.3)
    assert "gate on grounding, tools" in result.source and "5 folds" in result.source
    stored = active_row(sqlite_store, "weather").params
    assert stored["threshold"] == result.chosen.threshold > 0 and LearnedGate.model_validate(stored["gate"])
    # the tiny model is wrong on half the tasks, the LLM fixes half of those: a quarter escalated fixes them all
    assert result.chosen.llm_share <= 0.3 and result.chosen.accuracy >= 0.7
    only = calibrate(sqlite_store, "weather", llm_budget=0.3, gate_features=["grounding"], dry_run=True)
    assert "gate on grounding, confidences" in only.source
    with pytest.raises(InvalidInputError, match=r"gate feature\(s\) agreement missing") as raised:
        calibrate(sqlite_store, "weather", llm_budget=0.3, gate_features=["agreement"], dry_run=True)
    assert "grounding, tools" in raised.value.hint
    set_policy(sqlite_store, "mean", "cascade", {"tiny": "small", "llm": "large"})
    with pytest.raises(InvalidInputError, match="applies to a cascade whose confidence is learned"):
        calibrate(sqlite_store, "mean", llm_budget=0.3, gate_features=["grounding"], dry_run=True)


def test_a_learned_cascade_needs_evaluations_that_kept_gate_features(sqlite_store):
    evaluated_outcomes(sqlite_store, with_features=False)
    set_policy(sqlite_store, "weather", "cascade", {"tiny": "small", "llm": "large", "threshold": 0,
                                                   "confidence": "learned"})
    with pytest.raises(InvalidInputError, match="keeps no gate features") as raised:
        calibrate(sqlite_store, "weather", llm_budget=0.3, source="evaluations")
    assert "evaluate the tiny model again" in raised.value.hint


def test_a_learned_cascade_calibrates_from_shadow_traffic_and_the_cli(sqlite_store):
    set_policy(sqlite_store, "weather", "cascade", {"tiny": "small", "llm": "large", "threshold": 0,
                                                   "confidence": "learned"})
    with pytest.raises(InvalidInputError, match="shadowed tiny answer's gate features"):
        calibrate(sqlite_store, "weather", llm_budget=0.3, source="logs")
    with sqlite_store.session() as session:
        for row in examples():
            shadow = {"valid": True, "agree": row.tiny_correct, "features": dict(row.features)}
            session.add(RequestLog(request_id=uuid.uuid4().hex, created_at=dt.datetime.now(dt.UTC), route="weather",
                                   request={}, detail={"kind": "shadow", "shadow": shadow}, status=200))
    result = CliRunner().invoke(cli, ["--db", sqlite_store.url, "policy", "calibrate", "weather", "--llm-budget",
                                      "0.5", "--from", "logs", "--gate-features", "grounding", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert "80 shadowed requests" in summary["source"] and summary["version"] == 2
    assert active_row(sqlite_store, "weather").params["gate"]["features"] == ["grounding"]
    shown = CliRunner().invoke(cli, ["--db", sqlite_store.url, "policy", "show", "weather"])
    assert "gate: <learned on 80 examples: grounding>" in shown.output
    listed = CliRunner().invoke(cli, ["--db", sqlite_store.url, "policy", "history", "weather"])
    assert "gate=<learned on 80 examples: grounding>" in listed.output

