"""The built-in policy kinds that choose a whole answer: tiny, llm, cascade, canary and shadow.
(The token-level kind, hybrid-token, is in :mod:`supertiny.policy.hybrid`.)"""

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from supertiny.models.answer_agreement import AGREEMENT, sample_agreement
from supertiny.models.answer_features import answer_features
from supertiny.models.backend import CONFIDENCE_MEASURES, Generation, answer_confidence
from supertiny.policy.base import Decision, Policy, PolicyParams, RouteContext, TierError
from supertiny.policy.learned_gate import LEARNED, LearnedGate
from supertiny.schema import ToolSpec

# every measure a cascade's gate can threshold: the token-probability measures, sample agreement and a learned gate
GATE_MEASURES = (*CONFIDENCE_MEASURES, AGREEMENT, LEARNED)


def answer_problem(generation: Generation, tools: Sequence[ToolSpec] | None, call_required: bool) -> str | None:
    """Why an answer cannot be served as it is: ``invalid_call`` (the calls do not parse), ``schema``
    (they break the tools' JSON Schemas or name an unknown function), ``no_call`` (a call was
    required); None when it is fine."""
    from supertiny.models.tool_schemas import validate_calls

    if not generation.parse.ok:
        return "invalid_call"
    if generation.parse.calls and tools and validate_calls(generation.parse.calls, tools):
        return "schema"
    if call_required and not generation.parse.calls:
        return "no_call"
    return None


def answer_summary(generation: Generation, context: RouteContext, call_required: bool | None = None) -> dict[str, Any]:
    """What the log keeps of an answer to ``context``'s request that was not (or not only) the one served; its
    gate features let a learned gate be fitted on shadow traffic."""
    required = context.call_required if call_required is None else call_required
    problem = answer_problem(generation, context.tools, required)
    return {
        "confidence": generation.confidence,
        "confidences": generation.confidences(),
        "features": answer_features(context.messages, context.tools, generation),
        "valid": problem is None,
        "problem": problem,
        "calls": [call.model_dump() for call in generation.parse.calls],
        "text": generation.text[:2000],
        "completion_tokens": generation.completion_tokens,
        "latency_ms": round(generation.latency_s * 1000, 2),
    }


class TinyParams(PolicyParams):
    tiny: str = Field(description="Model that answers every request.")
    llm: str | None = Field(default=None, description="Optional model that answers when the tiny one fails.")

    def models(self) -> dict[str, str]:
        return {"tiny": self.tiny, **({"llm": self.llm} if self.llm else {})}


class LlmParams(PolicyParams):
    llm: str = Field(description="Model that answers every request.")
    tiny: str | None = Field(default=None, description="Optional model that answers when the LLM fails.")

    def models(self) -> dict[str, str]:
        return {"llm": self.llm, **({"tiny": self.tiny} if self.tiny else {})}


class TinyPolicy(Policy):
    name = "tiny"
    description = "the tiny model answers"
    params_model = TinyParams

    def decide(self, params: PolicyParams, context: RouteContext) -> Decision:
        return Decision(role="tiny")


class LlmPolicy(Policy):
    name = "llm"
    description = "the large model answers"
    params_model = LlmParams

    def decide(self, params: PolicyParams, context: RouteContext) -> Decision:
        return Decision(role="llm")


class CascadeParams(PolicyParams):
    tiny: str = Field(description="Model that answers first.")
    llm: str = Field(description="Model that answers when the tiny answer is rejected.")
    threshold: float = Field(default=0.5, ge=0, le=1.01, description="Lowest confidence accepted.")
    confidence: Literal["mean", "joint", "min", "agreement", "learned"] = Field(
        default="mean", description="What the threshold applies to: mean, the answer's geometric-mean token "
        "probability; joint, the probability of the whole answer; min, that of its least likely token; agreement, "
        "the share of `samples` answers the tiny model samples at `sample_temperature` that make the answer's "
        "calls; learned, the `gate` fitted on evaluated or shadowed outcomes (`policy calibrate`).")
    samples: int = Field(default=4, ge=1, le=32, description="With confidence agreement (or a learned gate on "
                         "agreement): answers sampled to compare (one engine request; the prompt's prefill is shared).")
    sample_temperature: float = Field(default=0.7, gt=0, le=2, description="With confidence agreement (or a learned "
                                      "gate on agreement): the temperature the samples are drawn at.")
    gate: LearnedGate | None = Field(default=None, description="With confidence learned: the fitted gate "
                                     "(`policy calibrate` fits and stores it).")

    @model_validator(mode="after")
    def _learned_needs_a_gate(self) -> "CascadeParams":
        if self.confidence == LEARNED and self.threshold > 0 and self.gate is None:
            raise ValueError("confidence learned with a threshold needs a fitted gate: set threshold=0 and run "
                             "`supertiny policy calibrate ROUTE`, which fits the gate and chooses the threshold")
        return self

    def models(self) -> dict[str, str]:
        return {"tiny": self.tiny, "llm": self.llm}


