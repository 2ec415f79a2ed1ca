"""The structure of a Llama-layout causal LM (Qwen2, Llama, Mistral) and structured pruning of it.

A :class:`Shape` is what decides the parameter count: layers, query heads, key/value heads, head size,
MLP width, which projections carry biases and whether the output head is tied to the input embedding
(the 0.5B student ties them: its 136M-parameter embedding is counted once). A :class:`PrunePlan`
says which layers, key/value groups and MLP channels stay; :func:`apply_plan` turns a model into a
smaller model of the same class, with a config that describes the new shapes (an explicit
``head_dim``, so removing heads never changes the size of the ones that stay) and nothing else
changed, so plain ``AutoModelForCausalLM.from_pretrained`` loads the saved result.

Every layer keeps the same number of heads and channels: the HF config has one
``intermediate_size`` and one ``num_key_value_heads`` for all layers.
"""

import dataclasses
import json
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError

SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "mistral")


def check_model_type(model_type: str | None, what: str) -> str:
    """``model_type`` when the pruner knows its layout, else a clear error naming what it knows."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InvalidInputError(f"cannot prune {what}: architecture {model_type or 'unknown'!r} is not supported",
                                hint=f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (Llama-layout causal LMs)")
    return model_type  # type: ignore[return-value]


def read_model_type(directory: Path) -> str | None:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("model_type")


@dataclasses.dataclass(frozen=True)
class Shape:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def of(cls, model: Any) -> "Shape":
        """The shape of a loaded model (biases read from its first layer's modules)."""
        config = model.config
        layer = model.model.layers[0]
        attention, mlp = layer.self_attn, layer.mlp
        head_dim = attention.head_dim
        return cls(vocab_size=model.get_input_embeddings().num_embeddings, hidden_size=config.hidden_size,
                   num_layers=len(model.model.layers), num_heads=attention.q_proj.out_features // head_dim,
                   num_kv_heads=attention.k_proj.out_features // head_dim, head_dim=head_dim,
                   intermediate_size=mlp.gate_proj.out_features,
                   tied=model.get_output_embeddings().weight is model.get_input_embeddings().weight,
                   qkv_bias=attention.q_proj.bias is not None, o_bias=attention.o_proj.bias is not None,
                   mlp_bias=mlp.gate_proj.bias is not None)

    def layer_params(self) -> int:
        hidden, d = self.hidden_size, self.head_dim
        q, kv = self.num_heads * d, self.num_kv_heads * d
        attention = hidden * (q + 2 * kv) + q * hidden + (q + 2 * kv if self.qkv_bias else 0) \
            + (hidden if self.o_bias else 0)
        mlp = 3 * hidden * self.intermediate_size + (2 * self.intermediate_size + hidden if self.mlp_bias else 0)
        return attention + mlp + 2 * hidden  # + the two RMSNorms

    def param_count(self) -> int:
        embedding = self.vocab_size * self.hidden_size
        return embedding * (1 if self.tied else 2) + self.hidden_size + self.num_layers * self.layer_params()

    def per_mlp_channel(self) -> int:
        """Parameters one MLP channel costs across all layers."""
        return self.num_layers * (3 * self.hidden_size + (2 if self.mlp_bias else 0))

    def describe(self) -> str:
        return (f"{self.num_layers} layers, {self.num_heads} heads / {self.num_kv_heads} kv heads, "
                f"MLP width {self.intermediate_size}")


@dataclasses.dataclass
class PrunePlan:
    """What stays: layer indices, key/value groups per kept layer, MLP channels per kept layer (all in
    the original numbering, sorted)."""

    layers: list[int]
    kv_groups: dict[int, list[int]]
    channels: dict[int, list[int]]

    def shape(self, original: Shape) -> Shape:
        first = self.layers[0]
        kv_heads = len(self.kv_groups[first])
        return dataclasses.replace(original, num_layers=len(self.layers), num_kv_heads=kv_heads,
                                   num_heads=kv_heads * original.group_size,
                                   intermediate_size=len(self.channels[first]))


def parse_param_count(text: str | int | None) -> int | None:
    """``0.4B``, ``400M``, ``400k``, ``400000000`` or ``4e8`` -> parameters."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    value = str(text).strip().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}.get(value[-1:].lower(), 1.0)
    number = value[:-1] if scale != 1.0 else value
    try:
        count = float(number) * scale
    except ValueError:
        raise InvalidInputError(f"cannot read {text!r} as a parameter count",
                                hint="e.g. 0.4B, 400M or 400000000") from None
    if count < 1:
        raise InvalidInputError(f"parameter count {text!r} must be positive")
    return round(count)


def solve_shape(shape: Shape, target: int, drop_layers: int, drop_kv_groups: int, prune_mlp: bool,
                multiple_of: int) -> Shape:
    """The shape after dropping ``drop_layers`` layers and ``drop_kv_groups`` key/value groups per layer,
    with the widest MLP (a multiple of ``multiple_of``) that brings the count to at most ``target``."""
    if drop_layers >= shape.num_layers:
        raise InvalidInputError(f"cannot drop {drop_layers} of {shape.num_layers} layers", hint="keep at least one")
    if drop_kv_groups >= shape.num_kv_heads:
        raise InvalidInputError(f"cannot drop {drop_kv_groups} of {shape.num_kv_heads} key/value groups per layer",
                                hint="keep at least one")
    kv_heads = shape.num_kv_heads - drop_kv_groups
    reduced = dataclasses.replace(shape, num_layers=shape.num_layers - drop_layers, num_kv_heads=kv_heads,
                                  num_heads=kv_heads * shape.group_size)
    if reduced.param_count() <= target or not prune_mlp:
        if reduced.param_count() > target:
            raise InvalidInputError(f"dropping {drop_layers} layers and {drop_kv_groups} key/value groups leaves "
                                    f"{reduced.param_count():,} parameters, above the target {target:,}",
                                    hint="prune the MLP too (--mlp) or drop more")
        return reduced
    without_mlp = dataclasses.replace(reduced, intermediate_size=0).param_count()
    width = (target - without_mlp) // reduced.per_mlp_channel()
    width = min(width // multiple_of * multiple_of, reduced.intermediate_size)
    if width < multiple_of:
        smallest = dataclasses.replace(reduced, intermediate_size=multiple_of).param_count()
        raise InvalidInputError(f"cannot reach {target:,} parameters: even an MLP width of {multiple_of} leaves "
                                f"{smallest:,}", hint="drop layers or key/value groups too, or aim higher")
    return dataclasses.replace(reduced, intermediate_size=width)


def apply_plan(model: Any, plan: PrunePlan) -> Any:
    """A new model of the same class holding only what ``plan`` keeps; ``model`` is left as it was."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    original = Shape.of(model)
    shape = plan.shape(original)
    d, group = original.head_dim, original.group_size
    state = model.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    prefix = "model.layers."
    for key, tensor in state.items():
        if not key.startswith(prefix):
            new_state[key] = tensor
    for new_index, old_index in enumerate(plan.layers):
        kv_rows = _rows([range(g * d, (g + 1) * d) for g in plan.kv_groups[old_index]])
        q_rows = _rows([range(g * group * d, (g + 1) * group * d) for g in plan.kv_groups[old_index]])
        channels = torch.tensor(plan.channels[old_index], dtype=torch.long)
        old, new = f"{prefix}{old_index}.", f"{prefix}{new_index}."
        for key, tensor in state.items():
            if not key.startswith(old):
                continue
            name = key[len(old):]
            new_state[new + name] = _slice(name, tensor, q_rows, kv_rows, channels)
    config = _pruned_config(model.config, shape, plan)
    with no_init_weights():
        pruned = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    missing, unexpected = pruned.load_state_dict(new_state, strict=False, assign=True)  # no third copy
    tied_head = {"lm_head.weight"} if original.tied else set()
    if set(missing) - tied_head or unexpected:
        raise RuntimeError(f"pruned state does not fit the pruned model: missing {missing}, unexpected {unexpected}")
    if original.tied:
        pruned.tie_weights()
        if pruned.get_output_embeddings().weight is not pruned.get_input_embeddings().weight:
            raise RuntimeError("the pruned model did not tie its output head to its input embedding")
    if getattr(model, "generation_config", None) is not None:
        pruned.generation_config = model.generation_config
    pruned.eval()
    return pruned


def _rows(ranges: list[range]) -> Any:
    import torch

    return torch.tensor([index for block in ranges for index in block], dtype=torch.long)


def _slice(name: str, tensor: Any, q_rows: Any, kv_rows: Any, channels: Any) -> Any:
    """The kept part of one tensor of a decoder layer (by its name inside the layer)."""
    if name.startswith("self_attn.q_proj."):
        return tensor.index_select(0, q_rows).clone()
    if name.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
        return tensor.index_select(0, kv_rows).clone()
    if name == "self_attn.o_proj.weight":
        return tensor.index_select(1, q_rows).clone()
    if name.startswith(("mlp.gate_proj.", "mlp.up_proj.")):
        return tensor.index_select(0, channels).clone()
    if name == "mlp.down_proj.weight":
        return tensor.index_select(1, channels).clone()
    return tensor.clone()  # norms, the o_proj and down_proj biases


def _pruned_config(config: Any, shape: Shape, plan: PrunePlan) -> Any:
    import copy

    new = copy.deepcopy(config)
    new.num_hidden_layers = shape.num_layers
    new.num_attention_heads = shape.num_heads
    new.num_key_value_heads = shape.num_kv_heads
    new.head_dim = shape.head_dim
    new.intermediate_size = shape.intermediate_size
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        new.layer_types = [layer_types[index] for index in plan.layers]
    if getattr(config, "max_window_layers", None) is not None:
        new.max_window_layers = min(config.max_window_layers, shape.num_layers)
    return new
