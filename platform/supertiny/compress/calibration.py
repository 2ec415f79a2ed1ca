"""Calibration: run the domain's own traffic through the model and measure what each part contributes.

The snapshot's conversations are rendered with the model's chat template and tools, exactly as the
trainers and the serving backend render them (:func:`supertiny.artifacts.conversation.tokenize_conversation`),
and run one at a time (no padding to mask out). Forward hooks accumulate, over every token:

- the squared activation of each MLP channel (the input of ``down_proj``);
- the squared output of each attention head, per dimension (the input of ``o_proj``);
- each layer's Block Influence (ShortGPT, arXiv 2403.03853): ``1 - cos(hidden in, hidden out)``, how
  much the layer changes the residual stream (a layer that barely turns it is cheap to remove).

:mod:`supertiny.compress.importance` turns these into scores.
"""

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

from supertiny.progress import NullProgress, Progress
from supertiny.store import DatasetItem


@dataclasses.dataclass
class ActivationStats:
    """Sums over the calibration tokens, one entry per layer (original numbering)."""

    mlp_sq: list[Any]  # [intermediate] sum of squared down_proj inputs
    attn_sq: list[Any]  # [num_heads * head_dim] sum of squared o_proj inputs
    influence: list[float]  # sum over tokens of 1 - cos(in, out)
    tokens: int = 0
    sequences: int = 0

    def block_influence(self) -> list[float]:
        return [value / max(self.tokens, 1) for value in self.influence]


def calibration_sequences(tokenizer: Any, items: Sequence[DatasetItem], samples: int, max_length: int,
                          seed: int) -> list[list[int]]:
    """Token ids of up to ``samples`` conversations (a seeded draw), each cut at ``max_length``."""
    from supertiny.artifacts.conversation import tokenize_conversation

    chosen = list(items)
    if len(chosen) > samples:
        chosen = random.Random(seed).sample(chosen, samples)
    sequences = []
    for item in chosen:
        ids = tokenize_conversation(tokenizer, item.messages or [], item.tools or None, max_length).input_ids
        if len(ids) >= 2:
            sequences.append(ids)
    return sequences


def collect_statistics(model: Any, sequences: Sequence[list[int]], progress: Progress | None = None) -> ActivationStats:
    """Run ``sequences`` through ``model`` (one at a time, no gradients) and accumulate the statistics."""
    import torch

    progress = progress or NullProgress()
    layers = list(model.model.layers)
    stats = ActivationStats(mlp_sq=[None] * len(layers), attn_sq=[None] * len(layers), influence=[0.0] * len(layers))

    def square_sum(store: list[Any], index: int):
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float()
            total = x.pow(2).reshape(-1, x.shape[-1]).sum(dim=0)
            store[index] = total if store[index] is None else store[index] + total
        return hook

    def influence(index: int):
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)
            stats.influence[index] += float((1.0 - cos).sum())
        return hook

    handles = []
    try:
        for index, layer in enumerate(layers):
            handles.append(layer.mlp.down_proj.register_forward_pre_hook(square_sum(stats.mlp_sq, index)))
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(square_sum(stats.attn_sq, index)))
            handles.append(layer.register_forward_hook(influence(index), with_kwargs=True))
        progress.phase("calibrating", total=len(sequences))
        with torch.inference_mode():
            for done, ids in enumerate(sequences, start=1):
                input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
                model.model(input_ids=input_ids, use_cache=False)  # the decoder only: no logits needed
                stats.tokens += len(ids)
                stats.sequences += 1
                progress.update(done, tokens=stats.tokens)
    finally:
        for handle in handles:
            handle.remove()
    return stats
