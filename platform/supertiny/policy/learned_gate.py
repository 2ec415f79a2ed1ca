"""A cascade gate learned from outcomes: two logistic regressions over an answer's gate features (see
:mod:`supertiny.models.answer_features`), one for the chance the tiny model's answer is right, one for the chance
the LLM's would be. The gate's confidence is ``(1 + p_tiny - p_llm) / 2``: low where escalating is expected to
fix the answer, high where the tiny answer is likely right or the LLM likely no better. A confidence-only gate
ranks answers by how unsure the tiny model is; this one also learns where the LLM does not help (it fails the
same requests), which spends the LLM share on requests it can fix.

Fitted by Newton's method with an L2 penalty on standardized features; a served request is scored in plain
Python (a dot product per model). The curve a threshold is chosen from uses out-of-fold confidences (each record
scored by a gate that never saw it), so the chosen point is not a training-set estimate."""

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from supertiny.errors import InvalidInputError

LEARNED = "learned"
FOLDS = 5
MIN_EXAMPLES = 2 * FOLDS  # each fold's gate is fitted on at least 8
PENALTY = 1.0  # L2 on the standardized weights (not the intercept): a prior that no feature matters much
INTERCEPT_PENALTY = 0.01
NEWTON_STEPS = 50


@dataclasses.dataclass(frozen=True)
class GateExample:
    """One answered request or task: the tiny answer's gate features, whether it was valid (an invalid answer
    always escalates, so the gate never scores one) and who was right (``llm_correct`` None when unknown)."""

    features: Mapping[str, float]
    tiny_correct: bool
    llm_correct: bool | None
    tiny_valid: bool = True


class LearnedGate(BaseModel):
    """A fitted gate, stored in a cascade route's params."""

    model_config = ConfigDict(extra="forbid")

    features: list[str] = Field(min_length=1, description="Feature names, in the order of the weights.")
    center: list[float] = Field(description="Each feature's mean over the training examples.")
    scale: list[float] = Field(description="Each feature's standard deviation (1 for a constant one).")
    tiny_weights: list[float] = Field(description="Intercept, then one weight per feature: the tiny answer is right.")
    llm_weights: list[float] = Field(description="Intercept, then one weight per feature: the LLM's answer is right.")
    examples: int = Field(ge=1, description="Examples the gate was fitted on.")

    @model_validator(mode="after")
    def _lengths_agree(self) -> "LearnedGate":
        n = len(self.features)
        if not (len(self.center) == len(self.scale) == n and len(self.tiny_weights) == len(self.llm_weights) == n + 1):
            raise ValueError(f"a gate of {n} features needs {n} centers and scales and {n + 1} weights per model")
        return self

    def confidence(self, features: Mapping[str, float | None]) -> float | None:
        """The gate's confidence that the tiny answer should be served; None when a feature is missing."""
        values = [features.get(name) for name in self.features]
        if any(value is None for value in values):
            return None
        row = _standardized([float(value) for value in values if value is not None], self.center, self.scale)
        return (1 + _probability(self.tiny_weights, row) - _probability(self.llm_weights, row)) / 2


def fit_gate(examples: Sequence[GateExample], features: Sequence[str]) -> LearnedGate:
    """The gate fitted on ``examples`` (each must carry every one of ``features``); where no example knows the
    LLM's outcome, the LLM is taken to be right on every request (shadow traffic: the LLM is the reference)."""
    import numpy as np

    if not features:
        raise InvalidInputError("a learned gate needs at least one feature")
    if not examples:
        raise InvalidInputError("a learned gate needs examples with outcomes")
    rows = np.array([[float(example.features[name]) for name in features] for example in examples])
    center, scale = rows.mean(axis=0), rows.std(axis=0)
    scale[scale == 0] = 1.0
    standardized = (rows - center) / scale
    llm_labels = [example.llm_correct if example.llm_correct is not None else True for example in examples]
    return LearnedGate(features=list(features), center=center.tolist(), scale=scale.tolist(),
                       examples=len(examples),
                       tiny_weights=_logistic(standardized, [example.tiny_correct for example in examples]),
                       llm_weights=_logistic(standardized, llm_labels))


def shared_features(examples: Sequence[GateExample]) -> list[str]:
    """The features every example carries, sorted (a gate can only use what it will see on each request)."""
    if not examples:
        return []
    names = set(examples[0].features)
    for example in examples[1:]:
        names &= {name for name, value in example.features.items() if value is not None}
    return sorted(names)


def out_of_fold_confidences(examples: Sequence[GateExample], features: Sequence[str], folds: int = FOLDS,
                            seed: int = 0) -> list[float | None]:
    """Each example's confidence from a gate fitted on the other folds (shuffled by ``seed``)."""
    if len(examples) < MIN_EXAMPLES:
        raise InvalidInputError(f"a learned gate needs at least {MIN_EXAMPLES} answers with outcomes to fit and "
                                f"score out of fold, got {len(examples)}", hint="evaluate both models on more tasks")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    confidences: list[float | None] = [None] * len(examples)
    for fold in range(folds):
        held = set(order[fold::folds])
        gate = fit_gate([example for index, example in enumerate(examples) if index not in held], features)
        for index in held:
            confidences[index] = gate.confidence(examples[index].features)
    return confidences


def _standardized(row: Sequence[float], center: Sequence[float], scale: Sequence[float]) -> list[float]:
    return [(value - mean) / spread for value, mean, spread in zip(row, center, scale, strict=True)]


def _probability(weights: Sequence[float], row: Sequence[float]) -> float:
    score = weights[0] + sum(weight * value for weight, value in zip(weights[1:], row, strict=True))
    return 1 / (1 + math.exp(-max(-50.0, min(50.0, score))))


def _logistic(rows: Any, labels: Sequence[bool]) -> list[float]:
    """Intercept and weights of an L2-penalized logistic regression of ``labels`` on ``rows`` (Newton's method)."""
    import numpy as np

    design = np.hstack([np.ones((len(rows), 1)), rows])
    target = np.asarray(labels, dtype=float)
    # the intercept's small penalty keeps it finite where every label is alike
    penalty = np.full(design.shape[1], PENALTY)
    penalty[0] = INTERCEPT_PENALTY
    weights = np.zeros(design.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1 / (1 + np.exp(-np.clip(design @ weights, -50, 50)))
        gradient = design.T @ (p - target) + penalty * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return [round(float(weight), 6) for weight in weights]
