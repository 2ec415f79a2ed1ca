"""Weight-only quantized modules for CPU decoding, and turning a model's linear layers into them.

``int8``: one int8 weight per element and one scale per output channel (symmetric absmax), computed
by ``torch.ops.aten._weight_int8pack_mm`` (AVX2/AVX-512 vectorised on x86) with bf16 or fp32
activations. The input embedding and a tied output head share one int8 matrix: the head's
per-output-channel scales are the embedding's per-row scales.

``int4``: 4-bit asymmetric groups along the input dimension (one scale and zero point per group of
``group_size`` weights), computed by ``torch.ops.aten._weight_int4pack_mm_for_cpu``. Stored unpacked
(two nibbles per byte, row-major) and packed for the kernel when the model loads, so the files do not
depend on the kernel's tiling. The embedding stays int8 (a lookup reads one row, not worth a kernel).

Everything else (norms, biases, rotary tables) keeps the activation dtype. On a CPU without native bf16
arithmetic (see :mod:`supertiny.artifacts.hardware`) a model saved for bf16 runs its activations in fp32:
bf16 attention and norms are emulated there and cost more than the int8 matrices save. The kernels
keep their bf16 scales: a few rows at a time (decoding) go through the kernel in bf16, where it is
fastest; a long prompt is multiplied by the dequantized fp32 matrix, which beats the kernel on many
rows.
"""

from typing import Any

import torch
from torch import nn

from supertiny.compress.quantize_config import WEIGHT_SCHEMES

# rows up to which fp32 activations go through the packed kernel in bf16 rather than a dequantized fp32 matmul
KERNEL_ROWS = 16


def _mixed_forward(module: Any, x: torch.Tensor, kernel: Any) -> torch.Tensor:
    """``module``'s output for ``x`` whatever the activation dtype: ``kernel(flat)`` in the scales' dtype,
    or (fp32 activations over bf16 scales, many rows) a matmul with the dequantized weight."""
    shape = x.shape
    flat = x.reshape(-1, module.in_features)
    kernel_dtype = module.weight_scale.dtype
    if x.dtype == kernel_dtype:
        out = kernel(flat)
    elif x.dtype == torch.float32 and flat.shape[0] > KERNEL_ROWS:
        out = flat @ module.dequantized().T
    else:
        out = kernel(flat.to(kernel_dtype)).to(x.dtype)
    if module.bias is not None:
        out = out + module.bias.to(out.dtype)
    return out.reshape(*shape[:-1], module.out_features)


