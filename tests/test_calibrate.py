"""Threshold calibration from stored evaluations and from logged traffic, and the policy CLI."""

import datetime as dt
import json
import uuid

import pytest
from click.testing import CliRunner
from supertiny.cli import cli
from supertiny.errors import InvalidInputError, NotFoundError
from supertiny.models.versions import register_model_version
from supertiny.policy.calibrate import CalibrationRecord, calibrate, cascade_curve, choose, token_curve
from supertiny.policy.policy_store import active_row, history, set_policy
from supertiny.store.tables import Evaluation, RequestLog

# task: (tiny confidence, tiny valid, tiny correct, llm correct)
TASKS = {
    "t0": (0.95, True, True, True), "t1": (0.9, True, True, True), "t2": (0.85, True, False, True),
    "t3": (0.8, True, True, True), "t4": (0.7, True, False, True), "t5": (0.6, True, True, True),
    "t6": (0.5, True, False, True), "t7": (0.4, True, False, True), "t8": (None, False, False, True),
    "t9": (0.3, True, True, False),
}


def records() -> list[CalibrationRecord]:
    return [CalibrationRecord(confidence, valid, tiny, llm) for confidence, valid, tiny, llm in TASKS.values()]


def point_at(points, threshold):
    return next(point for point in points if point.threshold == threshold)


def test_the_cascade_curve_simulates_the_cascade_rule():
    points = cascade_curve(records())
    assert (points[0].threshold, points[0].llm_share, points[0].accuracy) == (0.0, 0.1, 0.6)  # only invalid escalates
    assert (point_at(points, 0.4).llm_share, point_at(points, 0.4).accuracy) == (0.2, 0.5)
    assert (point_at(points, 0.8).llm_share, point_at(points, 0.8).accuracy) == (0.6, 0.8)
    assert (points[-1].threshold, points[-1].llm_share, points[-1].accuracy) == (1.01, 1.0, 0.9)


def test_choose_the_cheapest_threshold_for_an_accuracy_or_the_best_within_a_budget():
    points = cascade_curve(records())
    assert choose(points, target_accuracy=0.8).threshold == 0.8
    assert choose(points, target_accuracy=0.9).threshold == 0.9
    assert choose(points, llm_budget=0.45).threshold == 0.6
    with pytest.raises(InvalidInputError, match=r"no threshold reaches accuracy 0\.950: the best is 0\.900"):
        choose(points, target_accuracy=0.95)
    with pytest.raises(InvalidInputError, match="invalid tiny answers always escalate"):
        choose(points, llm_budget=0.05)


def test_token_curve_gives_the_llm_token_share():
    points = token_curve([[0.1, 0.9, 0.5], [0.2, 0.95]])
    assert points[0].llm_share == 0 and points[-1].llm_share == 1
    assert choose(points, llm_budget=0.4).llm_share == 0.4


def _evaluation(store, model: str, llm: bool, guided: bool = False) -> None:
    from supertiny.models.versions import find_model_version

    with store.session() as session:
        registered = find_model_version(store, model)
        model_id = registered.id if registered else register_model_version(
            store, name=model, stage="external", format="hf", backend="transformers", path="/nowhere").id
        details = {"records": [{"task": f"t{task}", "task_hash": f"h{task}", "category": "simple",
                                "correct": row[3] if llm else row[2], "valid": True if llm else row[1],
                                "confidence": None if llm else row[0],
                                "latency_s": 0.1, "completion_tokens": 20} for task, row in TASKS.items()],
                   **({"config": {"guided": True}} if guided else {})}
        session.add(Evaluation(model_version_id=model_id, domain="bfcl", split="test", n_tasks=len(TASKS),
                               accuracy=0.5, per_category={}, details=details))


