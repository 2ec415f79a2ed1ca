"""Choose a route's threshold for a target accuracy or an LLM budget, and store it as a new version.

cascade: the threshold is the lowest tiny-model confidence accepted, by the route's measure (its ``confidence``
parameter: mean, joint or min token probability, or the agreement of the tiny model's sampled answers with its
greedy one, which evaluations keep when run with ``--agreement-samples``). Its accuracy / LLM-share curve is
simulated exactly from stored evaluations of the tiny model and the LLM on the same tasks (each
record: task_id, correct, valid, confidence), or estimated from logged traffic: every cascade request
logs the tiny answer's confidence and validity, and shadow traffic (LLM primary, tiny shadow) logs
whether the tiny answer agreed with the LLM, which stands in for correctness (the LLM as reference). A cascade
whose confidence is ``learned`` has its gate fitted here on the same sources (evaluations of both models, or
shadow traffic; see :mod:`supertiny.policy.learned_gate`), and its threshold chosen on out-of-fold confidences.

hybrid-token: the threshold applies to each token's reward. Logged hybrid traffic records the reward of
every proposal, which gives the LLM token share at any threshold (an estimate: tokens after a
substituted one would differ); the accuracy of a token threshold needs evaluations of hybrid runs, so
only ``--llm-budget`` calibrates it.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from supertiny.errors import InvalidInputError, NotFoundError
from supertiny.eval.queries import is_guided
from supertiny.models.answer_agreement import AGREEMENT
from supertiny.models.backend import answer_confidence
from supertiny.policy import policy_store
from supertiny.policy.learned_gate import (
    FOLDS,
    LEARNED,
    GateExample,
    LearnedGate,
    fit_gate,
    out_of_fold_confidences,
    shared_features,
)
from supertiny.store.engine import Store
from supertiny.store.tables import Evaluation, ModelVersion, RequestLog, RoutingPolicy

CALIBRATED_KINDS = ("cascade", "hybrid-token")
MAX_THRESHOLD = 1.01  # above any probability: everything goes to the LLM


@dataclasses.dataclass(frozen=True)
class CalibrationRecord:
    """One request or task: the tiny answer's confidence and validity, and who was right."""

    confidence: float | None
    tiny_valid: bool
    tiny_correct: bool | None = None
    llm_correct: bool | None = None


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    threshold: float
    llm_share: float
    accuracy: float | None  # None when correctness is unknown
    n: int


@dataclasses.dataclass
class CalibrationResult:
    route: str
    kind: str
    source: str
    points: list[CurvePoint]
    chosen: CurvePoint
    goal: str
    policy: RoutingPolicy | None = None  # the stored new version (None on a dry run)

    def summary(self) -> dict[str, Any]:
        return {
            "route": self.route, "kind": self.kind, "source": self.source, "goal": self.goal,
            "chosen": dataclasses.asdict(self.chosen), "curve": [dataclasses.asdict(point) for point in self.points],
            "version": self.policy.version if self.policy else None,
        }


def _escalates(record: CalibrationRecord, threshold: float) -> bool:
    """Exactly the cascade's rule: an invalid answer, or (with a threshold) a missing or low confidence."""
    if not record.tiny_valid:
        return True
    return threshold > 0 and (record.confidence is None or record.confidence < threshold)


def cascade_curve(records: Sequence[CalibrationRecord]) -> list[CurvePoint]:
    """Accuracy and LLM share at every threshold that changes the routing, lowest first."""
    if not records:
        raise InvalidInputError("no records to calibrate from")
    confidences = sorted({record.confidence for record in records if record.confidence is not None})
    points = []
    for threshold in [0.0, *[c for c in confidences if c > 0], MAX_THRESHOLD]:
        escalated = [_escalates(record, threshold) for record in records]
        known = [outcome for outcome in cascade_outcomes(records, threshold) if outcome is not None]
        points.append(CurvePoint(threshold=threshold, llm_share=sum(escalated) / len(records),
                                 accuracy=sum(known) / len(known) if known else None, n=len(records)))
    return points


def cascade_outcomes(records: Sequence[CalibrationRecord], threshold: float) -> list[bool | None]:
    """Each record's outcome under the cascade at ``threshold``: the LLM's where it escalates, else the tiny
    model's (None where unknown)."""
    return [record.llm_correct if _escalates(record, threshold) else record.tiny_correct for record in records]