def _int8_rows(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (int8 [N, K], scale [N] in ``dtype``) with weight ~= q * scale. The codes are
    computed with the scale as stored (rounded up to ``dtype``), so no weight is off by more than half a step."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
    scale = (scale * (1 + 2**-7)).to(dtype) if dtype != torch.float32 else scale  # never below the absmax / 127
    quantized = torch.round(weight / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return quantized, scale


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + bias`` with an int8 weight ``q`` [out, in] and a scale per output row."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype) -> "Int8Linear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype)
        quantized, scale = _int8_rows(linear.weight, dtype)
        module.weight.copy_(quantized)
        module.weight_scale.copy_(scale)
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach().to(dtype))
        return module

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mixed_forward(self, x, lambda flat: torch.ops.aten._weight_int8pack_mm(flat, self.weight,
                                                                                        self.weight_scale))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int4Linear(nn.Module):
    """4-bit groups along the input dimension; ``weight`` holds two nibbles a byte (low nibble first)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, group_size: int):
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"in_features {in_features} is not a multiple of the group size {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=dtype))
        self.register_buffer("weight_zero", torch.zeros(out_features, groups, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self._packed: torch.Tensor | None = None
        self._scales_and_zeros: torch.Tensor | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype, group_size: int) -> "Int4Linear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype, group_size)
        weight = linear.weight.detach().float().reshape(linear.out_features, -1, group_size)
        low, high = weight.amin(dim=-1), weight.amax(dim=-1)
        scale = (((high - low) / 15.0).clamp(min=1e-8) * (1 + 2**-7)).to(dtype).float()  # as stored, rounded up
        low = low.to(dtype).float()
        values = torch.round((weight - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
        values = values.reshape(linear.out_features, linear.in_features)
        module.weight.copy_(values[:, 0::2] | (values[:, 1::2] << 4))
        module.weight_scale.copy_(scale.to(dtype))
        module.weight_zero.copy_(low.to(dtype))  # the weight of code 0
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach().to(dtype))
        return module

    def codes(self) -> torch.Tensor:
        """The 4-bit codes as int32 [out, in]."""
        codes = torch.stack([self.weight & 0x0F, self.weight >> 4], dim=-1)
        return codes.reshape(self.out_features, self.in_features).to(torch.int32)

    def dequantized(self) -> torch.Tensor:
        codes = self.codes().float().reshape(self.out_features, -1, self.group_size)
        weight = codes * self.weight_scale.float()[..., None] + self.weight_zero.float()[..., None]
        return weight.reshape(self.out_features, self.in_features)

    def _prepare(self) -> None:
        # the kernel computes (code - 8) * scale + zero': shift our zero (the weight of code 0) by 8 steps
        self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.codes(), 1)
        zero = self.weight_zero + 8 * self.weight_scale
        self._scales_and_zeros = torch.stack([self.weight_scale, zero], dim=-1).transpose(0, 1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self._prepare()
        return _mixed_forward(self, x, lambda flat: torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self._packed, self.group_size, self._scales_and_zeros))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 g{self.group_size}"


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one scale each; it can share them with a tied head."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.activation_dtype = dtype  # what the rows are handed on as (the model's compute dtype)
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, dtype=dtype))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, dtype: torch.dtype) -> "Int8Embedding":
        module = cls(embedding.num_embeddings, embedding.embedding_dim, dtype, embedding.padding_idx)
        quantized, scale = _int8_rows(embedding.weight, dtype)
        module.weight.copy_(quantized)
        module.weight_scale.copy_(scale)
        return module

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(ids, self.weight).to(self.activation_dtype)
        return rows * self.weight_scale[ids].unsqueeze(-1).to(self.activation_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


def int4_fits(linear: nn.Linear, group_size: int) -> bool:
    """The int4 kernel takes whole groups along the input and output rows in blocks of 16; other layers
    stay int8."""
    return linear.in_features % group_size == 0 and linear.out_features % 16 == 0


def quantize_modules(model: Any, scheme: str, dtype: torch.dtype, group_size: int = 128,
                     skip: tuple[str, ...] = (), quantize_embedding: bool = True) -> dict[str, Any]:
    """Replace the model's linear layers (and, with ``quantize_embedding``, its input embedding) in place; return the
    manifest that :func:`build_skeleton` needs to rebuild the same modules: scheme, group size, what was
    quantized."""
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}")
    head = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    tied = head is not None and head.weight is embedding.weight
    head_name = next(name for name, module in model.named_modules() if module is head) if head is not None else None
    linear_names, int4_names = [], []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or any(name == s or name.endswith("." + s) for s in skip):
            continue
        use_int4 = scheme == "int4" and int4_fits(module, group_size) and not (tied and name == head_name)
        replacement = Int4Linear.from_linear(module, dtype, group_size) if use_int4 \
            else Int8Linear.from_linear(module, dtype)
        _set_module(model, name, replacement)
        (int4_names if use_int4 else linear_names).append(name)
    manifest = {"scheme": scheme, "group_size": group_size if scheme == "int4" else None, "int8": linear_names,
                "int4": int4_names, "embedding": None, "tied_head": None}
    if not quantize_embedding:
        return manifest
    embedding_name = next(name for name, module in model.named_modules() if module is embedding)
    quantized_embedding = Int8Embedding.from_embedding(embedding, dtype)
    _set_module(model, embedding_name, quantized_embedding)
    if tied and head_name in linear_names:
        _tie(model.get_submodule(head_name), quantized_embedding)
    elif tied:  # the head was kept unquantized: it keeps the original table, the embedding gets its own
        model.config.tie_word_embeddings = False
    return {**manifest, "embedding": embedding_name, "tied_head": head_name if tied and head_name in linear_names
            else None}


def build_skeleton(model: Any, manifest: dict[str, Any], dtype: torch.dtype,
                   activation_dtype: torch.dtype | None = None) -> None:
    """Swap in empty quantized modules named by ``manifest`` (before loading their state dict): scales in
    ``dtype``, embedding rows (where ``manifest`` names an embedding) handed on in ``activation_dtype`` (default
    ``dtype``)."""
    for name in manifest["int8"]:
        linear = model.get_submodule(name)
        _set_module(model, name, Int8Linear(linear.in_features, linear.out_features, linear.bias is not None, dtype))
    for name in manifest["int4"]:
        linear = model.get_submodule(name)
        _set_module(model, name, Int4Linear(linear.in_features, linear.out_features, linear.bias is not None, dtype,
                                            manifest["group_size"]))
    if not manifest.get("embedding"):
        return
    embedding = model.get_submodule(manifest["embedding"])
    quantized_embedding = Int8Embedding(embedding.num_embeddings, embedding.embedding_dim, dtype, embedding.padding_idx)
    quantized_embedding.activation_dtype = activation_dtype or dtype
    _set_module(model, manifest["embedding"], quantized_embedding)


def tie_quantized_head(model: Any, manifest: dict[str, Any]) -> None:
    """Point a tied head at the embedding's int8 rows and scales (stored once on disk)."""
    if manifest.get("tied_head"):
        _tie(model.get_submodule(manifest["tied_head"]), model.get_submodule(manifest["embedding"]))


def _tie(head: nn.Module, embedding: nn.Module) -> None:
    head.weight = embedding.weight
    head.weight_scale = embedding.weight_scale


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
