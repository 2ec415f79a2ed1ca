"""The ``llama-cpp`` backend: a GGUF file run in-process by llama.cpp (``pip install 'supertiny[llamacpp]'``).

Why: on a CPU without native bf16 torch computes in fp32, and decoding one token reads every weight at four
bytes; llama.cpp's q8_0 / f16 kernels read one or two, so the same model decodes several times faster on
the same cores. ``supertiny compress gguf`` writes such a file next to the model's tokenizer.

Only the network runs in llama.cpp. The prompt is rendered by the model's Hugging Face chat template (tools
included) with the very function the transformers backend uses, and tokenized by the same HF tokenizer, so
both backends feed identical token ids; completions are decoded by that tokenizer too. Decoding is a loop
over llama.cpp's last-token logits with the transformers backend's contract: greedy is the argmax, sampling
follows :class:`GenerationOptions` only (temperature and top_p: no top_k, no repetition penalty), and
log-probabilities are those of the untempered distribution. (llama-cpp-python's completion API returns
log-probabilities only with ``logits_all``, which keeps an n_ctx x vocabulary float matrix: 2.5 GB for
Qwen at 4096 tokens, and an output-head product for every prompt token.)

The context keeps its KV cache between calls: a prompt that begins like the previous one (the same system
prompt and tools, the next turn of a conversation) prefills only what is new. One context answers one
request at a time; concurrent callers wait on a lock.

Config keys:

- ``threads``: llama.cpp threads (default: every CPU this process may run on).
- ``n_ctx``: context length in tokens, prompt plus answer (default 4096).
- ``n_batch``: prompt tokens per forward pass while prefilling (default 512).
- ``tokenizer``: the HF directory whose tokenizer and chat template render prompts (default: the directory
  that holds the GGUF, where the exporter copies them).
- ``name``: the name the model reports (default: the GGUF's file name without suffix).
"""

import atexit
import dataclasses
import json
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from supertiny.artifacts.chat_template import DECODE_KWARGS, load_chat_tokenizer, render_chat_prompt, stop_token_ids
from supertiny.artifacts.hardware import usable_cpus
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
    finish_reason,
    parse_answer,
    truncate_at_stops,
)
from supertiny.schema.messages import MessageLike
from supertiny.schema.tools import ToolLike

CONFIG_KEYS = ("threads", "n_ctx", "n_batch", "tokenizer", "name",
               "model_type")  # model_type: informational, written by the model registry
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
MISSING_LLAMA_CPP = (
    "the llama-cpp backend needs llama-cpp-python, which is not installed here: "
    "pip install 'supertiny[llamacpp]' (`make .venv/.llamacpp` builds it for this CPU)"
)


class LlamaCppBackend:
    name = "llama-cpp"
    hf_weights = False
    description = "a GGUF file run in-process by llama.cpp (CPU; install supertiny[llamacpp])"

    def open(self, location: str, config: dict[str, Any]) -> "LlamaCppChatModel":
        return LlamaCppChatModel.load(location, config)


@dataclasses.dataclass
class _Decoded:
    """What one decoding loop produced."""

    prompt_tokens: int
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    hit_max_tokens: bool = False