def token_curve(scores: Sequence[Sequence[float]]) -> list[CurvePoint]:
    """The share of tokens the LLM would supply at each threshold (hybrid-token)."""
    flat = sorted(score for request in scores for score in request)
    if not flat:
        raise InvalidInputError("no token scores to calibrate from")
    candidates = sorted({0.0, *_quantiles(flat, 200), MAX_THRESHOLD})
    points, below = [], 0
    for threshold in candidates:
        while below < len(flat) and flat[below] < threshold:
            below += 1
        points.append(CurvePoint(threshold=threshold, llm_share=below / len(flat), accuracy=None,
                                 n=len(scores)))
    return points


def _quantiles(values: Sequence[float], count: int) -> list[float]:
    step = max(1, len(values) // count)
    return [values[index] for index in range(0, len(values), step)] + [values[-1]]


def choose(points: Sequence[CurvePoint], target_accuracy: float | None = None,
           llm_budget: float | None = None) -> CurvePoint:
    """The cheapest point reaching ``target_accuracy``, or the most accurate within ``llm_budget``
    (without known accuracy: the one that uses most of the budget)."""
    if (target_accuracy is None) == (llm_budget is None):
        raise InvalidInputError("give exactly one of --target-accuracy and --llm-budget")
    if target_accuracy is not None:
        if not any(point.accuracy is not None for point in points):
            raise InvalidInputError("these records carry no correctness, so no accuracy target can be met",
                                    hint="calibrate from evaluations, or use --llm-budget")
        reaching = [point for point in points if point.accuracy is not None and point.accuracy >= target_accuracy]
        if not reaching:
            best = max((point for point in points if point.accuracy is not None), key=lambda point: point.accuracy or 0)
            raise InvalidInputError(f"no threshold reaches accuracy {target_accuracy:.3f}: the best is "
                                    f"{best.accuracy:.3f} at LLM share {best.llm_share:.3f}")
        return min(reaching, key=lambda point: (point.llm_share, point.threshold))
    within = [point for point in points if point.llm_share <= (llm_budget or 0) + 1e-12]
    if not within:
        raise InvalidInputError(f"no threshold keeps the LLM share within {llm_budget:.3f}: invalid tiny answers "
                                f"always escalate (lowest share {min(point.llm_share for point in points):.3f})")
    if any(point.accuracy is not None for point in within):
        return max(within, key=lambda point: (point.accuracy or 0.0, -point.llm_share, -point.threshold))
    return max(within, key=lambda point: (point.llm_share, point.threshold))


# --- records from the store ---------------------------------------------------------------------


def _model_id(session: Any, name: str) -> int:
    model_id = session.scalar(sa.select(ModelVersion.id).where(ModelVersion.name == name))
    if model_id is None:
        raise NotFoundError(f"model {name!r} is not registered, so it has no stored evaluations",
                            hint="register it (`supertiny models register`) and evaluate it, or use --from logs")
    return model_id


def _latest_with_records(session: Any, model_id: int, domain: str | None, split: str | None,
                         guided: bool) -> list[Evaluation]:
    query = sa.select(Evaluation).where(Evaluation.model_version_id == model_id).order_by(Evaluation.id.desc())
    if domain:
        query = query.where(Evaluation.domain == domain)
    if split:
        query = query.where(Evaluation.split == split)
    # only evaluations that decoded as the route's role does: another decoding's answers would mislead the gate
    return [row for row in session.scalars(query) if isinstance((row.details or {}).get("records"), list)
            and is_guided(row) == guided]


def _described(row: Evaluation, model: str) -> str:
    return f"{row.id} ({model}{', guided' if is_guided(row) else ''})"


def _task_key(record: dict[str, Any]) -> str:
    """What joins two evaluations' records: the task's content hash (older records: its id)."""
    return str(record.get("task_hash") or record.get("task_id") or record["task"])


def _evaluation_pairs(store: Store, tiny: str, llm: str, domain: str | None, split: str | None,
                      tiny_evaluation: int | None, llm_evaluation: int | None,
                      guided: Sequence[str]) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], int, str]:
    """The (tiny record, LLM record) of every task both chosen evaluations answered, the tiny evaluation's id, and
    where they came from: the two given, or the latest of both models on one domain split with per-record details
    (a role named in ``guided`` takes its model's guided evaluations, the other its free ones)."""
    with store.session() as session:
        if tiny_evaluation is not None and llm_evaluation is not None:
            pair = (session.get(Evaluation, tiny_evaluation), session.get(Evaluation, llm_evaluation))
            if None in pair:
                raise NotFoundError(f"no evaluation {tiny_evaluation if pair[0] is None else llm_evaluation}")
        else:
            tiny_rows = _latest_with_records(session, _model_id(session, tiny), domain, split, "tiny" in guided)
            llm_rows = _latest_with_records(session, _model_id(session, llm), domain, split, "llm" in guided)
            llm_by_set = {}
            for row in llm_rows:
                llm_by_set.setdefault((row.domain, row.split), row)
            pair = next(((row, llm_by_set[(row.domain, row.split)]) for row in tiny_rows
                         if (row.domain, row.split) in llm_by_set), (None, None))
            if pair[0] is None:
                decoded = "".join(f", {role} guided" for role in ("tiny", "llm") if role in guided)
                raise NotFoundError(f"no evaluations of both {tiny!r} and {llm!r} on one domain split with "
                                    f"per-record details{decoded}", hint="evaluate both models on the same tasks "
                                    f"first{' (eval run --guided for a guided role)' if decoded else ''}")
    tiny_row, llm_row = pair
    assert tiny_row is not None and llm_row is not None
    llm_records = {_task_key(record): record for record in llm_row.details["records"]}
    pairs = [(record, llm_records[_task_key(record)]) for record in tiny_row.details["records"]
             if _task_key(record) in llm_records]
    if not pairs:
        raise InvalidInputError(f"evaluations {tiny_row.id} and {llm_row.id} share no task")
    source = (f"evaluations {_described(tiny_row, tiny)} and {_described(llm_row, llm)} on "
              f"{tiny_row.domain}/{tiny_row.split}: {len(pairs)} common tasks")
    return pairs, tiny_row.id, source


