"""The demo's routing step: a cascade from the best small model to the teacher, its threshold calibrated on the
evaluations the demo stored."""

from typing import Any

from supertiny.errors import InvalidInputError

# a compressed student this close to the trained one serves in its place
COMPRESSED_TOLERANCE = 0.03


def store_route(demo: Any) -> dict[str, Any]:
    """Store the demo's cascade route: the compressed student where it is within :data:`COMPRESSED_TOLERANCE` of
    the trained one (else the trained one) -> the teacher, guided where the teacher was evaluated guided; calibrate
    its threshold to reach the teacher's accuracy on the evaluation tasks, or to the most accurate point within half
    the requests escalated."""
    from supertiny.policy.calibrate import calibrate
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
    set_policy(demo.store, demo.plan.route, "cascade", {"tiny": tiny, "llm": demo.plan.llm, "threshold": 0.5,
                                                        **({"guided": ["llm"]} if guided else {})},
               note=f"supertiny demo {demo.plan.tag}: tiny = {why}")
    goal: dict[str, float] = {"target_accuracy": teacher["accuracy"]}
    try:
        calibration = calibrate(demo.store, demo.plan.route, source="evaluations", domain=demo.plan.domain,
                                split="test", **goal)
    except InvalidInputError as exc:
        # the cascade cannot reach the teacher on these tasks: take the most accurate point within a 50% budget
        demo.echo(f"      {exc.message}; calibrating to an LLM budget of 50% instead")
        goal = {"llm_budget": 0.5}
        calibration = calibrate(demo.store, demo.plan.route, source="evaluations", domain=demo.plan.domain,
                                split="test", **goal)
    chosen = calibration.chosen
    demo.echo(f"      route {demo.plan.route!r}: cascade {tiny} -> {demo.plan.llm}, threshold "
              f"{chosen.threshold:.4g}: accuracy {chosen.accuracy:.1%} with {chosen.llm_share:.0%} of requests "
              f"escalated (on the evaluation tasks)")
    return {"route": demo.plan.route, "tiny": tiny, "llm": demo.plan.llm, "why": why, "goal": goal,
            "guided_llm": guided,
            "threshold": chosen.threshold, "expected_accuracy": chosen.accuracy,
            "expected_llm_share": chosen.llm_share,
            "version": calibration.policy.version if calibration.policy else None,
            "curve": [{"threshold": point.threshold, "llm_share": point.llm_share, "accuracy": point.accuracy}
                      for point in calibration.points]}
