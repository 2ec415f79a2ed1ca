"""The compute-dtype choice: bf16 only where the hardware runs it natively."""

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