def records_from_evaluations(store: Store, tiny: str, llm: str, domain: str | None = None, split: str | None = None,
                             tiny_evaluation: int | None = None, llm_evaluation: int | None = None,
                             guided: Sequence[str] = (), measure: str = "mean") -> tuple[list[CalibrationRecord], str]:
    """Records joining the latest evaluations (with per-record details) of both models on one domain split; a
    role named in ``guided`` takes its model's guided evaluations, the other its free ones. Each tiny answer's
    confidence is taken by ``measure`` (see :data:`CONFIDENCE_MEASURES`)."""
    pairs, tiny_id, source = _evaluation_pairs(store, tiny, llm, domain, split, tiny_evaluation, llm_evaluation,
                                               guided)
    records = [CalibrationRecord(confidence=_evaluated_confidence(record, measure, tiny_id),
                                 tiny_valid=bool(record.get("valid", True)),
                                 tiny_correct=bool(record["correct"]), llm_correct=bool(other["correct"]))
               for record, other in pairs]
    return records, source


def gate_examples_from_evaluations(store: Store, tiny: str, llm: str, domain: str | None = None,
                                   split: str | None = None, tiny_evaluation: int | None = None,
                                   llm_evaluation: int | None = None,
                                   guided: Sequence[str] = ()) -> tuple[list[GateExample], str]:
    """A learned gate's examples from the same joined evaluations: the tiny answer's gate features (with its
    sample agreement where the evaluation sampled) and both models' outcomes."""
    pairs, tiny_id, source = _evaluation_pairs(store, tiny, llm, domain, split, tiny_evaluation, llm_evaluation,
                                               guided)
    if not all(isinstance(record.get("features"), dict) for record, _ in pairs):
        raise InvalidInputError(f"evaluation {tiny_id} keeps no gate features of its answers, so no gate can be "
                                "learned from it", hint="evaluate the tiny model again")
    examples = [GateExample(features={**record["features"], **({AGREEMENT: record[AGREEMENT]}
                                                                if record.get(AGREEMENT) is not None else {})},
                            tiny_correct=bool(record["correct"]), llm_correct=bool(other["correct"]),
                            tiny_valid=bool(record.get("valid", True)))
                for record, other in pairs]
    return examples, source


def gate_examples_from_logs(store: Store, route: str, limit: int = 100_000) -> tuple[list[GateExample], str]:
    """A learned gate's examples from the route's shadow traffic (LLM primary, tiny shadow): the shadow's gate
    features, its agreement with the LLM as its correctness and the LLM as right (the reference)."""
    examples = [GateExample(features=shadow["features"], tiny_correct=bool(shadow["agree"]), llm_correct=True,
                            tiny_valid=bool(shadow.get("valid")))
                for detail in _log_details(store, route, limit) if detail.get("kind") == "shadow"
                and isinstance(shadow := detail.get("shadow"), dict) and "agree" in shadow
                and isinstance(shadow.get("features"), dict)]
    if not examples:
        raise InvalidInputError(f"no logged request of route {route!r} carries a shadowed tiny answer's gate "
                                "features and outcome, which a learned gate is fitted on",
                                hint="serve it with a shadow policy (LLM primary, tiny shadow) first, or calibrate "
                                "from evaluations")
    return examples, f"{len(examples)} shadowed requests of route {route!r} (accuracy = agreement with the LLM)"


