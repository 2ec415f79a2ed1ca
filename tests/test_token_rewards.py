"""Built-in token rewards for hybrid-token decoding."""

import math

import pytest
from supertiny.policy.token_rewards import TokenProposal
from supertiny.registry import get_token_rewards


def test_builtin_rewards_are_registered():
    assert {"tiny-probability", "tiny-margin"} <= set(get_token_rewards())


def test_tiny_probability_is_the_proposed_tokens_probability():
    reward = get_token_rewards()["tiny-probability"]
    proposal = TokenProposal(token_id=3, logprob=math.log(0.25), top_logprobs=(math.log(0.5),), position=0)
    assert reward.score(proposal) == pytest.approx(0.25)


def test_tiny_margin_is_small_when_the_model_hesitates():
    reward = get_token_rewards()["tiny-margin"]
    sure = TokenProposal(1, math.log(0.9), (math.log(0.9), math.log(0.05)), 0)
    torn = TokenProposal(1, math.log(0.45), (math.log(0.45), math.log(0.44)), 0)
    assert reward.score(sure) == pytest.approx(0.85)
    assert reward.score(torn) == pytest.approx(0.01)
