"""The ``vllm`` backend: an in-process vLLM engine (GPU machines with ``supertiny[vllm]`` installed).

vLLM is CUDA-only and pins its own torch, so it is imported inside :meth:`VLLMBackend.open` and never
needed anywhere else. Without a local GPU, serve the model with ``vllm serve`` and use the ``openai``
backend instead.

Config keys: ``name``, ``dtype`` (default ``"auto"``), ``gpu_memory_utilization``, ``max_model_len``,
``tensor_parallel_size``, ``seed``; any other key is passed to ``vllm.LLM`` as an engine argument.
"""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError, ModelError
from supertiny.models.backend import (
    ChatModel,
    Generation,
    GenerationOptions,
    MessageLike,
    ToolLike,
    finish_reason,
    message_dicts,
    parse_answer,
    tool_dicts,
)

MISSING_VLLM = (
    "the vllm backend needs vLLM, which is not installed here: install supertiny[vllm] on a GPU machine, "
    "or serve the model with `vllm serve MODEL --enable-auto-tool-choice --tool-call-parser hermes` "
    "and register it as an openai endpoint"
)


class VLLMBackend:
    name = "vllm"
    description = "an in-process vLLM engine (GPU; install supertiny[vllm])"

    def open(self, location: str, config: dict[str, Any]) -> "VLLMChatModel":
        try:
            import vllm
        except ImportError as exc:
            raise ModelError(MISSING_VLLM) from exc
        config = dict(config)
        name = str(config.pop("name", None) or Path(location).name)
        config.setdefault("dtype", "auto")
        try:
            engine = vllm.LLM(model=location, **config)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"vLLM cannot load {location}: {str(exc).strip().splitlines()[0]}") from exc
        return VLLMChatModel(engine, name)


class VLLMChatModel(ChatModel):
    """A vLLM engine; ``.engine`` is the ``vllm.LLM`` and ``.tokenizer`` its tokenizer."""

    backend = "vllm"

    def __init__(self, engine: Any, name: str):
        self.engine = engine
        self.tokenizer = engine.get_tokenizer()
        self.name = name

    def generate(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
                 options: GenerationOptions | None = None) -> Generation:
        return self.generate_batch([(messages, tools)], options)[0]

    def generate_batch(self, conversations: Sequence[tuple[Sequence[MessageLike], Sequence[ToolLike] | None]],
                       options: GenerationOptions | None = None) -> list[Generation]:
        """One engine call per distinct tool list (vLLM's chat() takes one tool list for all prompts)."""
        options = options or GenerationOptions()
        groups: dict[str, list[int]] = {}
        for index, (_, tools) in enumerate(conversations):
            groups.setdefault(repr(tool_dicts(tools)), []).append(index)
        results: list[Generation | None] = [None] * len(conversations)
        for indices in groups.values():
            tools = conversations[indices[0]][1]
            batch = [message_dicts(conversations[index][0]) for index in indices]
            for index, generation in zip(indices, self._chat(batch, tools, options), strict=True):
                results[index] = generation
        return [generation for generation in results if generation is not None]

    def _chat(self, batch: list[list[dict[str, Any]]], tools: Sequence[ToolLike] | None,
              options: GenerationOptions) -> list[Generation]:
        from vllm import SamplingParams

        if options.max_new_tokens < 1:
            raise InvalidInputError("max_new_tokens must be at least 1")
        sampling = SamplingParams(
            max_tokens=options.max_new_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            seed=options.seed,
            stop=list(options.stop) or None,
            logprobs=1 if options.logprobs else None,
        )
        started = time.perf_counter()
        outputs = self.engine.chat(batch, sampling_params=sampling, tools=tool_dicts(tools), use_tqdm=False)
        latency = time.perf_counter() - started
        generations = []
        for output in outputs:
            completion = output.outputs[0]
            token_ids = list(completion.token_ids)
            logprobs = None
            if completion.logprobs:
                # each step maps token id -> Logprob; the sampled token is always among them
                logprobs = [step[token].logprob
                            for step, token in zip(completion.logprobs, token_ids, strict=False)]
            parse, message = parse_answer(completion.text, tools)
            generations.append(Generation(
                text=completion.text,
                message=message,
                parse=parse,
                prompt_tokens=len(output.prompt_token_ids or []),
                completion_tokens=len(token_ids),
                latency_s=latency,
                finish_reason=finish_reason(parse, completion.finish_reason == "length"),
                token_ids=token_ids,
                token_logprobs=logprobs,
            ))
        return generations
