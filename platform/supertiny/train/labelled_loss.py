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


SCORED_ROWS = 1024  # labelled positions projected at once: the fp32 logits of 1024 rows of a 152k vocabulary, 0.6 GB


def compact_fused_heads(trainer: Any, temperature: float = 1.0) -> None:
    """Where TRL's trainers score log-probabilities with their fused output head on a device without Triton (a CPU),
    score only the labelled positions: TRL's torch fallback projects every position onto the vocabulary and does it
    again in the backward pass. The same outputs (log-probabilities, entropy, whether the label is the top token) at
    the labelled positions, zero elsewhere, as TRL's. Leaves CUDA and models TRL's head scales or caps alone."""
    from peft import PeftModel

    for model in (trainer.model, getattr(trainer, "ref_model", None)):
        if model is None:
            continue
        model = model.get_base_model() if isinstance(model, PeftModel) else model
        config = model.config.get_text_config()
        scaled = any(getattr(config, key, None) not in (None, 1.0) for key in
                     ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                      "logits_scaling"))
        if model.device.type == "cpu" and not scaled and not getattr(model, "_supertiny_compact_head", False):
            _patch(model, temperature)


def _patch(model: Any, temperature: float) -> None:
    import functools
    import types

    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    fused_forward = model.forward  # TRL's, which also serves the plain forward (without ``fused_lm_head``)

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or labels is None or shift_labels is not None or kwargs.get("output_router_logits"):
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                                 num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        kept, kept_targets = hidden[mask], targets[mask]
        head = self.get_output_embeddings()
        columns: dict[str, list[Any]] = {"log_probs": [], "entropy": [], "log_sum_sq_probs": [], "mean_logits": [],
                                         "is_top1": []}
        # at least once: with no labelled position, an empty slice keeps the outputs connected to the model
        for start in range(0, max(kept.shape[0], 1), SCORED_ROWS):
            rows = slice(start, start + SCORED_ROWS)
            logits = head(kept[rows]).float() / temperature
            log_p = logits.log_softmax(dim=-1)
            columns["log_probs"].append(log_p.gather(-1, kept_targets[rows, None]).squeeze(-1))
            columns["entropy"].append(-(log_p.exp() * log_p).sum(dim=-1))
            with torch.no_grad():
                columns["log_sum_sq_probs"].append(torch.logsumexp(2 * log_p, dim=-1))
                columns["mean_logits"].append(logits.mean(dim=-1))
                columns["is_top1"].append(logits.argmax(dim=-1) == kept_targets[rows])
        per_token = {}
        for name, values in columns.items():
            dtype = torch.bool if name == "is_top1" else torch.float32
            per_token[name] = mask.new_zeros(mask.shape, dtype=dtype).masked_scatter(mask, torch.cat(values))
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-per_token["log_probs"].sum() / count, label_mask=mask, **per_token)

    model.forward = types.MethodType(forward, model)
    model._supertiny_compact_head = True
