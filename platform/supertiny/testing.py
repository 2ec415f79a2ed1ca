"""Tiny real models for tests: a Qwen2-architecture causal LM and a byte-level BPE tokenizer with a
Qwen-style chat template that renders tools, built in-process in about a second.

Plugin authors can use them too: ``build_tiny_model(tmp_path / "tiny")`` gives an HF directory that
every backend, trainer and compressor accepts.
"""

import functools
import json
import random
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
]

CHAT_TEMPLATE_PATH = Path(__file__).parent / "assets" / "qwen2_chat_template.jinja"


def _corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    cities = ["Paris", "Berlin", "Tokyo", "Lima", "Oslo", "Cairo", "Boston", "Madrid"]
    names = ["get_weather", "book_flight", "calculate_area", "find_restaurant", "send_email", "convert"]
    lines = []
    for _ in range(n_lines):
        args = {"city": rng.choice(cities), "unit": rng.choice(["celsius", "fahrenheit"]),
                "days": rng.randint(1, 9), "width": round(rng.uniform(1, 50), 1)}
        call = {"name": rng.choice(names), "arguments": dict(rng.sample(sorted(args.items()), 2))}
        lines.append(f"What is the weather in {rng.choice(cities)} for {rng.randint(1, 9)} days?")
        lines.append(f"```json\n{json.dumps(call)}\n```")
        lines.append(f"<tool_call>\n{json.dumps(call)}\n</tool_call>")
        lines.append("You are a helpful assistant. # Tools You may call one or more functions. "
                     '{"type": "function", "function": {"name": "x", "description": "y", "parameters": '
                     '{"type": "object", "properties": {}, "required": []}}}')
    return lines


@functools.cache
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer.to_str()


def build_tiny_tokenizer(vocab_size: int = 1024):
    """A fast byte-level BPE tokenizer with Qwen's special tokens and chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE_PATH.read_text()
    return tokenizer


def build_tiny_model(
    path: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 1024,
) -> Path:
    """Save a randomly initialised Qwen2 causal LM and its tokenizer to ``path``; return the path."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    tokenizer = build_tiny_tokenizer(vocab_size)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, config.bos_token_id], pad_token_id=config.pad_token_id
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
