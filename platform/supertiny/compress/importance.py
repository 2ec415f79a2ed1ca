"""Importance scores, and the plan that keeps the most important structures of each kind.

- MLP channel ``j`` of a layer (``activation``, Wanda-style, arXiv 2306.11695, per structure):
  ``||X_j||_2 * ||W_down[:, j]||_2``, the size of what the channel writes into the residual stream over
  the calibration tokens; ``magnitude`` (no data): ``||W_gate[j]|| * ||W_up[j]|| * ||W_down[:, j]||``.
- key/value group ``g`` (its k/v head and the query heads that read it): the sum, over the query heads'
  output dimensions ``c``, of ``||X_c||_2 * ||W_o[:, c]||_2``; ``magnitude``: ``||W_o[:, heads of g]||_F *
  ||W_v[g]||_F``. Whole groups go so that every query head keeps its key/value head.
- layer: Block Influence from the calibration run; the least influential layers go.

Within a layer, channels and groups are ranked against each other; every layer keeps the same number.
"""

from typing import Any

from supertiny.compress.calibration import ActivationStats
from supertiny.compress.structure import PrunePlan, Shape


def mlp_scores(model: Any, stats: ActivationStats | None) -> list[Any]:
    """A score per MLP channel of every layer."""
    scores = []
    for index, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        column = mlp.down_proj.weight.detach().float().norm(dim=0)
        if stats is not None and stats.mlp_sq[index] is not None:
            scores.append(stats.mlp_sq[index].sqrt() * column)
        else:
            scores.append(mlp.gate_proj.weight.detach().float().norm(dim=1)
                          * mlp.up_proj.weight.detach().float().norm(dim=1) * column)
    return scores


def kv_group_scores(model: Any, stats: ActivationStats | None) -> list[Any]:
    """A score per key/value group of every layer."""
    shape = Shape.of(model)
    width = shape.group_size * shape.head_dim  # o_proj input columns per group
    scores = []
    for index, layer in enumerate(model.model.layers):
        attention = layer.self_attn
        column = attention.o_proj.weight.detach().float().norm(dim=0)  # [num_heads * head_dim]
        if stats is not None and stats.attn_sq[index] is not None:
            scores.append((stats.attn_sq[index].sqrt() * column).reshape(shape.num_kv_heads, width).sum(dim=1))
            continue
        heads = column.pow(2).reshape(shape.num_heads, shape.head_dim).sum(dim=1).sqrt()
        values = attention.v_proj.weight.detach().float().pow(2).reshape(shape.num_kv_heads, -1).sum(dim=1).sqrt()
        scores.append(heads.reshape(shape.num_kv_heads, shape.group_size).sum(dim=1) * values)
    return scores


def choose_plan(model: Any, target: Shape, stats: ActivationStats | None, use_activations: bool = True) -> PrunePlan:
    """Which layers, groups and channels to keep so the model takes the ``target`` shape. Layers are
    ranked by the statistics' Block Influence; channels and groups by activations when
    ``use_activations`` (and statistics are given), else by weight magnitude."""
    original = Shape.of(model)
    layers = list(range(original.num_layers))
    if target.num_layers < original.num_layers:
        if stats is None:
            raise ValueError("removing layers needs calibration statistics")
        influence = stats.block_influence()
        layers = sorted(sorted(layers, key=lambda index: influence[index], reverse=True)[: target.num_layers])
    ranked_by = stats if use_activations else None
    channel_scores = mlp_scores(model, ranked_by)
    group_scores = kv_group_scores(model, ranked_by)
    return PrunePlan(layers=layers,
                     kv_groups={index: _top(group_scores[index], target.num_kv_heads) for index in layers},
                     channels={index: _top(channel_scores[index], target.intermediate_size) for index in layers})


def _top(scores: Any, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, in their original order (ties keep the earlier index)."""
    import torch

    if keep >= scores.numel():
        return list(range(scores.numel()))
    order = torch.argsort(scores, descending=True, stable=True)[:keep]
    return sorted(order.tolist())
