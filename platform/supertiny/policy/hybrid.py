"""Token-level hybrid decoding (arXiv 2409.13757) and the ``hybrid-token`` policy kind.

The tiny model proposes every token; a registered token reward scores the proposal; when the score is
below the threshold the LLM supplies that token instead. Each model keeps its own KV cache
(``DynamicCache``) over its own rendering of the prompt; every accepted token is appended to both.
The LLM is lazy: it only catches up on the tokens it has not seen (one forward pass over all of
them) when its token is needed, so at a low threshold it costs almost nothing.

Both tiers need the same vocabulary (the Qwen2.5 0.5B/1.5B pair shares one tokenizer). Where both run on
vLLM engines, decoding goes through them (:mod:`supertiny.policy.hybrid_engines`); otherwise both run
in-process (their weights in this process, even where an engine serves one of them).
"""

import contextlib
import dataclasses
import hashlib
import math
import time
import weakref
from collections.abc import Sequence
from typing import Any

from pydantic import Field, model_validator

from supertiny.artifacts.chat_template import DECODE_KWARGS
from supertiny.errors import BackendTimeoutError, ConfigError, InvalidInputError
from supertiny.models.backend import (
    ChatModel,
    Generation,
    GenerationOptions,
    finish_reason,
    parse_answer,
)
from supertiny.policy.base import Decision, Policy, PolicyParams, RouteContext, TierError
from supertiny.policy.token_rewards import TokenProposal, TokenReward
from supertiny.schema.messages import MessageLike
from supertiny.schema.tools import ToolLike

_fingerprints: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


class HybridParams(PolicyParams):
    tiny: str = Field(description="Transformers model that proposes every token.")
    llm: str = Field(description="Transformers model (same vocabulary) that supplies low-reward tokens.")
    threshold: float = Field(default=0.5, ge=0, le=1.01,
                             description="Lowest reward a tiny token needs to be kept (1.01: all from the LLM).")
    reward: str = Field(default="tiny-probability", description="Registered token reward that scores proposals.")
    top_k: int = Field(default=5, ge=1, le=50, description="Tiny log-probabilities a reward sees at each step.")

    def models(self) -> dict[str, str]:
        return {"tiny": self.tiny, "llm": self.llm}

    @model_validator(mode="after")
    def _not_guided(self) -> "HybridParams":
        if self.guided:
            raise ValueError("a hybrid-token policy mixes its two models token by token, which no grammar guides; "
                             "drop guided (or use a cascade with guided=llm)")
        return self


@dataclasses.dataclass
class HybridResult:
    generation: Generation
    sources: str  # one letter a token: "t" from the tiny model, "L" from the LLM
    scores: list[float]  # the reward of each tiny proposal

    @property
    def llm_tokens(self) -> int:
        return self.sources.count("L")

    @property
    def llm_token_share(self) -> float:
        return self.llm_tokens / len(self.sources) if self.sources else 0.0


def _vocab_fingerprint(tokenizer: Any) -> str:
    try:
        return _fingerprints[tokenizer]
    except (KeyError, TypeError):
        pass
    items = sorted(tokenizer.get_vocab().items())
    fingerprint = hashlib.sha256(repr(items).encode()).hexdigest()
    with contextlib.suppress(TypeError):  # not weak-referenceable: recomputed next time
        _fingerprints[tokenizer] = fingerprint
    return fingerprint


def on_engines(tiny: ChatModel, llm: ChatModel) -> bool:
    """Whether both models run on engines that continue token sequences (hybrid decoding through them)."""
    return tiny.capabilities.token_continuation and llm.capabilities.token_continuation


def check_compatible(tiny: ChatModel, llm: ChatModel) -> None:
    """ConfigError unless both models give token access (in-process torch weights, or engines that continue
    token sequences) with the same vocabulary."""
    remote = on_engines(tiny, llm)
    for role, model in (("tiny", tiny), ("llm", llm)):
        capabilities = model.capabilities
        if not (remote or capabilities.token_access) or not capabilities.tokenizer:
            raise ConfigError(
                f"hybrid-token needs both tiers' weights in this process; the {role} model "
                f"{getattr(model, 'name', '?')!r} runs on {capabilities.engine or 'a backend without token access'}",
                hint="use cascade for models behind an endpoint",
            )
    if _vocab_fingerprint(tiny.tokenizer) != _vocab_fingerprint(llm.tokenizer):  # type: ignore[attr-defined]
        raise ConfigError(f"hybrid-token needs one vocabulary: {tiny.name!r} and {llm.name!r} have different "
                          "tokenizers", hint="pair models of one family (e.g. Qwen2.5 0.5B and 1.5B)")


