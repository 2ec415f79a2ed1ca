"""The output layer run only where a loss is defined: the positions whose next token is labelled.

A record of a tool-calling conversation is mostly prompt (system prompt, tool schemas, the user's turn) and a short
assistant answer; only the answer's tokens carry a label. On a 150k vocabulary, projecting every position costs
more than the rest of the model over a long prompt (TRL's fused head, which recomputes its tiles in the backward
pass, as much as the rest of a LoRA step on a CPU). The labelled positions alone give the same loss and gradients.
"""

from typing import Any

from supertiny.artifacts.conversation import IGNORE_INDEX


def trained_logits(model: Any, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
    """``(N, vocab)``: the logits predicting each trained token (``labels`` not IGNORE_INDEX), in order."""
    import torch

    mask = labels[:, 1:] != IGNORE_INDEX
    positions = torch.nonzero(mask.any(dim=0)).flatten()
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions,
                       use_cache=False).logits
    except TypeError:  # an architecture without logits_to_keep: all positions
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1][mask]
    return logits[mask[:, positions]]


def labelled_positions_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> tuple[Any, Any]:
    """(loss, the logits at the trained positions) of a causal LM on ``inputs`` (``input_ids``, ``labels``,
    optional ``attention_mask``): the summed next-token cross-entropy over the labelled tokens, divided by
    ``num_items_in_batch`` (the labelled tokens of every micro-batch of the optimizer step) when given, else by this
    batch's; as the model's own loss is."""
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    logits = trained_logits(model, inputs["input_ids"], inputs.get("attention_mask"), labels)
    targets = labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]
    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    return loss / torch.as_tensor(count, device=loss.device).clamp(min=1), logits