def test_calibrate_from_evaluations_stores_a_new_version(sqlite_store):
    _evaluation(sqlite_store, "small", llm=False)
    _evaluation(sqlite_store, "large", llm=True)
    set_policy(sqlite_store, "weather", "cascade", {"tiny": "small", "llm": "large", "threshold": 0.5})
    dry = calibrate(sqlite_store, "weather", target_accuracy=0.8, dry_run=True)
    assert dry.policy is None and active_row(sqlite_store, "weather").version == 1
    result = calibrate(sqlite_store, "weather", target_accuracy=0.8)
    assert (result.chosen.threshold, result.policy.version) == (0.8, 2)
    assert "10 common tasks" in result.source
    row = active_row(sqlite_store, "weather")
    assert row.params["threshold"] == 0.8 and row.params["llm"] == "large" and "was v1" in row.note
    # a newer guided evaluation decodes as no served request does: the gate keeps its served-like evidence
    _evaluation(sqlite_store, "small", llm=False, guided=True)
    again = calibrate(sqlite_store, "weather", target_accuracy=0.8, dry_run=True)
    assert again.chosen.threshold == 0.8 and again.source == result.source
    # a route whose LLM decodes guided calibrates on the LLM's guided evaluation, and needs one
    set_policy(sqlite_store, "guided", "cascade", {"tiny": "small", "llm": "large", "guided": ["llm"]})
    with pytest.raises(NotFoundError, match="llm guided"):
        calibrate(sqlite_store, "guided", target_accuracy=0.8, source="evaluations")
    _evaluation(sqlite_store, "large", llm=True, guided=True)
    guided = calibrate(sqlite_store, "guided", target_accuracy=0.8, dry_run=True)
    assert "(large, guided)" in guided.source and "(small)" in guided.source


def _log(store, route: str, detail: dict) -> None:
    with store.session() as session:
        session.add(RequestLog(request_id=uuid.uuid4().hex, created_at=dt.datetime.now(dt.UTC), route=route,
                               request={}, detail=detail, status=200))


def test_calibrate_from_logged_traffic(sqlite_store):
    set_policy(sqlite_store, "weather", "cascade", {"tiny": "small", "llm": "large"})
    for confidence in (0.2, 0.4, 0.6, 0.8):
        _log(sqlite_store, "weather", {"kind": "cascade", "tiny": {"confidence": confidence, "valid": True}})
    result = calibrate(sqlite_store, "weather", llm_budget=0.5)  # no evaluations of these models: logs
    assert "4 logged requests" in result.source and result.chosen.llm_share == 0.5
    assert result.chosen.threshold == 0.6
    with pytest.raises(InvalidInputError, match="no correctness"):
        calibrate(sqlite_store, "weather", target_accuracy=0.9)
    set_policy(sqlite_store, "shadowed", "cascade", {"tiny": "small", "llm": "large"})
    for confidence, agree in ((0.3, False), (0.6, True), (0.9, True)):
        _log(sqlite_store, "shadowed", {"kind": "shadow", "shadow": {"confidence": confidence, "valid": True,
                                                                     "agree": agree}})
    shadowed = calibrate(sqlite_store, "shadowed", target_accuracy=1.0)
    assert shadowed.chosen.threshold == 0.6 and "agreement with the LLM" in shadowed.source


def test_calibrate_hybrid_token_from_token_rewards(sqlite_store):
    set_policy(sqlite_store, "hybrid", "hybrid-token", {"tiny": "small", "llm": "large", "threshold": 0.5})
    _log(sqlite_store, "hybrid", {"kind": "hybrid-token", "token_scores": [0.1, 0.2, 0.3, 0.9, 0.95]})
    result = calibrate(sqlite_store, "hybrid", llm_budget=0.2)
    assert result.chosen.llm_share <= 0.2 and active_row(sqlite_store, "hybrid").params["threshold"] == 0.2
    with pytest.raises(InvalidInputError, match="only be calibrated to an LLM budget"):
        calibrate(sqlite_store, "hybrid", target_accuracy=0.9)


def test_calibrate_refuses_kinds_without_a_threshold(sqlite_store):
    set_policy(sqlite_store, "plain", "tiny", {"tiny": "small"})
    with pytest.raises(InvalidInputError, match="has no threshold"):
        calibrate(sqlite_store, "plain", llm_budget=0.1)


def run(store, *args: str):
    return CliRunner().invoke(cli, ["--db", store.url, *args], catch_exceptions=False)


