"""q4_0 blocks whose scales are searched for the least squared error, in llama.cpp's q4_0 layout.

A q4_0 block stores 32 weights as one fp16 scale ``d`` and 32 integers ``q`` in [-8, 7]; a weight reads back
as ``d * q``. llama.cpp's reference quantizer (and the ``gguf`` package's) takes ``d = m / -8``, ``m`` the
block's value of largest magnitude: ``m`` is exact and every other weight is rounded on that grid, whatever
it costs them. Here each block tries a range of scales around that one; for each, the integers are rounded,
the scale is refitted by least squares to those integers, and the pair with the smallest error is kept.
The file format, and so llama.cpp's kernels and speed, stay the same; only which integers and scales are
written changes. ``scales="max"`` writes the reference blocks.
"""

from typing import Any

from supertiny.errors import InvalidInputError

Q4_0_BLOCK = 32
SCALE_CHOICES = ("search", "max")
# multiples of the reference scale m / -8 that are tried for each block
SEARCH_FACTORS = tuple(0.80 + 0.02 * step for step in range(21))


def check_q4_scales(scales: str) -> None:
    """One clear error for a scale rule that is not one of :data:`SCALE_CHOICES`."""
    if scales not in SCALE_CHOICES:
        raise InvalidInputError(f"unknown q4_0 scales {scales!r}", hint=f"one of {', '.join(SCALE_CHOICES)}")


def quantize_q4_0(rows: Any, scales: str = "search") -> Any:
    """``rows`` [n, k] float32 (k a multiple of 32) as q4_0 bytes [n, k / 32 * 18]."""
    import gguf
    import numpy as np

    check_q4_scales(scales)
    if scales == "max":
        return gguf.quants.quantize(rows, gguf.GGMLQuantizationType.Q4_0)
    count, width = rows.shape
    blocks = np.asarray(rows, dtype=np.float32).reshape(-1, Q4_0_BLOCK)
    scale = searched_scales(blocks)
    integers = _round(blocks, scale) + 8  # stored offset by 8, as 0..15
    integers = integers.astype(np.uint8).reshape(-1, 2, Q4_0_BLOCK // 2)
    nibbles = integers[:, 0, :] | (integers[:, 1, :] << np.uint8(4))  # first half low, second half high
    packed = np.concatenate([scale.astype(np.float16).view(np.uint8), nibbles], axis=-1)
    return packed.reshape(count, width // Q4_0_BLOCK * (2 + Q4_0_BLOCK // 2))


def searched_scales(blocks: Any) -> Any:
    """The fp16-representable scale [blocks, 1] with the least squared error for each block [blocks, 32]."""
    import numpy as np

    largest = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1, keepdims=True), axis=-1)
    reference = largest / -8
    best_scale = _as_fp16(reference)
    best_error = _squared_error(blocks, best_scale)
    for factor in SEARCH_FACTORS:
        integers = _round(blocks, reference * np.float32(factor))
        fitted = _as_fp16(_least_squares_scale(blocks, integers))
        error = _squared_error(blocks, fitted)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_scale = np.where(better, fitted, best_scale)
    return best_scale


def _round(blocks: Any, scale: Any) -> Any:
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(scale == 0, 0.0, blocks / scale)
    return np.clip(np.round(ratio), -8, 7)


def _least_squares_scale(blocks: Any, integers: Any) -> Any:
    import numpy as np

    numerator = (blocks * integers).sum(axis=-1, keepdims=True)
    denominator = (integers * integers).sum(axis=-1, keepdims=True)
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1e-30), 0.0)


def _squared_error(blocks: Any, scale: Any) -> Any:
    return ((blocks - scale * _round(blocks, scale)) ** 2).sum(axis=-1, keepdims=True)


def _as_fp16(values: Any) -> Any:
    import numpy as np

    return values.astype(np.float16).astype(np.float32)
