"""The ``transformers`` backend: any Hugging Face causal-LM directory (safetensors, or a GGUF inside it)
run in-process with the model's own chat template.

Config keys:

- ``dtype``: ``"auto"`` (default), ``"bfloat16"``, ``"float32"`` or ``"float16"``. ``auto`` takes the dtype
  the model's config.json declares where the hardware computes it natively, else fp32
  (:func:`supertiny.artifacts.hardware.fast_dtype`: bf16 on a CPU without AVX512-BF16/AMX, or fp16 on any
  CPU, becomes fp32); a GGUF, dequantized on load, counts as bf16; a config that declares nothing gives fp32.
- ``threads``: torch CPU threads (process-wide: ``torch.set_num_threads``).
- ``gguf_file``: the GGUF file inside the directory, by name or absolute path (a location naming a
  .gguf file works too).
- ``device``: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
- ``name``: the name the model reports (default: the directory name).
- ``max_batch_size``: rows per forward pass in ``generate_batch`` and in dynamic batches (default 8).
- ``dynamic_batching`` (default true): concurrent ``generate`` calls (a server's requests, an evaluator's
  or a harvest's workers) are gathered into one batched forward pass (:mod:`supertiny.models.batching`).
- ``batch_window_ms`` (default 10): how long a batch waits for requests sent at the same moment.
- ``long_prompt_tokens`` (default 4096): with dynamic batching, a longer prompt is prefilled in chunks of
  ``PREFILL_CHUNK_TOKENS``, one chunk between two batches of the other requests, so it never holds the model
  for its whole prefill (a request's time limit is checked between chunks).

Sampling follows :class:`GenerationOptions` only: the model's own generation_config contributes its
eos/pad ids, never its sampling defaults (Qwen ships top_k=20 and repetition_penalty=1.05), so greedy
answers are the plain argmax and log-probabilities are those of the untempered distribution.
"""

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

from supertiny.artifacts.chat_template import render_chat_prompt, require_chat_template, stop_token_ids
from supertiny.artifacts.hardware import fast_dtype
from supertiny.artifacts.hf import first_line
from supertiny.errors import BackendTimeoutError, InvalidInputError, ModelError
from supertiny.models.backend import (
    Capabilities,
    ChatModel,
    Generation,
    GenerationOptions,
    backend_config,
    check_context_length,
    cut_at_stops,
)
from supertiny.models.batching import BatchRequest, DynamicBatcher
from supertiny.models.deadlines import PastDeadline, deadline_criterion, install_deadline_hooks
from supertiny.models.transformers_generation import (
    context_length,
    generation_config,
    make_streamer,
    row_generation,
    seeded,
    token_logprobs,
)
from supertiny.schema.messages import MessageLike
from supertiny.schema.tools import ToolLike

# model_type: informational, written by the model registry
CONFIG_KEYS = ("dtype", "threads", "gguf_file", "device", "name", "max_batch_size", "dynamic_batching",
               "batch_window_ms", "long_prompt_tokens", "model_type")
DTYPES = ("auto", "bfloat16", "float32", "float16")
PREFILL_CHUNK_TOKENS = 512


class TransformersBackend:
    name = "transformers"
    hf_weights = True
    description = "a local Hugging Face causal LM directory (safetensors or GGUF) run with transformers"

    def open(self, location: str, config: dict[str, Any]) -> "TransformersChatModel":
        return TransformersChatModel.load(location, config)


