"""W8A8 int8 as a compressed-tensors checkpoint: the format vLLM loads quantized (its CPU build computes it with
oneDNN's int8 matmul), and loading it back in-process.

A Hugging Face directory whose ``config.json`` carries a ``quantization_config`` (``quant_method``
``compressed-tensors``, ``format`` ``int-quantized``): every linear layer but the output head has int8 weights
with one scale per output channel (``<layer>.weight`` int8 [out, in], ``<layer>.weight_scale`` float32 [out, 1]),
and its input activations are quantized to int8 per token when the model runs (dynamic: no calibration data).
The embedding, the head, norms and biases keep the compute dtype.

The scales are rounded up to bf16 before the codes are computed (as ``quantize --scheme int8`` does), so a
scale reads back exactly in bf16 and the in-process path, the ``transformers-quantized`` backend, runs the same
int8 weights on torch's weight-only int8 kernel. In-process the activations are not quantized: that path agrees
with the engine's up to the activations' rounding.
"""

import json
from pathlib import Path
from typing import Any

from supertiny.errors import ModelError

FORMAT = "compressed-tensors"
WEIGHTS = "model.safetensors"
SCALE_SUFFIX = ".weight_scale"


def w8a8_config(ignore: list[str]) -> dict[str, Any]:
    """The ``quantization_config`` of a W8A8 int8 checkpoint: symmetric int8 weights per output channel,
    dynamic symmetric int8 activations per token, ``ignore``: the linear layers left unquantized."""
    def scheme(strategy: str, dynamic: bool) -> dict[str, Any]:
        return {"num_bits": 8, "type": "int", "symmetric": True, "strategy": strategy, "dynamic": dynamic,
                "group_size": None, "block_structure": None, "actorder": None,
                "observer": None if dynamic else "minmax", "observer_kwargs": {}}

    return {"quant_method": FORMAT, "format": "int-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": scheme("channel", False),
                                          "input_activations": scheme("token", True), "output_activations": None}},
            "ignore": sorted(ignore), "kv_cache_scheme": None, "global_compression_ratio": None}


def is_compressed_tensors_dir(directory: Path) -> bool:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (config.get("quantization_config") or {}).get("quant_method") == FORMAT


def save_w8a8(model: Any, tokenizer: Any, manifest: dict[str, Any], directory: Path, compute_dtype: str) -> Path:
    """Write a model whose linear layers :func:`supertiny.compress.quantized.quantize_modules` made int8 (embedding
    and head left alone) as a compressed-tensors W8A8 directory: into a temporary directory first, renamed once
    complete."""
    import torch

    from supertiny.compress.quantized_io import write_model_directory

    dtype = getattr(torch, compute_dtype)
    quantized = set(manifest["int8"])
    head = model.get_output_embeddings()
    head_name = next(name for name, module in model.named_modules() if module is head)
    state = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if model.config.tie_word_embeddings and module == head_name:
            continue  # the head is the embedding's table
        if module in quantized and leaf == "weight_scale":
            value = value.float().reshape(-1, 1)
        elif value.is_floating_point():
            value = value.to(dtype)
        state[key] = value.detach().contiguous()
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    model.config.quantization_config = w8a8_config([name for name in linears if name not in quantized])
    return write_model_directory(model, tokenizer, state, directory, WEIGHTS, compute_dtype)


def load_w8a8(directory: Path) -> Any:
    """The W8A8 checkpoint in ``directory`` as a causal LM on the CPU, in eval mode: its int8 layers on torch's
    weight-only int8 kernel, activations unquantized."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from supertiny.artifacts.hardware import fast_dtype
    from supertiny.compress.quantized import build_skeleton
    from supertiny.compress.quantized_io import finish_loading, load_weights

    try:
        config = AutoConfig.from_pretrained(directory)
        _check_w8a8(config.quantization_config, directory)
        compute_dtype = str(config.dtype or "bfloat16").removeprefix("torch.")
        dtype = getattr(torch, compute_dtype)
        activation_dtype = getattr(torch, fast_dtype(compute_dtype))
        del config.quantization_config  # it names a quantizer transformers would insist on
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=activation_dtype)
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"cannot load the W8A8 model in {directory}: {exc}") from exc
    state = load_weights(directory, WEIGHTS)
    quantized = sorted(key[: -len(SCALE_SUFFIX)] for key in state if key.endswith(SCALE_SUFFIX))
    try:
        build_skeleton(model, {"int8": quantized, "int4": [], "embedding": None}, dtype, activation_dtype)
    except AttributeError as exc:  # a scale for a layer the config does not have
        raise ModelError(f"the weights in {directory} do not fit its config: {exc}") from exc
    state = {key: value.reshape(-1).to(dtype) if key.endswith(SCALE_SUFFIX)
             else value.to(activation_dtype) if value.is_floating_point() else value for key, value in state.items()}
    head = model.get_output_embeddings()
    tied = {name + ".weight" for name, module in model.named_modules() if module is head} \
        if config.tie_word_embeddings else set()
    model = finish_loading(model, state, directory, tied)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def _check_w8a8(quantization: Any, directory: Path) -> None:
    """ModelError unless ``quantization`` describes int8 weights per output channel (what loads in-process)."""
    quantization = quantization if isinstance(quantization, dict) else quantization.to_dict()
    groups = list((quantization.get("config_groups") or {}).values())
    weights = [group.get("weights") or {} for group in groups]
    if quantization.get("format") != "int-quantized" or not weights or any(
            (w.get("num_bits"), w.get("type"), w.get("strategy"), w.get("symmetric")) != (8, "int", "channel", True)
            for w in weights):
        raise ModelError(f"{directory} is a compressed-tensors checkpoint other than W8A8 int8 per channel; "
                         "in-process only that one loads", hint="serve it on an engine: `supertiny engine start`")
