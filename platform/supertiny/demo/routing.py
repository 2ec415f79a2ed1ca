"""The demo's routing step: a cascade from the best small model to the teacher, its gate learned and its threshold
calibrated on the evaluations the demo stored."""

from typing import Any

from supertiny.errors import InvalidInputError

# a compressed student this close to the trained one serves in its place
COMPRESSED_TOLERANCE = 0.03
# the most the route escalates to the LLM when reaching the LLM's accuracy would take more
LLM_BUDGET = 0.5


def store_route(demo: Any) -> dict[str, Any]:
    """Store the demo's cascade route: the compressed student where it is within :data:`COMPRESSED_TOLERANCE` of
    the trained one (else the trained one) -> the teacher, guided where the teacher was evaluated guided; calibrate
    its gate (learned from those evaluations; the mean token probability where they are too few to learn from) and
    threshold to reach the teacher's accuracy on the evaluation tasks, or, where that takes more than
    :data:`LLM_BUDGET` of the requests escalated (or cannot be done), to the most accurate point within it."""
    from supertiny.policy.calibrate import calibrate
    from supertiny.policy.learned_gate import LEARNED
    from supertiny.policy.policy_store import set_policy

    teacher = demo.state.result("eval-teacher")
    guided = demo.state.done("eval-teacher-guided") and "skipped" not in demo.state.result("eval-teacher-guided")
    if guided:  # the LLM tier serves as it was evaluated guided: that is the accuracy to reach
        teacher = demo.state.result("eval-teacher-guided")
    trained = demo.state.result("eval-trained")
    tiny, why = demo.trained(), "the trained student"
    for step in ("eval-compressed", "eval-pruned"):
        if demo.state.done(step):
            candidate = demo.state.result(step)
            if candidate["accuracy"] >= trained["accuracy"] - COMPRESSED_TOLERANCE:
                tiny = candidate["model"]
                why = f"{step.removeprefix('eval-')} student, within {COMPRESSED_TOLERANCE:.0%} of the trained one"
                break
    params = {"tiny": tiny, "llm": demo.plan.llm, "threshold": 0, "confidence": LEARNED,
              **({"guided": ["llm"]} if guided else {})}
    unlearnable = _why_no_gate(demo, tiny, guided)
    if unlearnable:  # too few evaluated tasks to learn a gate from (--quick)
        demo.echo(f"      no gate learned ({unlearnable}); the gate is the mean token probability")
        params = {**params, "confidence": "mean", "threshold": 0.5}
    set_policy(demo.store, demo.plan.route, "cascade", params, note=f"supertiny demo {demo.plan.tag}: tiny = {why}")
    goal: dict[str, float] = {"target_accuracy": teacher["accuracy"]}
    try:
        reaching = calibrate(demo.store, demo.plan.route, source="evaluations", domain=demo.plan.domain,
                             split="test", dry_run=True, **goal)
        why_not = (None if reaching.chosen.llm_share <= LLM_BUDGET else
                   f"reaching the LLM's accuracy escalates {reaching.chosen.llm_share:.0%} of the requests")
    except InvalidInputError as exc:
        why_not = exc.message
    if why_not:  # a cascade that escalates most requests saves little: the most accurate point within the budget
        demo.echo(f"      {why_not}; calibrating to an LLM budget of {LLM_BUDGET:.0%} instead")
        goal = {"llm_budget": LLM_BUDGET}
    calibration = calibrate(demo.store, demo.plan.route, source="evaluations", domain=demo.plan.domain,
                            split="test", **goal)
    chosen = calibration.chosen
    demo.echo(f"      route {demo.plan.route!r}: cascade {tiny} -> {demo.plan.llm}, {params['confidence']} gate, "
              f"threshold {chosen.threshold:.4g}: accuracy {chosen.accuracy:.1%} with {chosen.llm_share:.0%} of "
              "requests escalated (on the evaluation tasks)")
    gate = (calibration.policy.params.get("gate") or {}) if calibration.policy else {}
    return {"route": demo.plan.route, "tiny": tiny, "llm": demo.plan.llm, "why": why, "goal": goal,
            "guided_llm": guided, "confidence": params["confidence"], "gate_features": gate.get("features"),
            "threshold": chosen.threshold, "expected_accuracy": chosen.accuracy,
            "expected_llm_share": chosen.llm_share,
            "version": calibration.policy.version if calibration.policy else None,
            "curve": [{"threshold": point.threshold, "llm_share": point.llm_share, "accuracy": point.accuracy}
                      for point in calibration.points]}


def _why_no_gate(demo: Any, tiny: str, guided: bool) -> str | None:
    """Why no gate can be learned from the demo's evaluations of ``tiny`` and the LLM (None when one can)."""
    from supertiny.policy.calibrate import gate_examples_from_evaluations, learned_gate_records

    try:
        examples, _ = gate_examples_from_evaluations(demo.store, tiny, demo.plan.llm, demo.plan.domain, "test",
                                                     guided=["llm"] if guided else [])
        learned_gate_records(examples)
    except InvalidInputError as exc:
        return exc.message
    return None