class CascadePolicy(Policy):
    name = "cascade"
    description = ("the tiny model answers first; the LLM answers when the call does not parse, breaks the "
                   "tools' schemas, or the confidence is below the threshold")
    params_model = CascadeParams

    def decide(self, params: PolicyParams, context: RouteContext) -> Decision:
        assert isinstance(params, CascadeParams)
        try:
            tiny = context.generate("tiny")
        except TierError as exc:
            return Decision(role="llm", escalated=True, reason="tiny_failed", failure=exc)
        problem = answer_problem(tiny, context.tools, context.call_required)
        summary = answer_summary(tiny, context)
        if params.confidence == AGREEMENT:
            confidence = None
            if problem is None and params.threshold > 0:  # an answer that escalates anyway needs no samples
                confidence = _agreement(tiny, context, params)
                summary["confidences"][AGREEMENT] = confidence
        elif params.confidence == LEARNED:
            confidence = None
            if problem is None and params.gate is not None and params.threshold > 0:
                features = dict(summary["features"])
                if AGREEMENT in params.gate.features:
                    features[AGREEMENT] = summary["confidences"][AGREEMENT] = _agreement(tiny, context, params)
                confidence = params.gate.confidence(features)
                summary["confidences"][LEARNED] = confidence
        else:
            confidence = answer_confidence(tiny.token_logprobs, params.confidence)
        if problem is None and params.threshold > 0:
            if confidence is None:
                problem = "no_confidence"
            elif confidence < params.threshold:
                problem = "low_confidence"
        detail = {"tiny": summary, "threshold": params.threshold, "confidence_measure": params.confidence}
        if problem is None:
            return Decision(role="tiny", generation=tiny, confidence=confidence, detail=detail)
        return Decision(role="llm", escalated=True, reason=problem, confidence=confidence,
                        fallback_generation=tiny, fallback_role="tiny", detail=detail)


def _agreement(answer: Generation, context: RouteContext, params: CascadeParams) -> float | None:
    """The share of the tiny model's sampled answers that agree with ``answer``; None when it cannot sample (the
    request escalates as one without a confidence)."""
    try:
        samples = context.generate_samples("tiny", params.samples, params.sample_temperature)
    except TierError:
        return None
    return sample_agreement(answer, samples)


class CanaryParams(PolicyParams):
    a: str = Field(description="Model that gets `percent` of the traffic (the canary).")
    b: str = Field(description="Model that gets the rest.")
    percent: float = Field(ge=0, le=100, description="Percent of requests served by `a`.")

    def models(self) -> dict[str, str]:
        return {"a": self.a, "b": self.b}


def canary_bucket(request_id: str) -> float:
    """A number in [0, 100) fixed by the request id: the same id always lands in the same bucket."""
    digest = hashlib.sha256(request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100


class CanaryPolicy(Policy):
    name = "canary"
    description = "percent of the traffic to model a, the rest to model b (deterministic per request id)"
    params_model = CanaryParams

    def decide(self, params: PolicyParams, context: RouteContext) -> Decision:
        assert isinstance(params, CanaryParams)
        bucket = canary_bucket(context.request_id)
        return Decision(role="a" if bucket < params.percent else "b", detail={"bucket": bucket})


class ShadowParams(PolicyParams):
    primary: str = Field(description="Model that serves.")
    shadow: str = Field(description="Model run in the background on the same request; its agreement is logged.")
    sample_percent: float = Field(default=100.0, ge=0, le=100, description="Percent of requests shadowed.")

    def models(self) -> dict[str, str]:
        return {"primary": self.primary, "shadow": self.shadow}


class ShadowPolicy(Policy):
    name = "shadow"
    description = "the primary model serves; the shadow model answers the same request in the background"
    params_model = ShadowParams

    def decide(self, params: PolicyParams, context: RouteContext) -> Decision:
        assert isinstance(params, ShadowParams)
        shadowed = canary_bucket("shadow:" + context.request_id) < params.sample_percent
        return Decision(role="primary", shadow_role="shadow" if shadowed else None)
