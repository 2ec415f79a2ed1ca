"""Built-in token rewards for hybrid-token routing."""

import supertiny
from supertiny.policy.token_rewards import TinyMarginReward, TinyProbabilityReward


@supertiny.hookimpl(trylast=True)
def register_token_rewards(register):
    register(TinyProbabilityReward())
    register(TinyMarginReward())