def learned_gate_records(examples: Sequence[GateExample],
                         features: Sequence[str] | None = None) -> tuple[list[CalibrationRecord], LearnedGate]:
    """The calibration records of a learned gate, each valid answer's confidence out of fold (from a gate that
    never saw it), and the gate fitted on every valid answer; ``features`` defaults to all that every valid
    answer carries."""
    valid = [example for example in examples if example.tiny_valid]
    chosen = list(features) if features else shared_features(valid)
    missing = [name for name in chosen if any(example.features.get(name) is None for example in valid)]
    if missing:
        raise InvalidInputError(f"gate feature(s) {', '.join(missing)} missing from some answers",
                                hint=f"choose among {', '.join(shared_features(valid)) or 'none'}")
    scored = iter(out_of_fold_confidences(valid, chosen))
    records = [CalibrationRecord(confidence=next(scored) if example.tiny_valid else None,
                                 tiny_valid=example.tiny_valid, tiny_correct=example.tiny_correct,
                                 llm_correct=example.llm_correct) for example in examples]
    return records, fit_gate(valid, chosen)


def _evaluated_confidence(record: dict[str, Any], measure: str, evaluation_id: int) -> float | None:
    if measure == AGREEMENT:
        if "agreement" not in record:
            raise InvalidInputError(f"evaluation {evaluation_id} sampled no answers to agree with, so it gives no "
                                    "agreement confidence",
                                    hint="evaluate the tiny model again with `eval run --agreement-samples 4`")
        agreement = record["agreement"]
        return float(agreement) if agreement is not None else None
    if measure == "mean":
        confidence = record.get("confidence")
        return float(confidence) if confidence is not None else None
    if "token_logprobs" not in record:
        if record.get("confidence") is None:
            return None  # an answer without log-probabilities has no confidence by any measure
        raise InvalidInputError(f"evaluation {evaluation_id} keeps no token log-probabilities, so it gives no "
                                f"{measure} confidence", hint="evaluate the tiny model again")
    return answer_confidence(record["token_logprobs"], measure)


def _logged_confidence(answer: dict[str, Any], measure: str) -> float | None:
    by_measure = answer.get("confidences")
    if isinstance(by_measure, dict):
        return by_measure.get(measure)
    return answer.get("confidence") if measure == "mean" else None


def _log_details(store: Store, route: str, limit: int) -> list[dict[str, Any]]:
    with store.session() as session:
        rows = session.execute(sa.select(RequestLog.detail).where(RequestLog.route == route, RequestLog.status == 200)
                               .order_by(RequestLog.id.desc()).limit(limit)).scalars()
        return [detail for detail in rows if isinstance(detail, dict)]


def records_from_logs(store: Store, route: str, limit: int = 100_000,
                      measure: str = "mean") -> tuple[list[CalibrationRecord], str]:
    """Cascade records from the route's logged traffic: the tiny answer of cascade requests, and the
    tiny shadow of shadow requests (agreement with the LLM as correctness); confidences by ``measure``."""
    records = []
    agreements = 0
    for detail in _log_details(store, route, limit):
        tiny = detail.get("tiny")
        shadow = detail.get("shadow")
        if isinstance(tiny, dict) and "valid" in tiny:
            records.append(CalibrationRecord(confidence=_logged_confidence(tiny, measure),
                                             tiny_valid=bool(tiny["valid"])))
        elif isinstance(shadow, dict) and "agree" in shadow and detail.get("kind") == "shadow":
            agreements += 1
            records.append(CalibrationRecord(confidence=_logged_confidence(shadow, measure),
                                             tiny_valid=bool(shadow.get("valid")),
                                             tiny_correct=bool(shadow["agree"]), llm_correct=True))
    if not records:
        raise InvalidInputError(f"no logged request of route {route!r} carries a tiny answer's confidence",
                                hint="serve it with a cascade or shadow policy first, or calibrate from evaluations")
    source = f"{len(records)} logged requests of route {route!r}"
    if agreements:
        source += f" ({agreements} shadowed: accuracy = agreement with the LLM)"
    return records, source


