"""How fast a model reads a prompt and writes tokens, greedy, one sequence: prefill and decode tokens/s.

The prompt is ``prompt_tokens`` ids of a fixed tool-calling text; decoding is forced to run the full
``new_tokens`` (no early stop), so every model is timed on the same amount of work. Decode time is the
generation time minus the time of a one-token generation (the prefill).

Both wall-clock and CPU time (this process's, all threads) are kept. On a machine shared with other jobs
the wall clock mostly measures the neighbours; with one torch thread the CPU time is what the wall clock
would be on an idle core (memory-bandwidth contention still counts), so compare models by it there.
"""

import dataclasses
import time
from typing import Any

TEXT = ('You are a helpful assistant. Call get_weather with {"city": "Paris", "unit": "celsius"} when asked about '
        "the weather, book_flight for flights and send_email for messages. ")


@dataclasses.dataclass
class Speed:
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float
    prefill_cpu_s: float = 0.0
    decode_cpu_s: float = 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def decode_cpu_tok_s(self) -> float:
        """Decode tokens per CPU-second (see the module docstring)."""
        return (self.new_tokens - 1) / self.decode_cpu_s if self.decode_cpu_s > 0 else 0.0

    @property
    def prefill_cpu_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_cpu_s if self.prefill_cpu_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "prefill_s": round(self.prefill_s, 4), "decode_s": round(self.decode_s, 4),
                "prefill_tok_s": round(self.prefill_tok_s, 2), "decode_tok_s": round(self.decode_tok_s, 2),
                "prefill_cpu_tok_s": round(self.prefill_cpu_tok_s, 2),
                "decode_cpu_tok_s": round(self.decode_cpu_tok_s, 2)}


def prompt_ids(tokenizer: Any, length: int) -> Any:
    import torch

    ids: list[int] = []
    while len(ids) < length:
        ids.extend(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    return torch.tensor([ids[:length]], dtype=torch.long)


def measure_speed(model: Any, tokenizer: Any, prompt_tokens: int = 128, new_tokens: int = 32,
                  repeats: int = 1) -> Speed:
    """The best of ``repeats`` timings (after one warm-up) of prefill and decode."""
    import torch
    from transformers import GenerationConfig

    new_tokens = max(new_tokens, 2)
    ids = prompt_ids(tokenizer, prompt_tokens).to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(count: int) -> tuple[float, float]:
        config = GenerationConfig(do_sample=False, max_new_tokens=count, min_new_tokens=count, pad_token_id=pad,
                                  eos_token_id=tokenizer.eos_token_id, repetition_penalty=1.0)
        started, started_cpu = time.perf_counter(), time.process_time()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        return time.perf_counter() - started, time.process_time() - started_cpu

    with torch.inference_mode():
        generate(2)  # warm-up: allocations, packed weights, kernel selection
        prefills = [generate(1) for _ in range(repeats)]
        totals = [generate(new_tokens) for _ in range(repeats)]
    prefill, prefill_cpu = min(wall for wall, _ in prefills), min(cpu for _, cpu in prefills)
    total, total_cpu = min(wall for wall, _ in totals), min(cpu for _, cpu in totals)
    return Speed(prompt_tokens=int(ids.shape[1]), new_tokens=new_tokens, prefill_s=prefill,
                 decode_s=max(total - prefill, 1e-9), prefill_cpu_s=prefill_cpu,
                 decode_cpu_s=max(total_cpu - prefill_cpu, 1e-9))