class TransformersChatModel(ChatModel):
    """A causal LM and its tokenizer; ``.model`` and ``.tokenizer`` are public for trainers and
    token-level hybrid decoding."""

    backend = "transformers"

    def __init__(self, model: Any, tokenizer: Any, name: str, max_batch_size: int = 8, dynamic_batching: bool = True,
                 batch_window_ms: float = 10.0, long_prompt_tokens: int = 4096):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch_size = max(1, max_batch_size)
        self.long_prompt_tokens = max(PREFILL_CHUNK_TOKENS, long_prompt_tokens)
        self.stop_token_ids = stop_token_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(min(self.stop_token_ids))
        self._forward = threading.Lock()  # one forward pass at a time: batches and streams take turns
        # a fast tokenizer keeps its padding setting on the shared Rust object: a padded batch encoded while
        # another thread encodes one prompt without padding can lose it ("Unable to create tensor")
        self._tokenizing = threading.Lock()
        self.context_length = context_length(model, tokenizer)
        self._cancel = install_deadline_hooks(model)
        self.batcher = DynamicBatcher(self._run_batch, self.max_batch_size, batch_window_ms / 1000, name) \
            if dynamic_batching else None

    @property
    def capabilities(self) -> Capabilities:
        batching = self.batcher is not None
        how = f"dynamic batches of up to {self.max_batch_size}" if batching else "one request at a time"
        return Capabilities(local=True, logprobs=True, token_access=True, batching=batching, tokenizer=True,
                            max_concurrency=self.max_batch_size if batching else 1,
                            engine=f"{self.backend} in-process ({how})")

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    @classmethod
    def load(cls, location: str | Path, config: dict[str, Any] | None = None) -> "TransformersChatModel":
        config = backend_config("transformers", config, CONFIG_KEYS)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(location).expanduser()
        gguf_file = config.get("gguf_file")
        if gguf_file and Path(gguf_file).is_absolute():
            path, gguf_file = Path(gguf_file).parent, Path(gguf_file).name
        elif path.is_file() and path.suffix.lower() == ".gguf":
            path, gguf_file = path.parent, path.name
        if not path.is_dir():
            raise ModelError(f"no model directory at {path}")
        if gguf_file and not (path / gguf_file).is_file():
            raise ModelError(f"no GGUF file {gguf_file!r} in {path}")
        if not gguf_file and not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a Hugging Face model directory (no config.json)",
                             hint="for a GGUF, give its file name as gguf_file")
        if config.get("threads"):
            torch.set_num_threads(int(config["threads"]))
        dtype = _resolve_dtype(str(config.get("dtype", "auto")), path, gguf_file)
        device = str(config.get("device", "auto"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **extra)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot load a causal LM from {path}: {first_line(exc)}") from exc
        model.to(device).eval()
        require_chat_template(tokenizer, path)
        name = str(config.get("name") or (Path(gguf_file).stem if gguf_file else path.name))
        return cls(model, tokenizer, name, **batching_config(config))

    # --- prompts --------------------------------------------------------------------------------

    def render_prompt(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None) -> str:
        """The prompt text the model sees: its chat template over the messages and tools."""
        return render_chat_prompt(self.tokenizer, self.name, messages, tools)

    def prompt_ids(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None) -> list[int]:
        """The token ids of :meth:`render_prompt`, encoded in turn with this model's padded batches."""
        return self._encoded(self.render_prompt(messages, tools))

    def _encoded(self, prompt: str) -> list[int]:
        with self._tokenizing:
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    # --- generation -----------------------------------------------------------------------------

    def generate(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
                 options: GenerationOptions | None = None) -> Generation:
        options = options or GenerationOptions()
        if options.max_new_tokens < 1:
            raise InvalidInputError("max_new_tokens must be at least 1")
        prompt, ids = self._counted_prompt(messages, tools, options)
        if self.batcher is not None and len(ids) > self.long_prompt_tokens:
            deadline = None if options.timeout_s is None else time.monotonic() + options.timeout_s
            return self.batcher.submit_steps(self._long_prompt_steps(prompt, ids, tools, options, deadline))
        if self.batcher is not None:
            return self.batcher.submit(prompt, tools, options)
        return self._generate([prompt], [tools], options)[0]

    def _checked_prompt(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None,
                        options: GenerationOptions) -> str:
        return self._counted_prompt(messages, tools, options)[0]

    def _counted_prompt(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None,
                        options: GenerationOptions) -> tuple[str, list[int]]:
        """The rendered prompt and its token ids, refused (400 context_length_exceeded) when they and the answer's
        budget do not fit."""
        prompt = self.render_prompt(messages, tools)
        ids = self._encoded(prompt)
        check_context_length(self.name, self.context_length, len(ids), options.max_new_tokens,
                             options.max_prompt_tokens)
        return prompt, ids

    def _long_prompt_steps(self, prompt: str, prompt_ids: list[int], tools: Sequence[ToolLike] | None,
                           options: GenerationOptions, deadline: float | None) -> Generator[None, None, Generation]:
        """A long prompt as steps: its KV cache filled one chunk a step, then the answer generated from it."""
        import torch
        from transformers import DynamicCache

        ids = torch.tensor([prompt_ids], device=self.model.device)
        cache = DynamicCache(config=self.model.config)
        cached = ids.shape[1] - 1  # generate() computes the last prompt token itself
        for start in range(0, cached, PREFILL_CHUNK_TOKENS):
            try:
                with self._forward, torch.inference_mode(), self._cancel.until([deadline]):
                    self.model(input_ids=ids[:, start:min(cached, start + PREFILL_CHUNK_TOKENS)], cache=cache,
                               use_cache=True, logits_to_keep=1)
            except PastDeadline:
                raise BackendTimeoutError(f"{self.name} did not answer within the request's time limit (still "
                                          f"reading a {ids.shape[1]}-token prompt)") from None
            yield
        return self._generate([prompt], [tools], options, deadlines=[deadline], cache=cache)[0]

    def generate_samples(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
                         options: GenerationOptions | None = None, n: int = 1) -> list[Generation]:
        """``n`` answers in one batched forward pass (sampled rows differ; greedy ones repeat each other)."""
        options = options or GenerationOptions()
        if n < 1 or options.max_new_tokens < 1:
            raise InvalidInputError("n and max_new_tokens must be at least 1")
        prompt = self._checked_prompt(messages, tools, options)
        generations: list[Generation] = []
        for start in range(0, n, self.max_batch_size):
            rows = min(self.max_batch_size, n - start)
            seeded = options if options.seed is None else dataclasses.replace(options, seed=options.seed + start)
            generations.extend(self._generate([prompt] * rows, [tools] * rows, seeded))
        return generations

    def _run_batch(self, batch: list[BatchRequest]) -> list[Generation | Exception]:
        """One forward pass over a dynamic batch: the longest budget of its requests, each answer cut back to its
        own budget, and each request stopped at its own deadline (that row's answer is a BackendTimeoutError)."""
        budgets = [request.options.max_new_tokens for request in batch]
        options = dataclasses.replace(batch[0].options, max_new_tokens=max(budgets))
        return self._generate([request.prompt for request in batch], [request.tools for request in batch], options,
                              budgets=budgets, deadlines=[request.deadline for request in batch], per_row_errors=True)

    def generate_batch(self, conversations: Sequence[tuple[Sequence[MessageLike], Sequence[ToolLike] | None]],
                       options: GenerationOptions | None = None) -> list[Generation]:
        """Answer several conversations, ``max_batch_size`` at a time, left-padded into one forward pass."""
        options = options or GenerationOptions()
        prompts = [self._checked_prompt(messages, tools, options) for messages, tools in conversations]
        tools_per_row = [tools for _, tools in conversations]
        generations: list[Generation] = []
        for start in range(0, len(prompts), self.max_batch_size):
            end = start + self.max_batch_size
            generations.extend(self._generate(prompts[start:end], tools_per_row[start:end], options))
        return generations

    def stream(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
               options: GenerationOptions | None = None) -> Iterator[str | Generation]:
        """Yield text deltas while the model writes (from a generation thread), then the Generation."""
        options = options or GenerationOptions()
        prompt = self._checked_prompt(messages, tools, options)
        streamer = make_streamer(self.tokenizer, self.stop_token_ids)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["generation"] = self._generate([prompt], [tools], options, streamer=streamer)[0]
            except BaseException as exc:  # re-raised in the caller's thread below
                outcome["error"] = exc
                streamer.end()  # unblocks the iterator if generate() failed before ending the stream

        thread = threading.Thread(target=run, name=f"supertiny-stream-{self.name}", daemon=True)
        thread.start()
        yield from cut_at_stops(streamer, [stop for stop in options.stop if stop])
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        yield outcome["generation"]

    def _generate(self, prompts: list[str], tools_per_row: Sequence[Sequence[ToolLike] | None],
                  options: GenerationOptions, streamer: Any = None, budgets: list[int] | None = None,
                  deadlines: list[float | None] | None = None, per_row_errors: bool = False,
                  cache: Any = None) -> list[Any]:
        """Answers to ``prompts`` in one batch. Each row stops at its deadline (by default ``options.timeout_s``
        from now); a row that ran out is a BackendTimeoutError, returned in its place with ``per_row_errors``,
        else raised."""
        if deadlines is None:
            deadline = None if options.timeout_s is None else time.monotonic() + options.timeout_s
            deadlines = [deadline] * len(prompts)
        with self._forward:
            results = self._generate_locked(prompts, tools_per_row, options, streamer, budgets, deadlines, cache)
        if not per_row_errors:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results

    def _generate_locked(self, prompts: list[str], tools_per_row: Sequence[Sequence[ToolLike] | None],
                         options: GenerationOptions, streamer: Any, budgets: list[int] | None,
                         deadlines: list[float | None], cache: Any = None) -> list[Generation | Exception]:
        import torch
        from transformers import StoppingCriteriaList

        started = time.perf_counter()
        if options.max_new_tokens < 1:
            raise InvalidInputError("max_new_tokens must be at least 1")
        if all(deadline is not None and deadline <= time.monotonic() for deadline in deadlines):
            return [self._timed_out() for _ in prompts]  # waited past its time: no work for nothing
        # left padding: batched generation appends right after each prompt
        with self._tokenizing:
            inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                                    add_special_tokens=False)
        inputs = inputs.to(self.model.device)
        stops = [stop for stop in options.stop if stop]
        config = generation_config(options, self.stop_token_ids, self.tokenizer.pad_token_id)
        deadline = deadline_criterion(deadlines)
        try:
            # the hooks end the forward pass itself (prefill included) once every row is past its deadline
            with torch.inference_mode(), seeded(options.seed, self.model.device), self._cancel.until(deadlines):
                output = self.model.generate(
                    **inputs,
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([deadline]),
                    streamer=streamer,
                    tokenizer=self.tokenizer if stops else None,
                    **({"cache": cache} if cache is not None else {}),  # a long prompt's prefilled KV cache
                )
        except PastDeadline:
            if streamer is not None:
                streamer.end()
            return [self._timed_out() for _ in prompts]
        latency = time.perf_counter() - started

        completions = output.sequences[:, inputs["input_ids"].shape[1]:]
        logprobs = token_logprobs(output.logits, completions) if options.logprobs and output.logits else None
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        generations: list[Generation | Exception] = []
        for row, tools in enumerate(tools_per_row):
            if row in deadline.expired:
                generations.append(self._timed_out())
                continue
            generations.append(row_generation(
                self.tokenizer, self.stop_token_ids, completions[row].tolist(),
                budgets[row] if budgets else options.max_new_tokens, stops, tools,
                prompt_tokens=int(prompt_tokens[row]), latency_s=latency,
                logprobs=logprobs[row] if logprobs is not None else None,
            ))
        return generations

    def _timed_out(self) -> BackendTimeoutError:
        """The error of a request past its deadline (a new one per row: each caller raises its own)."""
        return BackendTimeoutError(f"{self.name} did not answer within the request's time limit")


def batching_config(config: dict[str, Any]) -> dict[str, Any]:
    """The dynamic-batching keyword arguments of a backend config."""
    enabled = config.get("dynamic_batching", True)
    if isinstance(enabled, str):
        enabled = enabled.strip().lower() not in ("0", "false", "no", "off")
    return {"max_batch_size": int(config.get("max_batch_size", 8)), "dynamic_batching": bool(enabled),
            "batch_window_ms": float(config.get("batch_window_ms", 10.0)),
            "long_prompt_tokens": int(config.get("long_prompt_tokens", 4096))}


def _resolve_dtype(name: str, path: Path, gguf_file: str | None) -> Any:
    import torch

    if name not in DTYPES:
        raise InvalidInputError(f"unknown dtype {name!r}", hint=f"one of {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    if gguf_file:
        return getattr(torch, fast_dtype("bfloat16", "cuda" if torch.cuda.is_available() else "cpu"))
    declared = None
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((path / "config.json").read_text())
        declared = config.get("dtype") or config.get("torch_dtype")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return getattr(torch, fast_dtype(str(declared), device))
