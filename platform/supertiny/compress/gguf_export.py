"""Write a Hugging Face Qwen2 directory as one GGUF file that llama.cpp runs, the way llama.cpp's own
converter lays it out: ``qwen2`` metadata, the gpt2-style BPE tokenizer with its chat template, and the
2-D weight matrices in f32, f16, q8_0 or q4_0 (norms and biases stay f32, as llama.cpp expects).

Why a converter of our own: llama.cpp's ``convert_hf_to_gguf.py`` is not on PyPI, and the ``gguf`` package
(a dependency already, for reading the pulled models) has the writer and the q8_0 / q4_0 quantizers. Tensors are
read, converted and written one at a time (the writer is given every tensor's size up front), so exporting
the 1.5B teacher holds one tensor in memory, not the model.

The tokenizer files, config.json and generation_config.json are copied next to the GGUF: the llama-cpp
backend renders prompts with the HF chat template (tools included) exactly as the transformers backend does.
"""

import dataclasses
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from supertiny.artifacts.weights import read_model_config
from supertiny.compress.q4_scales import check_q4_scales, quantize_q4_0
from supertiny.errors import InvalidInputError

OUT_TYPES = ("f32", "f16", "q8_0", "q4_0")
# the output head's type when none is asked: 4-bit logits cost the most accuracy (llama.cpp's quantizer keeps
# a q4_0 file's head at q6_K, or q8_0 where rows do not split into 256-wide blocks, as on the 0.5B)
DEFAULT_HEAD_TYPES = {"q4_0": "q8_0"}
SUPPORTED_ARCHITECTURES = ("qwen2",)
QUANT_CHUNK_ROWS = 4096
# files the HF tokenizer and the backend's stop ids are read from
COMPANION_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json", "config.json", "generation_config.json")
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
# the pre-tokenizer split regexes llama.cpp knows by name (tokenizer.ggml.pre)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


@dataclasses.dataclass
class GGUFExport:
    """What was written."""

    path: Path
    out_type: str
    tensors: int
    param_count: int
    size_bytes: int


