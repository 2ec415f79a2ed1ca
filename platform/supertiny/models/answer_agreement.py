"""Agreement between answers: whether two answers make the same calls, and how many of a model's sampled answers
agree with the one it gives greedily. The latter is a routing gate's confidence that needs no log-probabilities:
a model that answers the same whatever it samples is sure of its answer; a wrong answer tends to come with
samples that disagree (self-consistency)."""

from collections.abc import Sequence

from supertiny.models.backend import Generation

AGREEMENT = "agreement"


def calls_agree(first: Generation, second: Generation) -> bool:
    """Both answers make the same calls (names and arguments, in any order), or both make none and
    say the same thing."""
    def key(generation: Generation) -> list[str]:
        return sorted(f"{call.name}:{call.arguments_json()}" for call in generation.parse.calls)

    if first.parse.calls or second.parse.calls:
        return first.parse.ok and second.parse.ok and key(first) == key(second)
    return (first.text or "").strip() == (second.text or "").strip()


def sample_agreement(answer: Generation, samples: Sequence[Generation]) -> float | None:
    """The share of ``samples`` that agree with ``answer`` (None without samples)."""
    if not samples:
        return None
    return sum(calls_agree(answer, sample) for sample in samples) / len(samples)