def test_policy_cli(sqlite_store):
    from supertiny.models.versions import register_model_version

    unknown = run(sqlite_store, "policy", "set", "weather", "tiny", "-p", "tiny=small")
    assert unknown.exit_code == 1 and unknown.output.startswith("error: unknown model 'small'")
    assert len(unknown.output.strip().splitlines()) == 1
    with pytest.raises(NotFoundError):  # nothing was stored
        history(sqlite_store, "weather")
    for name in ("small", "large"):
        register_model_version(sqlite_store, name=name, stage="external", format="hf", backend="transformers",
                               path=f"/models/{name}")
    result = run(sqlite_store, "policy", "set", "weather", "cascade", "-p", "tiny=small", "-p", "llm=large",
                 "-p", "threshold=0.6", "--note", "first")
    assert result.exit_code == 0 and "version 1 is active (cascade" in result.output
    assert run(sqlite_store, "policy", "set", "weather", "tiny", "--params", '{"tiny": "small"}').exit_code == 0
    listed = json.loads(run(sqlite_store, "policy", "list", "--json").output)
    assert [(row["route"], row["version"], row["kind"]) for row in listed] == [("weather", 2, "tiny")]
    assert "tiny: small" in run(sqlite_store, "policy", "show", "weather").output
    assert "version 1 is active" in run(sqlite_store, "policy", "activate", "weather", "1").output
    versions = json.loads(run(sqlite_store, "policy", "history", "weather", "--json").output)
    assert [(row["version"], row["active"]) for row in versions] == [(1, True), (2, False)]
    assert "cascade" in run(sqlite_store, "policy", "kinds").output
    bad = run(sqlite_store, "policy", "set", "weather", "cascade", "-p", "tiny=small")
    assert bad.exit_code == 1 and bad.output.strip().splitlines() == \
        ["error: invalid params for a cascade policy: llm: Field required"]
    later = run(sqlite_store, "policy", "set", "soon", "tiny", "-p", "tiny=not-yet", "--allow-unknown-models")
    assert later.exit_code == 0
    _evaluation(sqlite_store, "small", llm=False)
    _evaluation(sqlite_store, "large", llm=True)
    calibrated = run(sqlite_store, "policy", "calibrate", "weather", "--target-accuracy", "0.9")
    assert calibrated.exit_code == 0 and "threshold 0.9: LLM share 0.800, accuracy 0.900; stored as version 3" \
        in calibrated.output
    assert len(history(sqlite_store, "weather")) == 3
    assert "disabled" in run(sqlite_store, "policy", "disable", "weather").output


def test_keys_cli(sqlite_store):
    created = run(sqlite_store, "keys", "create", "ci")
    secret = created.output.strip().splitlines()[0]
    assert created.exit_code == 0 and secret.startswith("sk-st-")
    listed = json.loads(run(sqlite_store, "keys", "list", "--json").output)
    assert [(row["name"], row["active"]) for row in listed] == [("ci", True)]
    assert secret not in json.dumps(listed) and listed[0]["prefix"] == secret[:14]
    assert run(sqlite_store, "keys", "create", "ci").exit_code == 1
    revoked = run(sqlite_store, "keys", "revoke", "ci")
    assert "revoked" in revoked.output and "no active key is left" in revoked.output
    assert json.loads(run(sqlite_store, "keys", "list", "--json").output)[0]["active"] is False


def test_a_cascade_calibrates_on_its_own_confidence_measure(sqlite_store):
    from supertiny.models.backend import answer_confidence

    # two tiny answers: "long" is sure of every token but long, "short" has one unsure token
    answers = {"long": ([-0.05] * 40, True), "short": ([-0.01, -1.2, -0.01], False)}
    small = register_model_version(sqlite_store, name="small", stage="external", format="hf",
                                   backend="transformers", path="/nowhere")
    large = register_model_version(sqlite_store, name="large", stage="external", format="hf",
                                   backend="transformers", path="/nowhere")
    with sqlite_store.session() as session:
        for model_id, llm in ((small.id, False), (large.id, True)):
            rows = [{"task": task, "task_hash": task, "category": "simple", "correct": True if llm else correct,
                     "valid": True, "confidence": None if llm else answer_confidence(logprobs, "mean"),
                     **({} if llm else {"token_logprobs": logprobs})}
                    for task, (logprobs, correct) in answers.items()]
            session.add(Evaluation(model_version_id=model_id, domain="bfcl", split="test", n_tasks=2, accuracy=0.5,
                                   per_category={}, details={"records": rows}))
    for measure, expected in (("mean", answer_confidence([-0.05] * 40, "mean")),
                              ("min", answer_confidence([-0.05] * 40, "min")),
                              ("joint", answer_confidence([-0.01, -1.2, -0.01], "joint"))):
        set_policy(sqlite_store, measure, "cascade", {"tiny": "small", "llm": "large", "confidence": measure})
        result = calibrate(sqlite_store, measure, llm_budget=0.5, dry_run=True)
        # mean and min send the short (wrong) answer, their least sure, to the LLM; joint the long (right) one
        half = next(point for point in result.points if point.llm_share == 0.5)
        assert half.threshold == pytest.approx(expected) and half.accuracy == (0.5 if measure == "joint" else 1.0)