def export_gguf(model_dir: Path, path: Path, out_type: str = "q8_0", *, head_type: str | None = None,
                name: str | None = None, q4_scales: str = "search") -> GGUFExport:
    """Write the Qwen2 model in ``model_dir`` to the GGUF file ``path``.

    ``out_type`` is the type of the 2-D weights; ``head_type`` overrides it for the output head (published
    GGUFs often store the head in another type than the body; default: :data:`DEFAULT_HEAD_TYPES`, else
    ``out_type``). The head is ``lm_head``, or the input embedding when the model ties the two. A matrix whose
    rows q8_0 / q4_0 cannot split into 32-wide blocks is written f16, as llama.cpp's converter does.
    ``q4_scales`` picks how q4_0 blocks are scaled (:mod:`supertiny.compress.q4_scales`)."""
    import gguf
    import numpy as np

    config = check_exportable(model_dir)
    check_q4_scales(q4_scales)
    qtype = _quant_type(out_type)
    head_qtype = _quant_type(head_type or DEFAULT_HEAD_TYPES.get(out_type, out_type))
    tokenizer = _read_tokenizer(model_dir, config)
    shapes = _tensor_shapes(model_dir)
    head = "lm_head.weight" if any(hf_name == "lm_head.weight" for hf_name, _ in shapes) else \
        "model.embed_tokens.weight"  # tied: the embedding is the head too
    plan = [(hf_name, gguf_tensor_name(hf_name), shape, head_qtype if hf_name == head else qtype)
            for hf_name, shape in shapes]

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # a crash never leaves a truncated .gguf behind
    writer = gguf.GGUFWriter(str(partial), "qwen2")
    _add_metadata(writer, config, name or model_dir.name, out_type)
    _add_tokenizer(writer, tokenizer)
    types = [_tensor_type(shape, wanted) for _, _, shape, wanted in plan]
    for (_, tensor_name, shape, _), tensor_type in zip(plan, types, strict=True):
        block, block_bytes = gguf.GGML_QUANT_SIZES[tensor_type]
        # the logical shape with a float dtype: the writer reverses it into ggml's order itself
        writer.add_tensor_info(tensor_name, shape, np.float32, math.prod(shape) // block * block_bytes,
                               raw_dtype=tensor_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor_type, data in zip(types, _read_tensors(model_dir), strict=True):
            writer.write_tensor_data(_encode(data, tensor_type, q4_scales))
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    partial.replace(path)
    return GGUFExport(path=path, out_type=out_type, tensors=len(plan),
                      param_count=sum(math.prod(shape) for _, _, shape, _ in plan), size_bytes=path.stat().st_size)


def check_exportable(model_dir: Path) -> dict[str, Any]:
    """The model's config.json, or an InvalidInputError saying why the directory cannot be exported."""
    config = read_model_config(model_dir)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise InvalidInputError(f"GGUF export does not support {model_type or 'unknown'} models",
                                hint=f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise InvalidInputError(f"GGUF export does not support rope scaling ({rope.get('rope_type') or rope})")
    if config.get("use_sliding_window"):
        raise InvalidInputError("GGUF export does not support sliding-window attention")
    if not sorted(model_dir.glob("*.safetensors")):
        raise InvalidInputError(f"no safetensors weights in {model_dir}",
                                hint="GGUF export reads Hugging Face safetensors directories")
    if not (model_dir / "tokenizer.json").is_file():
        raise InvalidInputError(f"no tokenizer.json in {model_dir}: GGUF export needs a fast (BPE) tokenizer")
    for hf_name, _ in _tensor_shapes(model_dir):
        gguf_tensor_name(hf_name)
    return config


def copy_companion_files(model_dir: Path, destination: Path) -> list[str]:
    """Copy the tokenizer, chat template and configs next to the GGUF; the names copied."""
    destination.mkdir(parents=True, exist_ok=True)
    copied = []
    for file_name in COMPANION_FILES:
        if (model_dir / file_name).is_file():
            shutil.copy2(model_dir / file_name, destination / file_name)
            copied.append(file_name)
    return copied


def gguf_tensor_name(hf_name: str) -> str:
    """The llama.cpp name of a Qwen2 tensor (``model.layers.3.mlp.up_proj.weight`` -> ``blk.3.ffn_up.weight``)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    parts = hf_name.split(".", 3)  # model.layers.N.<module>.<weight|bias>
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        module, _, kind = parts[3].rpartition(".")
        if module in LAYER_NAMES and kind in ("weight", "bias"):
            return f"blk.{parts[2]}.{LAYER_NAMES[module]}.{kind}"
    raise InvalidInputError(f"GGUF export does not know the tensor {hf_name!r}",
                            hint=f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}")


# --- tokenizer ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Tokenizer:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special: dict[str, int]  # bos / eos / pad ids
    chat_template: str | None


def _read_tokenizer(model_dir: Path, config: dict[str, Any]) -> _Tokenizer:
    import gguf

    data = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise InvalidInputError(f"GGUF export needs a byte-level BPE tokenizer, {model_dir.name} has "
                                f"{model.get('type') or 'an unknown'} one")
    added = {token["content"]: (token["id"], bool(token.get("special"))) for token in data.get("added_tokens", [])}
    size = int(config["vocab_size"])
    tokens = [f"[PAD{index}]" for index in range(size)]
    types = [int(gguf.TokenType.UNUSED)] * size
    for token, index in model["vocab"].items():
        if index < size:
            tokens[index], types[index] = token, int(gguf.TokenType.NORMAL)
    for token, (index, special) in added.items():
        if index >= size:
            raise InvalidInputError(f"token {token!r} (id {index}) lies outside the model's {size}-row embedding")
        tokens[index] = token
        types[index] = int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in model.get("merges", [])]

    ids = {token: index for index, token in enumerate(tokens)}
    special_ids: dict[str, int] = {}
    for role in ("bos", "eos", "pad"):
        token = tokenizer_config.get(f"{role}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if token in ids:
            special_ids[role] = ids[token]
        elif isinstance(config.get(f"{role}_token_id"), int):
            special_ids[role] = config[f"{role}_token_id"]
    template_file = model_dir / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else tokenizer_config.get("chat_template")
    return _Tokenizer(tokens=tokens, types=types, merges=merges, pre=_pre_tokenizer(data.get("pre_tokenizer")),
                      special=special_ids, chat_template=template if isinstance(template, str) else None)


def _pre_tokenizer(spec: dict[str, Any] | None) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer: its split regex decides how text is cut before BPE."""
    spec = spec or {}
    steps = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    splits = [step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"]
    byte_level = [step for step in steps if step.get("type") == "ByteLevel"]
    if splits == [QWEN2_SPLIT]:
        return "qwen2"
    if not splits and len(byte_level) == 1 and byte_level[0].get("use_regex", True):
        return "gpt-2"
    raise InvalidInputError("GGUF export does not know this tokenizer's pre-tokenizer",
                            hint="supported: Qwen2's split regex, or a plain byte-level (gpt2) pre-tokenizer")


def _add_metadata(writer: Any, config: dict[str, Any], name: str, out_type: str) -> None:
    import gguf

    rope = config.get("rope_parameters") or {}
    writer.add_name(name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    writer.add_rope_freq_base(float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
    writer.add_file_type(file_types[out_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(writer: Any, tokenizer: _Tokenizer) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer.pre)
    writer.add_token_list(tokenizer.tokens)
    writer.add_token_types(tokenizer.types)
    writer.add_token_merges(tokenizer.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "pad": writer.add_pad_token_id}
    for role, index in tokenizer.special.items():
        adders[role](index)
    writer.add_add_bos_token(False)  # chat templates write their own start tokens
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


# --- tensors --------------------------------------------------------------------------------------


def _tensor_shapes(model_dir: Path) -> list[tuple[str, list[int]]]:
    from safetensors import safe_open

    shapes = []
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            shapes += [(key, list(handle.get_slice(key).get_shape())) for key in handle.keys()]  # noqa: SIM118
    return shapes


def _read_tensors(model_dir: Path) -> Iterator[Any]:
    """Each tensor as a float32 numpy array, in :func:`_tensor_shapes` order (torch reads bf16; numpy cannot)."""
    import torch
    from safetensors import safe_open

    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - a safe_open handle is not a mapping
                yield handle.get_tensor(key).to(torch.float32).numpy()


def _tensor_type(shape: list[int], wanted: Any) -> Any:
    import gguf

    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    if shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return wanted


def _encode(data: Any, tensor_type: Any, q4_scales: str) -> Any:
    import gguf
    import numpy as np

    if tensor_type == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if tensor_type == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    # in row chunks: the quantizer's temporaries are copies of its input (GBs for a whole Qwen embedding)
    rows = data.reshape(-1, data.shape[-1])
    out = np.empty(gguf.quants.quant_shape_to_byte_shape(rows.shape, tensor_type), dtype=np.uint8)
    for start in range(0, rows.shape[0], QUANT_CHUNK_ROWS):
        chunk = rows[start:start + QUANT_CHUNK_ROWS]
        out[start:start + QUANT_CHUNK_ROWS] = quantize_q4_0(chunk, q4_scales) \
            if tensor_type == gguf.GGMLQuantizationType.Q4_0 else gguf.quants.quantize(chunk, tensor_type)
    return out


def _quant_type(out_type: str) -> Any:
    import gguf

    types = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}
    if out_type not in types:
        raise InvalidInputError(f"unknown GGUF type {out_type!r}", hint=f"one of {', '.join(OUT_TYPES)}")
    return types[out_type]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"unreadable {path.name} in {path.parent}: {exc}") from exc
