"""Generation helpers of the transformers backend: the ``GenerationConfig`` a request's options give, seeded
sampling, text streaming, the model's context window, and the answers cut out of ``generate()``'s output.

The generation config takes its sampling from :class:`GenerationOptions` alone and only the eos/pad ids from
the model (see :mod:`supertiny.models.transformers_backend`).
"""

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from supertiny.artifacts.chat_template import DECODE_KWARGS
from supertiny.models.backend import Generation, GenerationOptions, finish_reason, parse_answer, truncate_at_stops
from supertiny.schema.tools import ToolLike


def generation_config(options: GenerationOptions, stop_token_ids: set[int], pad_token_id: int | None) -> Any:
    """The ``transformers.GenerationConfig`` of ``options``: greedy at temperature 0, else plain sampling."""
    from transformers import GenerationConfig

    sampled = options.temperature > 0
    stops = [stop for stop in options.stop if stop]
    # top_k=0 and repetition_penalty=1.0 override what the model's generation_config would add
    sampling = {"temperature": options.temperature, "top_p": options.top_p, "top_k": 0} if sampled else {}
    return GenerationConfig(
        max_new_tokens=options.max_new_tokens,
        do_sample=sampled,
        **sampling,
        repetition_penalty=1.0,
        eos_token_id=sorted(stop_token_ids),
        pad_token_id=pad_token_id,
        return_dict_in_generate=True,
        output_logits=options.logprobs,
        stop_strings=stops or None,
    )


@contextlib.contextmanager
def seeded(seed: int | None, device: Any) -> Iterator[None]:
    """Seed sampling without disturbing the caller's global random state."""
    if seed is None:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[device] if getattr(device, "type", "cpu") == "cuda" else []):
        torch.manual_seed(seed)
        yield


def token_logprobs(logits: Sequence[Any], completions: Any) -> Any:
    """The (batch, steps) log-probabilities of the ``completions`` tokens under ``logits``, one (batch, vocab)
    tensor per step: the model's raw logits before any sampling warper."""
    import torch

    return torch.stack([
        torch.log_softmax(step.float(), dim=-1).gather(1, completions[:, index:index + 1]).squeeze(1)
        for index, step in enumerate(logits)
    ], dim=1)


def row_generation(tokenizer: Any, stop_token_ids: set[int], completion: list[int], budget: int,
                   stops: list[str], tools: Sequence[ToolLike] | None, *, prompt_tokens: int, latency_s: float,
                   logprobs: Any = None) -> Generation:
    """One row's answer: its completion token ids cut at ``budget`` and after the first stop token, decoded
    without that token, cut at the first of ``stops`` and parsed for calls to ``tools``."""
    ids = completion[:budget]
    length = next((index + 1 for index, token in enumerate(ids) if token in stop_token_ids), None)
    hit_max_tokens = length is None and len(ids) >= budget
    length = length or len(ids)
    ids = ids[:length]
    text_ids = ids[:-1] if ids and ids[-1] in stop_token_ids else ids
    text = truncate_at_stops(tokenizer.decode(text_ids, **DECODE_KWARGS), stops)
    parse, message = parse_answer(text, tools)
    return Generation(
        text=text,
        message=message,
        parse=parse,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(ids),
        latency_s=latency_s,
        finish_reason=finish_reason(parse, hit_max_tokens),
        token_ids=ids,
        token_logprobs=logprobs[:length].tolist() if logprobs is not None else None,
    )


def context_length(model: Any, tokenizer: Any) -> int | None:
    """The model's context window in tokens: its config's position limit, or the tokenizer's, or None."""
    for value in (getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)):
        if isinstance(value, int) and 0 < value < 10_000_000:  # tokenizers without a limit say 1e30
            return value
    return None


def make_streamer(tokenizer: Any, stop_token_ids: set[int]) -> Any:
    """A ``TextIteratorStreamer`` of the completion that leaves out its end-of-turn token and the padding
    after it."""
    from transformers import TextIteratorStreamer

    class Streamer(TextIteratorStreamer):
        """Streams the completion without its end-of-turn token (and the padding after it), so the
        deltas join to exactly :attr:`Generation.text`."""

        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=True, **DECODE_KWARGS)
            self.stopped = False

        def put(self, value: Any) -> None:
            if self.next_tokens_are_prompt:
                super().put(value)
                return
            keep = []
            for token in value.reshape(-1).tolist():
                self.stopped = self.stopped or token in stop_token_ids
                if not self.stopped:
                    keep.append(token)
            if keep:
                super().put(value.new_tensor(keep))

    return Streamer()