class LlamaCppChatModel(ChatModel):
    """A ``llama_cpp.Llama`` (``.llama``) and the HF tokenizer (``.tokenizer``) that renders its prompts."""

    backend = "llama-cpp"

    def __init__(self, llama: Any, tokenizer: Any, name: str, configured_eos: int | list[int] | None = None):
        self.llama = llama
        self.tokenizer = tokenizer
        self.name = name
        self.stop_token_ids = stop_token_ids(tokenizer, configured_eos)
        self._lock = threading.Lock()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(local=True, logprobs=True, token_access=False, batching=False, tokenizer=True,
                            max_concurrency=1, engine="llama.cpp in-process (one request at a time)")

    @classmethod
    def load(cls, location: str | Path, config: dict[str, Any] | None = None) -> "LlamaCppChatModel":
        config = backend_config("llama-cpp", config, CONFIG_KEYS)
        gguf_path = find_gguf(location)
        tokenizer_dir = Path(config.get("tokenizer") or gguf_path.parent).expanduser()
        if not any((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
            raise ModelError(f"no Hugging Face tokenizer in {tokenizer_dir} to render {gguf_path.name}'s prompts",
                             hint="export with `supertiny compress gguf` (it copies the tokenizer), or set the "
                                  "backend option tokenizer=HF_DIR")
        try:
            import llama_cpp
        except ImportError as exc:
            raise ModelError(MISSING_LLAMA_CPP) from exc
        tokenizer = load_chat_tokenizer(tokenizer_dir)
        threads = int(config.get("threads") or usable_cpus())
        try:
            llama = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=int(config.get("n_ctx", 4096)),
                                    n_batch=int(config.get("n_batch", 512)), n_threads=threads,
                                    n_threads_batch=threads, logits_all=False, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"llama.cpp cannot load {gguf_path}: {first_line(exc)}") from exc
        if len(tokenizer) > llama.n_vocab():
            llama.close()
            raise ModelError(f"the tokenizer in {tokenizer_dir} has {len(tokenizer)} tokens, more than the "
                             f"{llama.n_vocab()} of {gguf_path.name}", hint="give the model's own tokenizer")
        name = str(config.get("name") or gguf_path.stem)
        model = cls(llama, tokenizer, name, configured_eos=_configured_eos(tokenizer_dir))
        _close_at_exit(model)
        return model

    # --- prompts --------------------------------------------------------------------------------

    def render_prompt(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None) -> str:
        """The prompt text the model sees: its chat template over the messages and tools."""
        return render_chat_prompt(self.tokenizer, self.name, messages, tools)

    def prompt_ids(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None) -> list[int]:
        """The token ids of :meth:`render_prompt`."""
        return self.tokenizer(self.render_prompt(messages, tools), add_special_tokens=False)["input_ids"]

    # --- generation -----------------------------------------------------------------------------

    def generate(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
                 options: GenerationOptions | None = None) -> Generation:
        *_, generation = self.stream(messages, tools, options)
        return generation  # type: ignore[return-value]

    def stream(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
               options: GenerationOptions | None = None) -> Iterator[str | Generation]:
        """Yield text deltas while llama.cpp writes, then the :class:`Generation`."""
        options = options or GenerationOptions()
        if options.max_new_tokens < 1:
            raise InvalidInputError("max_new_tokens must be at least 1")
        started = time.perf_counter()
        prompt_ids = self.prompt_ids(messages, tools)
        stops = [stop for stop in options.stop if stop]
        decoded = _Decoded(prompt_tokens=len(prompt_ids))
        yield from cut_at_stops(self._deltas(prompt_ids, options, stops, decoded), stops)
        ids = decoded.token_ids
        text = truncate_at_stops(self._text(ids), stops)
        parse, message = parse_answer(text, tools)
        yield Generation(
            text=text,
            message=message,
            parse=parse,
            prompt_tokens=decoded.prompt_tokens,
            completion_tokens=len(ids),
            latency_s=time.perf_counter() - started,
            finish_reason=finish_reason(parse, decoded.hit_max_tokens),
            token_ids=ids,
            token_logprobs=decoded.logprobs if options.logprobs else None,
        )

    def _deltas(self, prompt_ids: list[int], options: GenerationOptions, stops: list[str],
                decoded: _Decoded) -> Iterator[str]:
        """Run the decoding loop, filling ``decoded`` and yielding the text as it grows; ends at a stop token,
        a stop string, the token budget or the end of the context."""
        import numpy as np

        check_context_length(self.name, self.llama.n_ctx(), len(prompt_ids), options.max_new_tokens,
                             options.max_prompt_tokens)
        budget = options.max_new_tokens
        deadline = None if options.timeout_s is None else time.monotonic() + options.timeout_s
        rng = np.random.default_rng(options.seed)
        shown = ""
        with self._lock:
            self._prefill(prompt_ids)
            while True:
                logits = self._last_logits()
                token = int(logits.argmax()) if options.temperature <= 0 else \
                    _sample(logits, options.temperature, options.top_p, rng)
                decoded.token_ids.append(token)
                if options.logprobs:
                    decoded.logprobs.append(_logprob(logits, token))
                if token in self.stop_token_ids:
                    return
                text = self._text(decoded.token_ids)
                if not text.endswith("\ufffd"):  # a character whose bytes span tokens shows once complete
                    yield text[len(shown):]
                    shown = text
                if any(stop in text for stop in stops):
                    return
                if len(decoded.token_ids) >= budget:
                    decoded.hit_max_tokens = True
                    return
                if deadline is not None and time.monotonic() > deadline:
                    raise BackendTimeoutError(f"{self.name} did not answer within {options.timeout_s:g}s")
                self.llama.eval([token])

    def _prefill(self, prompt_ids: list[int]) -> None:
        """Evaluate the prompt, keeping the cached tokens it shares with the previous one (at least the last
        prompt token is evaluated again: its logits start the answer)."""
        import numpy as np

        limit = min(self.llama.n_tokens, len(prompt_ids) - 1)
        same = self.llama.input_ids[:limit] == np.asarray(prompt_ids[:limit], dtype=self.llama.input_ids.dtype)
        shared = limit if same.all() else int(same.argmin())
        self.llama.n_tokens = shared  # eval() drops the cache from here on
        self.llama.eval(prompt_ids[shared:])

    def _last_logits(self) -> Any:
        import llama_cpp
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self.llama.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.llama.n_vocab(),))

    def _text(self, token_ids: list[int]) -> str:
        ids = token_ids[:-1] if token_ids and token_ids[-1] in self.stop_token_ids else token_ids
        return self.tokenizer.decode(ids, **DECODE_KWARGS)

    # --- speed ----------------------------------------------------------------------------------

    def measure_speed(self, prompt_tokens: int = 128, new_tokens: int = 32) -> Any:
        """Prefill and decode tokens/s on the fixed prompt of :mod:`supertiny.artifacts.speed`, greedy, forced
        to ``new_tokens`` (after one warm-up), so llama.cpp and torch models are timed on the same work."""
        from supertiny.artifacts.speed import Speed, prompt_ids

        new_tokens = max(new_tokens, 2)
        ids = prompt_ids(self.tokenizer, prompt_tokens)[0].tolist()

        def run(count: int) -> tuple[float, float]:
            started, started_cpu = time.perf_counter(), time.process_time()
            self.llama.n_tokens = 0
            self.llama.eval(ids)
            for _ in range(count - 1):
                self.llama.eval([int(self._last_logits().argmax())])
            return time.perf_counter() - started, time.process_time() - started_cpu

        with self._lock:
            run(2)
            prefill, prefill_cpu = run(1)
            total, total_cpu = run(new_tokens)
        return Speed(prompt_tokens=len(ids), new_tokens=new_tokens, prefill_s=prefill,
                     decode_s=max(total - prefill, 1e-9), prefill_cpu_s=prefill_cpu,
                     decode_cpu_s=max(total_cpu - prefill_cpu, 1e-9))

    def close(self) -> None:
        with self._lock:
            if self.llama is not None:
                self.llama.close()
                self.llama = None


