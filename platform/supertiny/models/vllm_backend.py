"""The ``vllm`` backend: a model served by a vLLM engine (``supertiny engine start MODEL``), driven through
the engine's OpenAI-compatible completions API.

supertiny renders the prompt with the model's own chat template (so a model sees exactly the text it
sees in-process and in training), and parses and validates the answer itself; the engine batches
continuously, shares the prefill of ``n`` samples and caches prefixes. Answers carry every generated
token's id and log-probability. With ``GenerationOptions.guided`` the engine decodes under the JSON Schema of
:mod:`supertiny.models.guided_calls` (vLLM's structured outputs).

The location is the engine's base URL (``http://127.0.0.1:8100/v1``). Config keys:

- ``model`` (required): the name the engine serves the model under.
- ``tokenizer`` (required): the model's Hugging Face directory (tokenizer and chat template).
- ``name``: the name the model reports (default: ``model``).
- ``timeout_s`` (default 600): per request; ``GenerationOptions.timeout_s`` overrides it for one call. A request
  that runs out closes its connection, and the engine aborts it (its prefill and decoding stop).
- ``max_concurrency`` (default 64): requests kept in flight by ``generate_batch`` and worth sending at once.
- ``api_key_env``: the variable holding the engine's API key, if it was started with one.
"""

import dataclasses
import json
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from supertiny.artifacts.chat_template import load_chat_tokenizer, render_chat_prompt, stop_token_ids
from supertiny.errors import (
    BackendTimeoutError,
    ContextLengthError,
    EngineUnavailableError,
    InvalidInputError,
    ModelError,
)
from supertiny.models.backend import (
    Capabilities,
    ChatModel,
    Generation,
    GenerationOptions,
    backend_config,
    check_context_length,
    finish_reason,
    guided_answer,
    parse_answer,
)
from supertiny.models.guided_calls import answer_schema
from supertiny.schema.messages import MessageLike
from supertiny.schema.tools import ToolLike

CONFIG_KEYS = ("model", "tokenizer", "name", "timeout_s", "max_concurrency", "api_key_env")


@dataclasses.dataclass(frozen=True)
class TokenStep:
    """One generated token: its id, its log-probability, the best log-probabilities at its position."""

    token_id: int
    logprob: float
    top_logprobs: tuple[float, ...]
TOKEN_ID_PREFIX = "token_id:"  # how the engine spells a token with return_tokens_as_token_ids


class VLLMBackend:
    name = "vllm"
    hf_weights = False
    description = "a model served by a vLLM engine (`supertiny engine start`), prompts and tool calls by supertiny"

    def open(self, location: str, config: dict[str, Any]) -> "VLLMChatModel":
        return VLLMChatModel(location, config)


