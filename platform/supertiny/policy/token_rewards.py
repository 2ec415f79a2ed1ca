"""Token rewards for hybrid decoding (arXiv 2409.13757): the tiny model proposes each token, a
reward scores it, and below the policy's threshold the LLM supplies that token instead."""

import dataclasses
import math
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class TokenProposal:
    """What the tiny model proposes at one decoding step."""

    token_id: int
    logprob: float
    # log-probabilities of the tiny model's most likely tokens at this step, best first
    top_logprobs: tuple[float, ...]
    position: int


class TokenReward(Protocol):
    name: str
    description: str

    def score(self, proposal: TokenProposal) -> float:
        """A score in [0, 1]: higher means the tiny model's token is more likely right."""
        ...


class TinyProbabilityReward:
    """The tiny model's own probability of the token it proposes (the default)."""

    name = "tiny-probability"
    description = "probability the tiny model gives its own proposed token"

    def score(self, proposal: TokenProposal) -> float:
        return math.exp(proposal.logprob)


class TinyMarginReward:
    """The gap between the tiny model's two most likely tokens: small when it hesitates."""

    name = "tiny-margin"
    description = "probability margin between the tiny model's best and second-best token"

    def score(self, proposal: TokenProposal) -> float:
        top = [math.exp(logprob) for logprob in proposal.top_logprobs[:2]]
        if len(top) < 2:
            return math.exp(proposal.logprob)
        return max(0.0, top[0] - top[1])