def _pick(logprobs: Any, options: GenerationOptions, generator: Any) -> int:
    import torch

    if options.temperature <= 0:
        return int(torch.argmax(logprobs).item())
    probs = torch.softmax(logprobs / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < options.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator).item())


@dataclasses.dataclass
class HybridDecoding:
    """One answer being decoded: both tiers' prompt ids, the stop tokens, the clock, and what is written so far
    (each token with its log-probability and its source, and the reward of each tiny proposal)."""

    tiny_prompt: list[int]
    llm_prompt: list[int]
    stops: set[int]
    started: float
    deadline: float | None
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    sources: list[str] = dataclasses.field(default_factory=list)
    scores: list[float] = dataclasses.field(default_factory=list)

    def write(self, token: int, logprob: float, source: str) -> None:
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.sources.append(source)

    def result(self, tokenizer: Any, tools: Sequence[ToolLike] | None, options: GenerationOptions) -> HybridResult:
        """The answer written: text up to the end of turn or the first stop string, parsed."""
        tokens, stops = self.tokens, self.stops
        hit_max = bool(tokens) and tokens[-1] not in stops and len(tokens) >= options.max_new_tokens
        text_ids = tokens[:-1] if tokens and tokens[-1] in stops else tokens
        text = tokenizer.decode(text_ids, **DECODE_KWARGS)
        for stop in options.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        parse, message = parse_answer(text, tools)
        generation = Generation(
            text=text, message=message, parse=parse, prompt_tokens=len(self.tiny_prompt),
            completion_tokens=len(tokens), latency_s=time.perf_counter() - self.started,
            finish_reason=finish_reason(parse, hit_max), token_ids=tokens, token_logprobs=self.logprobs,
        )
        return HybridResult(generation=generation, sources="".join(self.sources), scores=self.scores)


def start_decoding(tiny: Any, llm: Any, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None,
                   options: GenerationOptions) -> HybridDecoding:
    """Check the pair and the options, start the clock and render the prompt for both tiers: the setup of
    hybrid decoding in process and on engines."""
    check_compatible(tiny, llm)
    if options.max_new_tokens < 1:
        raise InvalidInputError("max_new_tokens must be at least 1")
    started = time.perf_counter()
    deadline = None if options.timeout_s is None else time.monotonic() + options.timeout_s
    tiny_prompt, llm_prompt = tiny.prompt_ids(messages, tools), llm.prompt_ids(messages, tools)
    stops = set(tiny.stop_token_ids) | set(llm.stop_token_ids)
    return HybridDecoding(tiny_prompt=tiny_prompt, llm_prompt=llm_prompt, stops=stops, started=started,
                          deadline=deadline)


def timeout_error(role: str, model_name: str, options: GenerationOptions) -> TierError:
    """The TierError of hybrid decoding that ran past ``options.timeout_s``."""
    return TierError(role, model_name, BackendTimeoutError(
        f"hybrid decoding did not finish within {options.timeout_s:g}s"))


def hybrid_generate(tiny: Any, llm: Any, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None,
                    options: GenerationOptions, threshold: float, reward: TokenReward, top_k: int = 5) -> HybridResult:
    """Decode one answer token by token, the tiny model proposing and the LLM supplying low-reward tokens.

    Raises TierError naming the model whose forward pass failed, or BackendTimeoutError (as the LLM's
    TierError once the LLM took part) when ``options.timeout_s`` runs out.
    """
    import torch

    decoding = start_decoding(tiny, llm, messages, tools, options)
    width = min(tiny.model.get_output_embeddings().weight.shape[0], llm.model.get_output_embeddings().weight.shape[0])
    generator = _generator(options)
    with torch.inference_mode():
        tiny_cache = _new_cache(tiny)
        lazy_llm = _LazyLLM(llm, decoding.llm_prompt, width)
        tiny_logprobs = _forward("tiny", tiny, decoding.tiny_prompt, tiny_cache, width)
        for position in range(options.max_new_tokens):
            if decoding.deadline is not None and time.monotonic() > decoding.deadline:
                role, model = ("llm", llm) if lazy_llm.took_part else ("tiny", tiny)
                raise timeout_error(role, model.name, options)
            proposal = _proposal(tiny_logprobs, options, generator, min(top_k, width), position)
            score = float(reward.score(proposal))
            decoding.scores.append(score)
            if score >= threshold:
                token, logprob, source = proposal.token_id, proposal.logprob, "t"
            else:
                llm_logprobs = lazy_llm.catch_up()
                token = _pick(llm_logprobs, options, generator)
                logprob, source = float(llm_logprobs[token]), "L"
            decoding.write(token, logprob, source)
            lazy_llm.pending.append(token)
            if token in decoding.stops or position + 1 == options.max_new_tokens:
                break
            tiny_logprobs = _forward("tiny", tiny, [token], tiny_cache, width)
    return decoding.result(tiny.tokenizer, tools, options)


