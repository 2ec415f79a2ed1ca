"""The dtype an engine computes a model in: what the CPU runs natively, and bfloat16 for a W8A8 model on AMX,
whose int8 kernels in vLLM's CPU build take no float32 activations."""

import json

import pytest
from supertiny.artifacts import hardware
from supertiny.engine.launch import quantizes_activations_to_int8, resolved_dtype
from supertiny.errors import InvalidInputError

W8A8 = {"quant_method": "compressed-tensors", "config_groups": {"group_0": {
    "weights": {"num_bits": 8, "type": "int"}, "input_activations": {"num_bits": 8, "type": "int"}}}}
WEIGHT_ONLY = {"quant_method": "compressed-tensors", "config_groups": {"group_0": {
    "weights": {"num_bits": 8, "type": "int"}, "input_activations": None}}}


def model_dir(path, quantization: dict | None):
    path.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["Qwen2ForCausalLM"]}
    if quantization is not None:
        config["quantization_config"] = quantization
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def cpu(monkeypatch):
    """Set this CPU's flags."""
    monkeypatch.delenv(hardware.BF16_ENV, raising=False)

    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))

    return set_flags


def test_only_int8_input_activations_make_a_w8a8_model(tmp_path):
    assert quantizes_activations_to_int8(model_dir(tmp_path / "w8a8", W8A8))
    assert not quantizes_activations_to_int8(model_dir(tmp_path / "weight-only", WEIGHT_ONLY))
    assert not quantizes_activations_to_int8(model_dir(tmp_path / "plain", None))
    broken = model_dir(tmp_path / "broken", None)
    (broken / "config.json").write_text("{not json")
    assert not quantizes_activations_to_int8(broken)
    assert not quantizes_activations_to_int8(tmp_path / "missing")


def test_auto_is_what_the_cpu_computes_natively(tmp_path, cpu):
    plain = model_dir(tmp_path, None)
    cpu("avx2", "fma")
    assert resolved_dtype("auto", "cpu", plain) == "float32"
    cpu("avx512f", "avx512_bf16")
    assert resolved_dtype("auto", "cpu", plain) == "bfloat16"
    assert resolved_dtype("auto", "cuda", plain) == "auto"
    assert resolved_dtype("float32", "cpu", plain) == "float32"


def test_a_w8a8_model_on_amx_computes_in_bfloat16_and_refuses_float32(tmp_path, monkeypatch, cpu):
    w8a8 = model_dir(tmp_path, W8A8)
    cpu("avx512f", "amx_bf16", "amx_int8")
    monkeypatch.setenv(hardware.BF16_ENV, "0")  # bf16 declined for plain models; W8A8 layers still need it
    assert resolved_dtype("auto", "cpu", w8a8) == "bfloat16"
    with pytest.raises(InvalidInputError, match=r"W8A8 model .* in float32 on this CPU") as info:
        resolved_dtype("float32", "cpu", w8a8)
    assert "--dtype bfloat16" in info.value.hint
    assert resolved_dtype("float32", "cuda", w8a8) == "float32"  # the CUDA build has its own kernels


def test_a_w8a8_model_without_amx_keeps_float32(tmp_path, cpu):
    w8a8 = model_dir(tmp_path, W8A8)
    cpu("avx2", "avx512_vnni")
    assert resolved_dtype("float32", "cpu", w8a8) == "float32"
    assert resolved_dtype("auto", "cpu", w8a8) == "float32"