def _close_at_exit(model: LlamaCppChatModel) -> None:
    """Free the context before the interpreter tears llama_cpp down: freed later, from ``Llama.__del__``, it
    prints a TypeError traceback at exit."""
    reference = weakref.ref(model)

    def close() -> None:
        alive = reference()
        if alive is not None:
            alive.close()

    atexit.register(close)


def find_gguf(location: str | Path) -> Path:
    """The GGUF file at ``location``: the file itself, or the only ``.gguf`` in a directory."""
    path = Path(location).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{path} is not a .gguf file")
        return path
    if path.is_dir():
        files = sorted(path.glob("*.gguf"))
        if len(files) == 1:
            return files[0]
        if not files:
            raise ModelError(f"no .gguf file in {path}", hint="`supertiny compress gguf --model MODEL` writes one")
        raise ModelError(f"{path} holds {len(files)} .gguf files", hint="give the path of one of them")
    raise ModelError(f"no GGUF file or directory at {path}")


def _configured_eos(directory: Path) -> int | list[int] | None:
    """The eos id(s) of the model's generation_config.json, else of its config.json."""
    for file_name in ("generation_config.json", "config.json"):
        try:
            value = json.loads((directory / file_name).read_text()).get("eos_token_id")
        except (OSError, ValueError):
            continue
        if value is not None:
            return value
    return None


def _logprob(logits: Any, token: int) -> float:
    import numpy as np

    top = float(logits.max())
    return float(logits[token]) - top - float(np.log(np.exp(logits - top, dtype=np.float64).sum()))


def _sample(logits: Any, temperature: float, top_p: float, rng: Any) -> int:
    """A token from softmax(logits / temperature), within the smallest set whose mass reaches top_p."""
    import numpy as np

    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p >= 1.0:
        return int(rng.choice(len(probs), p=probs))
    order = np.argsort(-probs)
    kept = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1]
    return int(kept[rng.choice(len(kept), p=probs[kept] / probs[kept].sum())])
