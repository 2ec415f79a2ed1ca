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

from supertiny.errors import BackendTimeoutError, InvalidInputError
from supertiny.models.backend import GenerationOptions
from supertiny.policy.base import TierError
from supertiny.policy.hybrid import HybridResult, check_compatible, hybrid_result
from supertiny.policy.token_rewards import TokenProposal, TokenReward
from supertiny.schema.messages import MessageLike
from supertiny.schema.tools import ToolLike

CHUNK = 16  # tokens the tiny model proposes per request: past a rejection they are discarded


def hybrid_generate_on_engines(tiny: Any, llm: Any, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None,
                               options: GenerationOptions, threshold: float, reward: TokenReward,
                               top_k: int = 5) -> HybridResult:
    """Decode one answer with the tiny model proposing and the LLM supplying low-reward tokens, both on
    engines (``capabilities.token_continuation``). Raises TierError naming the engine that failed."""
    check_compatible(tiny, llm)
    if options.max_new_tokens < 1:
        raise InvalidInputError("max_new_tokens must be at least 1")
    started = time.perf_counter()
    deadline = None if options.timeout_s is None else time.monotonic() + options.timeout_s
    tiny_prompt = tiny.tokenizer(tiny.render_prompt(messages, tools), add_special_tokens=False)["input_ids"]
    llm_prompt = llm.tokenizer(llm.render_prompt(messages, tools), add_special_tokens=False)["input_ids"]
    stops = set(tiny.stop_token_ids) | set(llm.stop_token_ids)
    tokens: list[int] = []
    logprobs: list[float] = []
    sources: list[str] = []
    scores: list[float] = []
    used_llm = False

    def ask(role: str, model: Any, prompt: list[int], count: int, top: int) -> list[Any]:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TierError("llm" if used_llm else "tiny", model.name, BackendTimeoutError(
                f"hybrid decoding did not finish within {options.timeout_s:g}s"))
        step_options = dataclasses.replace(options, timeout_s=remaining, seed=_seed(options, len(tokens)))
        try:
            return model.continue_tokens(prompt, count, top, step_options)
        except Exception as exc:
            raise TierError(role, model.name, exc) from exc

    finished = False
    while not finished and len(tokens) < options.max_new_tokens:
        proposals = ask("tiny", tiny, tiny_prompt + tokens, min(CHUNK, options.max_new_tokens - len(tokens)), top_k)
        if not proposals:
            break
        for step in proposals:
            proposal = TokenProposal(token_id=step.token_id, logprob=step.logprob, top_logprobs=step.top_logprobs,
                                     position=len(tokens))
            score = float(reward.score(proposal))
            scores.append(score)
            if score >= threshold:
                token, logprob, source = step.token_id, step.logprob, "t"
            else:
                used_llm = True
                (supplied,) = ask("llm", llm, llm_prompt + tokens, 1, 0)[:1]
                token, logprob, source = supplied.token_id, supplied.logprob, "L"
            tokens.append(token)
            logprobs.append(logprob)
            sources.append(source)
            finished = token in stops or len(tokens) >= options.max_new_tokens
            if finished or source == "L":
                break  # after the LLM's token, the tiny model proposes again from there
    return hybrid_result(tiny.tokenizer, tools, options, stops, len(tiny_prompt), started, tokens, logprobs, sources,
                         scores)


def _seed(options: GenerationOptions, position: int) -> int | None:
    """Each request of a sampled answer gets its own seed, derived from the answer's."""
    if options.temperature <= 0 or options.seed is None:
        return options.seed
    return options.seed + position
