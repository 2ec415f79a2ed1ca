"""q4_0 scales: the searched blocks are llama.cpp's q4_0 layout (the ``gguf`` package reads them back as
scale x integer), never worse than the reference scale block by block, and ``max`` is the reference itself."""

import gguf
import numpy as np
import pytest
from supertiny.compress.gguf_config import GGUFConfig
from supertiny.compress.gguf_export import export_gguf
from supertiny.compress.q4_scales import quantize_q4_0, searched_scales
from supertiny.errors import InvalidInputError

Q4_0 = gguf.GGMLQuantizationType.Q4_0


def _weights(rows=64, width=256, seed=0):
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((rows, width)).astype(np.float32) * 0.02
    weights[:, 3] *= 15  # an outlier input channel, as trained matrices have
    return weights


def _block_errors(weights, packed):
    restored = gguf.quants.dequantize(packed, Q4_0).reshape(weights.shape)
    return ((weights - restored) ** 2).reshape(-1, 32).sum(axis=-1)


def test_max_scales_are_the_reference_quantizer():
    weights = _weights()
    assert np.array_equal(quantize_q4_0(weights, "max"), gguf.quants.quantize(weights, Q4_0))


def test_searched_blocks_read_back_as_their_scale_times_integers():
    weights = _weights(rows=8, width=64)
    packed = quantize_q4_0(weights)
    assert packed.shape == gguf.quants.quantize(weights, Q4_0).shape and packed.dtype == np.uint8
    blocks = weights.reshape(-1, 32)
    scales = searched_scales(blocks)
    integers = np.clip(np.round(blocks / scales), -8, 7)
    restored = gguf.quants.dequantize(packed, Q4_0).reshape(-1, 32)
    assert np.allclose(restored, scales * integers, rtol=0, atol=1e-7)


def test_searched_scales_never_lose_to_the_reference_and_win_overall():
    weights = _weights(rows=256, width=512, seed=1)
    searched = _block_errors(weights, quantize_q4_0(weights, "search"))
    reference = _block_errors(weights, quantize_q4_0(weights, "max"))
    assert np.all(searched <= reference * (1 + 1e-5) + 1e-12)
    assert searched.sum() < 0.95 * reference.sum()


def test_zero_blocks_stay_zero():
    weights = np.zeros((2, 64), dtype=np.float32)
    assert not gguf.quants.dequantize(quantize_q4_0(weights), Q4_0).any()


def test_unknown_scales_are_refused(tiny_model_dir, tmp_path):
    with pytest.raises(InvalidInputError, match="unknown q4_0 scales"):
        export_gguf(tiny_model_dir, tmp_path / "x.gguf", "q4_0", q4_scales="median")
    with pytest.raises(InvalidInputError, match="unknown q4_0 scales"):
        GGUFConfig(type="q4_0", q4_scales="median").validate()
    with pytest.raises(InvalidInputError, match="unknown q4_0 scales"):
        quantize_q4_0(np.zeros((1, 32), dtype=np.float32), "median")
    assert not (tmp_path / "x.gguf").exists()


def test_both_scales_export_files_of_the_same_size(tiny_model_dir, tmp_path):
    searched = export_gguf(tiny_model_dir, tmp_path / "s.gguf", "q4_0")
    reference = export_gguf(tiny_model_dir, tmp_path / "r.gguf", "q4_0", q4_scales="max")
    assert searched.size_bytes == reference.size_bytes
    assert searched.path.read_bytes() != reference.path.read_bytes()