class VLLMChatModel(ChatModel):
    """A model behind a vLLM engine; ``.tokenizer`` is its Hugging Face tokenizer (loaded here)."""

    backend = "vllm"

    def __init__(self, base_url: str, config: dict[str, Any]):
        import httpx

        config = backend_config("vllm", config, CONFIG_KEYS)
        if not config.get("model") or not config.get("tokenizer"):
            raise InvalidInputError("the vllm backend needs the served model name (config key 'model') and its "
                                    "Hugging Face directory (config key 'tokenizer')")
        self.base_url = base_url.rstrip("/")
        self.served_model = str(config["model"])
        self.name = str(config.get("name") or self.served_model)
        self.timeout_s = float(config.get("timeout_s", 600))
        self.max_concurrency = max(1, int(config.get("max_concurrency", 64)))
        self.tokenizer = load_chat_tokenizer(Path(str(config["tokenizer"])))
        self.stop_token_ids = sorted(stop_token_ids(self.tokenizer, _configured_eos(Path(str(config["tokenizer"])))))
        api_key = os.environ.get(str(config.get("api_key_env") or ""), "") if config.get("api_key_env") else ""
        self._client = httpx.Client(
            base_url=self.base_url, timeout=self.timeout_s,
            headers={"authorization": f"Bearer {api_key}"} if api_key else {},
            limits=httpx.Limits(max_connections=self.max_concurrency + 8,
                                max_keepalive_connections=self.max_concurrency + 8),
        )

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(local=False, logprobs=True, token_access=False, batching=True, tokenizer=True,
                            token_continuation=True, max_concurrency=self.max_concurrency,
                            engine=f"vllm engine at {self.base_url}", guided=True)

    def render_prompt(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None) -> str:
        return render_chat_prompt(self.tokenizer, self.name, messages, tools)

    def prompt_ids(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None) -> list[int]:
        """The token ids of :meth:`render_prompt`."""
        return self._encoded(self.render_prompt(messages, tools))

    def _encoded(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _checked_prompt(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None,
                        options: GenerationOptions) -> str:
        """The rendered prompt; with ``options.max_prompt_tokens``, counted here and refused when longer (the
        engine itself refuses prompts beyond its context)."""
        prompt = self.render_prompt(messages, tools)
        if options.max_prompt_tokens:
            tokens = len(self._encoded(prompt))
            check_context_length(self.name, None, tokens, options.max_new_tokens, options.max_prompt_tokens)
        return prompt

    # --- generation -----------------------------------------------------------------------------

    def generate(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
                 options: GenerationOptions | None = None) -> Generation:
        return self.generate_samples(messages, tools, options, n=1)[0]

    def generate_samples(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
                         options: GenerationOptions | None = None, n: int = 1) -> list[Generation]:
        """``n`` answers in one request: the engine computes the prompt once for all of them."""
        options = options or GenerationOptions()
        if n < 1:
            raise InvalidInputError("n must be at least 1")
        prompt = self._checked_prompt(messages, tools, options)
        started = time.perf_counter()
        answer = self._post(self._body(prompt, options, n, tools), options)
        latency = time.perf_counter() - started
        prompt_tokens = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
        choices = sorted(answer.get("choices") or [], key=lambda choice: choice.get("index", 0))
        if len(choices) != n:
            raise ModelError(f"the engine at {self.base_url} returned {len(choices)} answers for n={n}")
        return [_generation(choice, tools, prompt_tokens, latency, options) for choice in choices]

    def generate_batch(self, conversations: Sequence[tuple[Sequence[MessageLike], Sequence[ToolLike] | None]],
                       options: GenerationOptions | None = None) -> list[Generation]:
        """Every conversation in flight at once (up to ``max_concurrency``): the engine batches them."""
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, max(1, len(conversations)))) as pool:
            return list(pool.map(lambda conversation: self.generate(*conversation, options), conversations))

    def stream(self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None = None,
               options: GenerationOptions | None = None) -> Iterator[str | Generation]:
        """Text deltas as the engine writes them, then the Generation."""
        options = options or GenerationOptions()
        prompt = self._checked_prompt(messages, tools, options)
        body = {**self._body(prompt, options, 1, tools), "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        merged: dict[str, Any] = {"text": "", "logprobs": {"tokens": [], "token_logprobs": []}, "finish_reason": None}
        prompt_tokens = 0
        for event in self._events(body, options):
            prompt_tokens = int((event.get("usage") or {}).get("prompt_tokens") or prompt_tokens)
            for choice in event.get("choices") or []:
                delta = choice.get("text") or ""
                merged["text"] += delta
                logprobs = choice.get("logprobs") or {}
                merged["logprobs"]["tokens"] += logprobs.get("tokens") or []
                merged["logprobs"]["token_logprobs"] += logprobs.get("token_logprobs") or []
                merged["finish_reason"] = choice.get("finish_reason") or merged["finish_reason"]
                if delta:
                    yield delta
        yield _generation(merged, tools, prompt_tokens, time.perf_counter() - started, options)

    def continue_tokens(self, prompt_ids: Sequence[int], max_tokens: int, top_logprobs: int,
                        options: GenerationOptions) -> list[TokenStep]:
        """Up to ``max_tokens`` tokens after ``prompt_ids`` (token ids, so a caller can splice tokens of another
        model of the same vocabulary in), each with its log-probability and the ``top_logprobs`` best
        alternatives. The engine's prefix cache makes a prompt that only grew cheap to continue."""
        body = self._body("", dataclasses.replace(options, max_new_tokens=max_tokens), 1)
        body.update(prompt=list(prompt_ids), logprobs=max(0, top_logprobs))
        body.pop("stop", None)
        answer = self._post(body, options)
        choice = (answer.get("choices") or [{}])[0]
        logprobs = choice.get("logprobs") or {}
        steps = []
        for token, value, top in zip(logprobs.get("tokens") or [], logprobs.get("token_logprobs") or [],
                                     logprobs.get("top_logprobs") or [{}] * len(logprobs.get("tokens") or []),
                                     strict=False):
            token_id = _token_id(token)
            if token_id is None:
                raise ModelError(f"the engine at {self.base_url} did not return token ids")
            best = tuple(sorted((float(v) for v in (top or {}).values()), reverse=True))
            steps.append(TokenStep(token_id, float(value) if value is not None else float("-inf"), best))
        return steps

    def close(self) -> None:
        self._client.close()

    # --- HTTP -----------------------------------------------------------------------------------

    def _body(self, prompt: str, options: GenerationOptions, n: int,
              tools: Sequence[ToolLike] | None = None) -> dict[str, Any]:
        if options.max_new_tokens < 1:
            raise InvalidInputError("max_new_tokens must be at least 1")
        body: dict[str, Any] = {
            "model": self.served_model, "prompt": prompt, "n": n, "max_tokens": options.max_new_tokens,
            "temperature": options.temperature, "top_p": options.top_p if options.temperature > 0 else 1.0,
            "stop_token_ids": self.stop_token_ids, "skip_special_tokens": False,
            "spaces_between_special_tokens": False, "return_tokens_as_token_ids": True,
            "logprobs": 0,  # each sampled token's id and log-probability, no alternatives
        }
        if options.seed is not None:
            body["seed"] = int(options.seed)
        if options.stop:
            body["stop"] = [stop for stop in options.stop if stop]
        if options.guided and tools:
            # compact separators: any-whitespace JSON lets a model pad with newlines until its budget runs out
            body["structured_outputs"] = {"json": answer_schema(tools, options.call_required),
                                          "disable_any_whitespace": True}
        return body

    def _post(self, body: dict[str, Any], options: GenerationOptions) -> dict[str, Any]:
        import httpx

        try:
            response = self._client.post("/completions", json=body, timeout=self._timeout(options))
        except httpx.TimeoutException as exc:
            raise BackendTimeoutError(f"the engine at {self.base_url} did not answer within "
                                      f"{self._timeout(options):g}s") from exc
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        self._check(response.status_code, response.text)
        try:
            return response.json()
        except ValueError as exc:
            raise ModelError(f"the engine at {self.base_url} answered something that is not JSON") from exc

    def _events(self, body: dict[str, Any], options: GenerationOptions) -> Iterator[dict[str, Any]]:
        import httpx

        try:
            with self._client.stream("POST", "/completions", json=body, timeout=self._timeout(options)) as response:
                if response.status_code != 200:
                    self._check(response.status_code, response.read().decode(errors="replace"))
                for line in response.iter_lines():
                    data = line.removeprefix("data:").strip() if line.startswith("data:") else ""
                    if not data:
                        continue
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        raise ModelError(f"the engine at {self.base_url} failed mid-stream: "
                                         f"{_message(event['error'])}")
                    yield event
        except httpx.TimeoutException as exc:
            raise BackendTimeoutError(f"the engine at {self.base_url} did not answer within "
                                      f"{self._timeout(options):g}s") from exc
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    def _timeout(self, options: GenerationOptions) -> float:
        return self.timeout_s if options.timeout_s is None else options.timeout_s

    def _unreachable(self, exc: Exception) -> EngineUnavailableError:
        return EngineUnavailableError(f"the engine serving {self.name} at {self.base_url} is not answering: "
                                      f"{type(exc).__name__}: {str(exc)[:200]}",
                                      hint=f"supertiny engine status; supertiny engine start {self.name}")

    def _check(self, status: int, text: str) -> None:
        if status == 200:
            return
        try:
            detail = _message(json.loads(text).get("error") or json.loads(text))
        except (ValueError, AttributeError):
            detail = text.strip()[:300]
        if status == 400 and ("context length" in detail or "max_model_len" in detail):
            raise ContextLengthError(f"{self.name} cannot take this request: {detail}",
                                     hint="shorten the messages or lower max_tokens")
        if status == 400:
            raise InvalidInputError(f"{self.name} cannot take this request: {detail}")
        if status == 404:
            raise EngineUnavailableError(f"the engine at {self.base_url} does not serve {self.served_model!r}: "
                                         f"{detail}")
        if status >= 500:  # the engine failed, not the model's answer: callers must not record it as one
            raise EngineUnavailableError(f"the engine at {self.base_url} failed (HTTP {status}): {detail}",
                                         hint=f"supertiny engine logs {self.name}")
        raise ModelError(f"the engine at {self.base_url} answered HTTP {status}: {detail}")


def _generation(choice: dict[str, Any], tools: Sequence[ToolLike] | None, prompt_tokens: int, latency_s: float,
                options: GenerationOptions) -> Generation:
    text = choice.get("text") or ""
    logprobs = choice.get("logprobs") or {}
    token_ids = [_token_id(token) for token in logprobs.get("tokens") or []]
    values = logprobs.get("token_logprobs") or []
    token_logprobs = [float(value) if value is not None else float("-inf") for value in values] \
        if options.logprobs and values else None
    parse, message = guided_answer(text) if options.guided and tools else parse_answer(text, tools)
    return Generation(
        text=text, message=message, parse=parse, prompt_tokens=prompt_tokens,
        completion_tokens=len(token_ids) or len(values),
        latency_s=latency_s, finish_reason=finish_reason(parse, choice.get("finish_reason") == "length"),
        token_ids=[token for token in token_ids if token is not None] or None, token_logprobs=token_logprobs,
    )


def _token_id(token: str) -> int | None:
    if token.startswith(TOKEN_ID_PREFIX):
        try:
            return int(token[len(TOKEN_ID_PREFIX):])
        except ValueError:
            return None
    return None


def _message(error: Any) -> str:
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or error
    return " ".join(str(error).split())[:300]


def _configured_eos(path: Path) -> int | list[int] | None:
    """The eos ids of the model's generation_config.json (Qwen ends turns with two of them)."""
    try:
        return json.loads((path / "generation_config.json").read_text()).get("eos_token_id")
    except (OSError, ValueError):
        return None
