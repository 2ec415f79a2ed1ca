"""Built-in routing policy kinds: tiny, llm, cascade, hybrid-token, canary, shadow."""

import supertiny
from supertiny.route.hybrid import HybridTokenPolicy
from supertiny.route.kinds import CanaryPolicy, CascadePolicy, LlmPolicy, ShadowPolicy, TinyPolicy


@supertiny.hookimpl(trylast=True)
def register_policies(register):
    for policy in (TinyPolicy(), LlmPolicy(), CascadePolicy(), HybridTokenPolicy(), CanaryPolicy(), ShadowPolicy()):
        register(policy)