def _generator(options: GenerationOptions) -> Any:
    """The torch generator a sampled answer draws from (seeded by ``options.seed`` where given); None for greedy."""
    import torch

    if options.temperature <= 0:
        return None
    generator = torch.Generator(device="cpu")
    generator.manual_seed(options.seed if options.seed is not None else int(time.time_ns() % 2**31))
    return generator


def _new_cache(chat_model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=chat_model.model.config)


def _forward(role: str, chat_model: Any, ids: list[int], cache: Any, width: int) -> Any:
    """Log-probabilities (over the first ``width`` tokens) of the token after ``ids``, which extend ``cache``."""
    import torch

    try:
        input_ids = torch.tensor([ids], dtype=torch.long, device=chat_model.model.device)
        output = chat_model.model(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return torch.log_softmax(output.logits[0, -1, :width].float().cpu(), dim=-1)
    except Exception as exc:
        raise TierError(role, chat_model.name, exc) from exc


def _proposal(logprobs: Any, options: GenerationOptions, generator: Any, top_k: int, position: int) -> TokenProposal:
    """The tiny model's pick from ``logprobs``, with the ``top_k`` highest log-probabilities a reward sees."""
    import torch

    proposed = _pick(logprobs, options, generator)
    top = torch.topk(logprobs, k=top_k).values.tolist()
    return TokenProposal(token_id=proposed, logprob=float(logprobs[proposed]), top_logprobs=tuple(top),
                         position=position)


class _LazyLLM:
    """The LLM in in-process hybrid decoding: it runs only when its token is needed, one forward pass over the
    tokens it has not seen yet (``pending``: at first its prompt)."""

    def __init__(self, llm: Any, prompt: list[int], width: int) -> None:
        self.llm, self.width = llm, width
        self.pending = list(prompt)
        self.cache: Any = None

    @property
    def took_part(self) -> bool:
        return self.cache is not None

    def catch_up(self) -> Any:
        """The LLM's log-probabilities of the next token after all that is written."""
        if self.cache is None:
            self.cache = _new_cache(self.llm)
        logprobs = _forward("llm", self.llm, self.pending, self.cache, self.width)
        self.pending = []
        return logprobs


class HybridTokenPolicy(Policy):
    name = "hybrid-token"
    description = ("token-level hybrid: the tiny model proposes each token, a reward scores it, below the "
                   "threshold the LLM supplies the token (both transformers models, one vocabulary)")
    params_model = HybridParams

    def decide(self, params: PolicyParams, context: RouteContext) -> Decision:
        from supertiny.registry import lookup

        assert isinstance(params, HybridParams)
        from supertiny.policy.hybrid_engines import hybrid_generate_on_engines

        reward = lookup("token_reward", params.reward)
        tiny, llm = context.model("tiny"), context.model("llm")
        in_process = not on_engines(tiny, llm)  # else both tiers' weights must be here
        if in_process:
            tiny, llm = context.model("tiny", in_process=True), context.model("llm", in_process=True)
        generate = hybrid_generate if in_process else hybrid_generate_on_engines
        started = time.monotonic()
        with context.hold("tiny", "llm", in_process=in_process) as held:
            tiny, llm = held[context.model_name("tiny")], held[context.model_name("llm")]  # leased while decoding
            remaining = max(0.001, params.timeout_s - (time.monotonic() - started))
            timeout = remaining if context.options.timeout_s is None else min(remaining, context.options.timeout_s)
            options = dataclasses.replace(context.options, timeout_s=timeout)
            result = generate(tiny, llm, context.messages, context.tools, options, params.threshold, reward,
                              params.top_k)
        confidence = result.generation.confidence
        mean_score = sum(result.scores) / len(result.scores) if result.scores else None
        detail = {
            "threshold": params.threshold, "reward": params.reward, "llm_tokens": result.llm_tokens,
            "tokens": len(result.sources), "sources": result.sources,
            "token_scores": [round(score, 4) for score in result.scores[:1024]],
            "mean_score": None if mean_score is None or math.isnan(mean_score) else round(mean_score, 4),
        }
        return Decision(role="hybrid", generation=result.generation, model=f"{tiny.name}+{llm.name}",
                        confidence=confidence, llm_token_share=result.llm_token_share,
                        escalated=result.llm_tokens > 0, reason="low_reward_tokens" if result.llm_tokens else None,
                        detail=detail)
