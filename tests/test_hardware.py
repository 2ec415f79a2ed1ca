"""What the CPU runs fast: bf16 only where the hardware runs it natively, int8 x int8 where it has VNNI or AMX."""

import pytest
from supertiny.artifacts import hardware


@pytest.mark.parametrize(("override", "declared", "device", "expected"), [
    ("1", "bfloat16", "cpu", "bfloat16"),
    ("0", "bfloat16", "cpu", "float32"),
    ("0", "bfloat16", "cuda", "bfloat16"),
    ("1", "float16", "cpu", "float32"),
    ("1", "float16", "cuda:1", "float16"),
    ("1", "float32", "cpu", "float32"),
])
def test_fast_dtype(monkeypatch, override, declared, device, expected):
    monkeypatch.setenv(hardware.BF16_ENV, override)
    assert hardware.fast_dtype(declared, device) == expected


def test_the_probe_reads_the_cpu_flags(monkeypatch):
    monkeypatch.delenv(hardware.BF16_ENV, raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not hardware.cpu_has_native_bf16()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert hardware.cpu_has_native_bf16()


def test_int8_dot_products_are_vnni_or_amx(monkeypatch):
    monkeypatch.delenv(hardware.INT8_DOT_ENV, raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))  # e.g. Zen 3
    assert not hardware.cpu_has_int8_dot_product()
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flag=flag: frozenset({"avx2", flag}))
        assert hardware.cpu_has_int8_dot_product()
    monkeypatch.setenv(hardware.INT8_DOT_ENV, "0")
    assert not hardware.cpu_has_int8_dot_product()
