"""Intervals and paired tests for accuracies: a score on n tasks is a binomial proportion, and two models
judged on the same tasks are compared on the tasks where they disagree."""

import math


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of ``correct / n`` (95% for the default z); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar p-value: ``only_first`` tasks right only for the first model, ``only_second``
    right only for the second (the tasks both got right or both wrong say nothing about which is better)."""
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    smaller = min(only_first, only_second)
    tail = sum(math.comb(discordant, k) for k in range(smaller + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def format_accuracy(correct: int, n: int) -> str:
    """``"62.0% [55.8, 67.8] (n=250)"``: the accuracy, its 95% Wilson interval and the sample size."""
    low, high = wilson_interval(correct, n)
    share = correct / n if n else 0.0
    return f"{share:.1%} [{low * 100:.1f}, {high * 100:.1f}] (n={n})"


def format_p_value(p: float) -> str:
    """``"p = 0.021"``, or ``"p < 1e-6"`` where the value is smaller than the stored precision shows."""
    return "p < 1e-6" if p < 1e-6 else f"p = {p:.2g}"
