"""Built-in routing policy kinds: tiny, llm, cascade, hybrid-token, canary, shadow."""

import supertiny
from supertiny.policy.hybrid import HybridTokenPolicy
from supertiny.policy.kinds import CanaryPolicy, CascadePolicy, LlmPolicy, ShadowPolicy, TinyPolicy


@supertiny.hookimpl(trylast=True)
def register_policies(register):
    for policy in (TinyPolicy(), LlmPolicy(), CascadePolicy(), HybridTokenPolicy(), CanaryPolicy(), ShadowPolicy()):
        register(policy)
