"""A cascade gate learned from outcomes: two logistic regressions over an answer's gate features (see
:mod:`supertiny.models.answer_features`), one for the chance the tiny model's answer is right, one for the chance
the LLM's would be. The gate's confidence is ``(1 + p_tiny - p_llm) / 2``: low where escalating is expected to
fix the answer, high where the tiny answer is likely right or the LLM likely no better. A confidence-only gate
ranks answers by how unsure the tiny model is; this one also learns where the LLM does not help (it fails the
same requests), which spends the LLM share on requests it can fix.

Fitted by Newton's method with an L2 penalty on standardized features (a few features, a few thousand records
at most: plain Python, no numerical library). The curve a threshold is chosen from uses out-of-fold
confidences (each record scored by a gate that never saw it), so the chosen point is not a training-set
estimate."""

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from supertiny.errors import InvalidInputError

LEARNED = "learned"
FOLDS = 5
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
    if not features:
        raise InvalidInputError("a learned gate needs at least one feature")
    if len(examples) < 2 * FOLDS:
        raise InvalidInputError(f"a learned gate needs at least {2 * FOLDS} examples with outcomes, got "
                                f"{len(examples)}", hint="evaluate both models on more tasks")
    rows = [[float(example.features[name]) for name in features] for example in examples]
    center = [sum(column) / len(rows) for column in zip(*rows, strict=True)]
    scale = [math.sqrt(sum((value - mean) ** 2 for value in column) / len(rows)) or 1.0
             for column, mean in zip(zip(*rows, strict=True), center, strict=True)]
    standardized = [_standardized(row, center, scale) for row in rows]
    llm_labels = [example.llm_correct if example.llm_correct is not None else True for example in examples]
    return LearnedGate(features=list(features), center=center, scale=scale, examples=len(examples),
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


def _logistic(rows: Sequence[Sequence[float]], labels: Sequence[bool]) -> list[float]:
    """Intercept and weights of an L2-penalized logistic regression (Newton's method)."""
    size = len(rows[0]) + 1
    weights = [0.0] * size
    design = [[1.0, *row] for row in rows]
    for _ in range(NEWTON_STEPS):
        gradient = [0.0] * size
        hessian = [[0.0] * size for _ in range(size)]
        for row, label in zip(design, labels, strict=True):
            p = _probability(weights, row[1:])
            for i in range(size):
                gradient[i] += (p - float(label)) * row[i]
                for j in range(i + 1):
                    hessian[i][j] += p * (1 - p) * row[i] * row[j]
        for i in range(size):
            for j in range(i):
                hessian[j][i] = hessian[i][j]
        for i in range(size):  # the intercept's small penalty keeps it finite where every label is alike
            penalty = PENALTY if i else INTERCEPT_PENALTY
            gradient[i] += penalty * weights[i]
            hessian[i][i] += penalty
        step = _solve(hessian, gradient)
        weights = [weight - delta for weight, delta in zip(weights, step, strict=True)]
        if max(abs(delta) for delta in step) < 1e-8:
            break
    return [round(weight, 6) for weight in weights]


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """``matrix^-1 vector`` by Gaussian elimination with partial pivoting (matrix: symmetric positive definite)."""
    n = len(vector)
    augmented = [[*row, value] for row, value in zip(matrix, vector, strict=True)]
    for column in range(n):
        pivot = max(range(column, n), key=lambda row: abs(augmented[row][column]))
        augmented[column], augmented[pivot] = augmented[pivot], augmented[column]
        for row in range(column + 1, n):
            factor = augmented[row][column] / augmented[column][column]
            for k in range(column, n + 1):
                augmented[row][k] -= factor * augmented[column][k]
    solution = [0.0] * n
    for row in range(n - 1, -1, -1):
        solution[row] = (augmented[row][n] - sum(augmented[row][k] * solution[k] for k in range(row + 1, n))) \
            / augmented[row][row]
    return solution