def token_scores_from_logs(store: Store, route: str, limit: int = 100_000) -> tuple[list[list[float]], str]:
    scores = [detail["token_scores"] for detail in _log_details(store, route, limit)
              if isinstance(detail.get("token_scores"), list) and detail["token_scores"]]
    if not scores:
        raise InvalidInputError(f"no logged request of route {route!r} carries token rewards",
                                hint="serve it with a hybrid-token policy first")
    return scores, f"token rewards of {len(scores)} logged requests of route {route!r} (share estimated)"


def calibrate(store: Store, route: str, *, target_accuracy: float | None = None, llm_budget: float | None = None,
              source: str = "auto", domain: str | None = None, split: str | None = None,
              tiny_evaluation: int | None = None, llm_evaluation: int | None = None,
              gate_features: Sequence[str] | None = None, dry_run: bool = False) -> CalibrationResult:
    """Compute the route's curve, choose the threshold, and (unless ``dry_run``) store a new version; a cascade
    whose confidence is learned also gets its gate fitted (on ``gate_features``, default: every feature the
    answers carry)."""
    for name, value in (("target accuracy", target_accuracy), ("LLM budget", llm_budget)):
        if value is not None and not 0 <= value <= 1:
            raise InvalidInputError(f"the {name} is a fraction between 0 and 1, got {value}")
    row = policy_store.active_row(store, route)
    if row is None:
        raise NotFoundError(f"route {route!r} has no active policy", hint="`supertiny policy set` first")
    if row.kind not in CALIBRATED_KINDS:
        raise InvalidInputError(f"route {route!r} is served by a {row.kind} policy, which has no threshold",
                                hint=f"calibrate a route whose policy is {' or '.join(CALIBRATED_KINDS)}")
    params = dict(row.params)
    if row.kind == "hybrid-token":
        if target_accuracy is not None:
            raise InvalidInputError("a hybrid-token threshold can only be calibrated to an LLM budget",
                                    hint="use --llm-budget (token shares come from logged traffic)")
        if source == "evaluations":
            raise InvalidInputError("hybrid-token thresholds calibrate from logged traffic (--from logs)")
        scores, described = token_scores_from_logs(store, route)
        points = token_curve(scores)
    else:
        measure = params.get("confidence", "mean")
        evaluated = (store, params["tiny"], params["llm"], domain, split, tiny_evaluation, llm_evaluation,
                     params.get("guided") or ())

        def by_evaluations() -> tuple[Any, str]:
            if measure == LEARNED:
                return gate_examples_from_evaluations(*evaluated)
            return records_from_evaluations(*evaluated, measure=measure)

        def by_logs() -> tuple[Any, str]:
            return gate_examples_from_logs(store, route) if measure == LEARNED else \
                records_from_logs(store, route, measure=measure)

        if source in ("auto", "evaluations"):
            try:
                records, described = by_evaluations()
            except (NotFoundError, InvalidInputError) as from_evaluations:
                if source == "evaluations":
                    raise
                try:
                    records, described = by_logs()
                except InvalidInputError as from_logs:  # say why neither source serves, the evaluations first
                    raise InvalidInputError(f"{from_evaluations.message}; and {from_logs.message}",
                                            hint=from_evaluations.hint) from from_logs
        else:
            records, described = by_logs()
        if measure == LEARNED:
            records, gate = learned_gate_records(records, gate_features)
            params["gate"] = gate.model_dump()
            described += f"; gate on {', '.join(gate.features)}, confidences out of {FOLDS} folds"
        elif gate_features:
            raise InvalidInputError("--gate-features applies to a cascade whose confidence is learned",
                                    hint=f"this route's is {measure}")
        points = cascade_curve(records)
    chosen = choose(points, target_accuracy, llm_budget)
    goal = f"target accuracy {target_accuracy}" if target_accuracy is not None else f"LLM budget {llm_budget}"
    result = CalibrationResult(route=route, kind=row.kind, source=described, points=points, chosen=chosen, goal=goal)
    if not dry_run:
        accuracy = f", accuracy {chosen.accuracy:.3f}" if chosen.accuracy is not None else ""
        note = (f"calibrated for {goal} from {described}: threshold {chosen.threshold}, "
                f"LLM share {chosen.llm_share:.3f}{accuracy} (was v{row.version}, threshold {params.get('threshold')})")
        result.policy = policy_store.set_policy(store, route, row.kind, {**params, "threshold": chosen.threshold}, note)
    return result
