"""Token-level hybrid decoding through two vLLM engines (the tiny model's and the LLM's).

The tiny engine proposes a run of up to ``CHUNK`` tokens after what is written so far, each with its top
log-probabilities; the reward scores them in order; the first one below the threshold is replaced by one
token from the LLM's engine, and the tiny model proposes again from there. Since a reward reads only the
tiny model's own distribution at each position, this writes exactly the tokens of proposing one token at a
time (greedy decoding), in one request per LLM intervention instead of one per token. Both engines cache
prefixes, so each request computes only the tokens added since that engine's last request.
"""

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from supertiny.models.backend import GenerationOptions
from supertiny.policy.base import TierError
from supertiny.policy.hybrid import HybridResult, start_decoding, timeout_error
from supertiny.policy.token_rewards import TokenProposal, TokenReward
from supertiny.schema.messages import MessageLike
from supertiny.schema.tools import ToolLike

CHUNK = 16  # tokens the tiny model proposes per request: past a rejection they are discarded


def hybrid_generate_on_engines(tiny: Any, llm: Any, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None,
                               options: GenerationOptions, threshold: float, reward: TokenReward,
                               top_k: int = 5) -> HybridResult:
    """Decode one answer with the tiny model proposing and the LLM supplying low-reward tokens, both on
    engines (``capabilities.token_continuation``). Raises TierError naming the engine that failed."""
    decoding = start_decoding(tiny, llm, messages, tools, options)
    tokens = decoding.tokens
    used_llm = False

    def ask(role: str, model: Any, prompt: list[int], count: int, top: int) -> list[Any]:
        remaining = None if decoding.deadline is None else decoding.deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise timeout_error("llm" if used_llm else "tiny", model.name, options)
        step_options = dataclasses.replace(options, timeout_s=remaining, seed=_seed(options, len(tokens)))
        try:
            return model.continue_tokens(prompt, count, top, step_options)
        except Exception as exc:
            raise TierError(role, model.name, exc) from exc

    finished = False
    while not finished and len(tokens) < options.max_new_tokens:
        proposals = ask("tiny", tiny, decoding.tiny_prompt + tokens, min(CHUNK, options.max_new_tokens - len(tokens)),
                        top_k)
        if not proposals:
            break
        for step in proposals:
            proposal = TokenProposal(token_id=step.token_id, logprob=step.logprob, top_logprobs=step.top_logprobs,
                                     position=len(tokens))
            score = float(reward.score(proposal))
            decoding.scores.append(score)
            if score >= threshold:
                token, logprob, source = step.token_id, step.logprob, "t"
            else:
                used_llm = True
                (supplied,) = ask("llm", llm, decoding.llm_prompt + tokens, 1, 0)[:1]
                token, logprob, source = supplied.token_id, supplied.logprob, "L"
            decoding.write(token, logprob, source)
            finished = token in decoding.stops or len(tokens) >= options.max_new_tokens
            if finished or source == "L":
                break  # after the LLM's token, the tiny model proposes again from there
    return decoding.result(tiny.tokenizer, tools, options)


def _seed(options: GenerationOptions, position: int) -> int | None:
    """Each request of a sampled answer gets its own seed, derived from the answer's."""
    if options.temperature <= 0 or options.seed is None:
        return options.seed
    return options.seed + position