def test_a_measure_other_than_the_mean_needs_the_evaluations_token_log_probabilities(sqlite_store):
    _evaluation(sqlite_store, "small", llm=False)
    _evaluation(sqlite_store, "large", llm=True)
    set_policy(sqlite_store, "weather", "cascade", {"tiny": "small", "llm": "large", "confidence": "joint"})
    with pytest.raises(InvalidInputError, match="keeps no token log-probabilities"):
        calibrate(sqlite_store, "weather", target_accuracy=0.8, source="evaluations")
    # from auto, with no logged traffic either: both reasons, the evaluation's first
    with pytest.raises(InvalidInputError, match=r"keeps no token log-probabilities.*; and no logged request"):
        calibrate(sqlite_store, "weather", target_accuracy=0.8)


def test_logged_answers_calibrate_by_the_measure_they_logged(sqlite_store):
    set_policy(sqlite_store, "weather", "cascade", {"tiny": "small", "llm": "large", "confidence": "min"})
    for mean, lowest in ((0.9, 0.2), (0.8, 0.6), (0.7, 0.65), (0.6, 0.5)):
        _log(sqlite_store, "weather", {"kind": "cascade", "tiny": {
            "confidence": mean, "confidences": {"mean": mean, "joint": lowest / 2, "min": lowest}, "valid": True}})
    result = calibrate(sqlite_store, "weather", llm_budget=0.5, dry_run=True)
    assert result.chosen.threshold == 0.6


def test_an_agreement_cascade_calibrates_on_the_agreement_its_evaluation_kept(sqlite_store):
    small = register_model_version(sqlite_store, name="small", stage="external", format="hf",
                                   backend="transformers", path="/nowhere")
    large = register_model_version(sqlite_store, name="large", stage="external", format="hf",
                                   backend="transformers", path="/nowhere")
    # the tiny answers' token probabilities say the opposite of their agreement: the gate must read agreement
    tiny = {"a": (0.99, 0.25, False), "b": (0.5, 1.0, True), "c": (0.98, 0.5, False), "d": (0.6, 0.75, True)}
    with sqlite_store.session() as session:
        session.add(Evaluation(model_version_id=small.id, domain="bfcl", split="test", n_tasks=4, accuracy=0.5,
                               per_category={}, details={"records": [
                                   {"task": task, "task_hash": task, "category": "simple", "correct": correct,
                                    "valid": True, "confidence": mean, "agreement": agreement}
                                   for task, (mean, agreement, correct) in tiny.items()]}))
        session.add(Evaluation(model_version_id=large.id, domain="bfcl", split="test", n_tasks=4, accuracy=1.0,
                               per_category={}, details={"records": [
                                   {"task": task, "task_hash": task, "category": "simple", "correct": True,
                                    "valid": True, "confidence": None} for task in tiny]}))
    set_policy(sqlite_store, "weather", "cascade", {"tiny": "small", "llm": "large", "confidence": "agreement"})
    result = calibrate(sqlite_store, "weather", llm_budget=0.5, dry_run=True)
    assert (result.chosen.threshold, result.chosen.llm_share, result.chosen.accuracy) == (0.75, 0.5, 1.0)
    set_policy(sqlite_store, "weather", "cascade", {"tiny": "small", "llm": "large", "confidence": "mean"})
    assert calibrate(sqlite_store, "weather", llm_budget=0.5, dry_run=True).chosen.accuracy == 0.5


def test_an_agreement_cascade_needs_an_evaluation_that_sampled(sqlite_store):
    _evaluation(sqlite_store, "small", llm=False)
    _evaluation(sqlite_store, "large", llm=True)
    set_policy(sqlite_store, "weather", "cascade", {"tiny": "small", "llm": "large", "confidence": "agreement"})
    with pytest.raises(InvalidInputError, match="sampled no answers to agree with") as raised:
        calibrate(sqlite_store, "weather", target_accuracy=0.8, source="evaluations")
    assert "--agreement-samples" in raised.value.hint
